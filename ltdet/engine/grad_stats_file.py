"""The ``grad_stats.json`` file: per-class gradient statistics of a run, written and read here.

Written by the trainer right after every checkpoint (so it never describes a
later state than the last checkpoint on disk) from
``GradientRatioHook.to_dict``; read by ``tools/plot_grad_ratio.py``.
Format ``ltdet.grad_stats/1``: run info (``iteration``, ``dataset``,
``cls_loss``), class metadata (``class_names``, ``image_count``,
``instance_count``, ``groups``, ``num_images``, ``group_names``) and
``stats[module name] = {loss, num_classes, pos, neg, ratio}``.
"""
import json
import os
from typing import Any, Dict

from .atomic_io import atomic_open

__all__ = ["GRAD_STATS_FILE", "GRAD_STATS_FORMAT", "load_grad_stats", "write_grad_stats"]

GRAD_STATS_FILE = "grad_stats.json"
GRAD_STATS_FORMAT = "ltdet.grad_stats/1"


def _file(path: str) -> str:
    return os.path.join(path, GRAD_STATS_FILE) if os.path.isdir(path) else path


def write_grad_stats(path: str, data: Dict[str, Any]) -> str:
    """Atomically write ``data`` (a ``GradientRatioHook.to_dict`` payload).

    Args:
        path: the JSON file, or a run directory (``grad_stats.json`` in it).
    Returns:
        the file written.
    """
    path = _file(path)
    with atomic_open(path, "w") as f:
        json.dump(dict(data, format=GRAD_STATS_FORMAT), f)
    return path


def load_grad_stats(path: str) -> Dict[str, Any]:
    """Read a ``grad_stats.json``.

    Args:
        path: the JSON file, or a run directory containing ``grad_stats.json``.
    Returns:
        the payload, plus ``path``.
    """
    path = _file(path)
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != GRAD_STATS_FORMAT or not data.get("stats"):
        raise ValueError(f"{path} is not a {GRAD_STATS_FORMAT} file with statistics")
    data["path"] = path
    return data
