"""TINA's adapters: bottleneck layers injected after a frozen model's sub-layers, their groups (an emptied
adapter is removed) and the adapter policy.
"""
