"""The model zoo (PyTorch). Importing this package imports torch and timm."""

from mlic_edge.models.registry import ModelEntry, create_model, get_model_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
