"""Which units go: scorers (one score per unit of a group, registered by name), their normalisers and
calibration passes, and scopes (local or global selection of what a prune removes).
"""
