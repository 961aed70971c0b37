"""Decoupled training: train only some parameters of a trained model (ACSL's fine-tune, cRT).

``LTDET.TRAIN_ONLY`` is a tuple of regular expressions over
``model.named_parameters()`` names (``re.search``). When it is non-empty,
every other parameter is frozen (``requires_grad = False``, so detectron2's
optimizer leaves it out), and the frozen leaf modules (BatchNorm, Dropout,
...: leaves whose parameters are all frozen, and parameter-free leaves of a
fully frozen module) run in eval mode at every forward, so their statistics
do not move and the frozen part computes exactly what the trained model
computed. detectron2's heads themselves keep their training behaviour
(RPN proposals with the training top-k, proposal sampling, ground truth added
to the proposals), as in the official ACSL / EQLv2 code, which fine-tune with
every parameter but ``fc_cls`` frozen and the model in training mode.

``LTDET.REINIT`` (regular expressions too) lists parameters that a new run
from ``MODEL.WEIGHTS`` keeps at their fresh initialisation instead of the
loaded values: cRT re-trains a re-initialised classifier (the official
EQLv2 repository removes ``fc_cls`` from the baseline checkpoint,
``tools/ckpt_surgery.py --method remove``).
"""
import logging
import re
from typing import Dict, List, Sequence

import torch
from torch import nn

__all__ = ["matching_parameters", "restore_parameters", "snapshot_parameters", "train_only"]

logger = logging.getLogger(__name__)


def matching_parameters(model: nn.Module, patterns: Sequence[str], key: str) -> List[str]:
    """Names of the parameters matching any of ``patterns``; ValueError (naming ``key``) if a pattern matches none."""
    names = [n for n, _ in model.named_parameters()]
    compiled = [(p, re.compile(p)) for p in patterns]
    for pattern, regex in compiled:
        if not any(regex.search(n) for n in names):
            raise ValueError(f"{key} pattern {pattern!r} matches no parameter of the model (e.g. {names[:3]})")
    return [n for n in names if any(regex.search(n) for _, regex in compiled)]


def _eval_forward_pre_hook(module: nn.Module, inputs):
    module.train(False)


def train_only(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Freeze every parameter whose name matches none of ``patterns`` (see the module docstring).

    Returns:
        the names of the parameters that still train (logged).
    """
    if not patterns:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    trained = set(matching_parameters(model, patterns, "LTDET.TRAIN_ONLY"))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)
    frozen_leaves = []
    for parent_name, parent in model.named_modules():
        parent_frozen = not any(p.requires_grad for p in parent.parameters())
        for child_name, child in parent.named_children():
            if list(child.children()) or getattr(child, "_ltdet_frozen_eval", False):
                continue
            own = list(child.parameters())
            if (own and not any(p.requires_grad for p in own)) or (not own and parent_frozen):
                child.register_forward_pre_hook(_eval_forward_pre_hook)
                child._ltdet_frozen_eval = True
                frozen_leaves.append(f"{parent_name}.{child_name}".lstrip("."))
    count = sum(p.numel() for n, p in model.named_parameters() if n in trained)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        f"LTDET.TRAIN_ONLY {tuple(patterns)}: training {len(trained)} parameter tensors ({count:,} of {total:,} "
        f"values): {sorted(trained)}; {len(frozen_leaves)} frozen leaf modules run in eval mode"
    )
    return sorted(trained)


def snapshot_parameters(model: nn.Module, patterns: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Copies of the parameters matching ``patterns`` (``LTDET.REINIT``), taken before loading weights."""
    names = set(matching_parameters(model, patterns, "LTDET.REINIT")) if patterns else set()
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


@torch.no_grad()
def restore_parameters(model: nn.Module, snapshot: Dict[str, torch.Tensor]) -> None:
    """Put the ``snapshot`` values back (the loaded weights of those parameters are discarded)."""
    params = dict(model.named_parameters())
    for name, value in snapshot.items():
        params[name].copy_(value)
    if snapshot:
        logger.info(f"LTDET.REINIT: kept the fresh initialisation of {sorted(snapshot)}")
