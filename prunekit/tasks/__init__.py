"""Many tasks, one backbone: trained runs attached to one frozen backbone, mixed-task batches, multi-task predict.

``source`` reads a run as a task (its adapters and head, no model built), ``layers`` computes every task's adapters
for a mixed batch in one pass, ``model`` holds the backbone and the tasks (``prunekit.load_tasks``), ``predict``
classifies folders of images under several tasks.
"""
