"""Backbones: timm models or registered builders, checkpoint weights, parameter accounting and what trains.
"""
