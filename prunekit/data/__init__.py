"""Datasets by name (offline bundled sets, torchvision, image folders) and the derived views the offline
benchmarks use (class splits, input shifts, seeded subsets).
"""
