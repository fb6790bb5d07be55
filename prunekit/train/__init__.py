"""The training loop (one cycle of epochs), its resume state (RNG and model state) and its checkpointing.
"""
