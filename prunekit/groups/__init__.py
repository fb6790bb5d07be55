"""Kinds of group in any model: channel and neuron groups found by tracing (channels), whole attention heads and
head dimensions (heads).
"""
