"""Training: the trainer, checkpointing, the gradient-ratio hook and small helpers."""
from .checkpoint import CheckpointError, CheckpointMismatchError, LongTailCheckpointer, model_identity
from .defaults import build_config, insert_before, resolve_device
from .grad_ratio_hook import GradientRatioHook, build_grad_ratio_hook
from .grad_stats_file import GRAD_STATS_FILE, load_grad_stats, write_grad_stats
from .rng_state import RNGStateHook
from .trainer import LongTailTrainer

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "GRAD_STATS_FILE",
    "GradientRatioHook",
    "LongTailCheckpointer",
    "LongTailTrainer",
    "RNGStateHook",
    "build_config",
    "build_grad_ratio_hook",
    "insert_before",
    "load_grad_stats",
    "model_identity",
    "resolve_device",
    "write_grad_stats",
]
