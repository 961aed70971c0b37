"""Training helpers: the gradient-ratio hook and small trainer utilities."""
from .defaults import build_config, insert_before, resolve_device
from .grad_ratio_hook import GradientRatioHook, build_grad_ratio_hook

__all__ = ["GradientRatioHook", "build_config", "build_grad_ratio_hook", "resolve_device", "insert_before"]
