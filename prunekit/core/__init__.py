"""The pruning core: the group protocol and tracing on torch-pruning's dependency graph, what a kind of group may
lose (policy), plans (selection as data, applied all or nothing), undo of structural changes, the sub-layer wrapper
and process-group helpers. It knows no adapters, recipes, command line or run directories.
"""
