"""Files: run directories and their lock, atomic writes, safetensors with module versions, saving and loading
pruned models, export (TorchScript / ONNX), YAML reading.
"""
