"""What is trained: one small module per method, registered by name (``method.name`` in a recipe).

A method takes a freshly built backbone (head sized for the task) and changes it in place: it may inject modules
(adapters, LoRA, prompts ...) and it decides which parameters train. Each method has its own config dataclass, so a
recipe's ``method`` section is validated strictly against the chosen method.
"""
from .base import METHODS, Method, build_method, get_method, register_method  # noqa: F401
from . import adaptformer, adapters, bitfit, blocks, full, linear, lora, phm, vpt  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "build_method", "get_method", "register_method"]
