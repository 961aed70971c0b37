"""Small helpers shared by the classification losses (pure torch)."""
from typing import Callable, Optional

import torch

__all__ = ["check_labels", "class_vector", "empty_loss", "tapped_mean_loss"]


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless every label is in 0..C (C = background).

    The official EQL/EQLv2/EFL losses silently read -1 as background or as the
    last class; ltdet refuses such input.
    """
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > num_classes:
        raise ValueError(
            f"labels must be in 0..{num_classes} (0..{num_classes - 1} foreground, "
            f"{num_classes} background); got values in [{low}, {high}]"
        )


def class_vector(values, num_classes: int, name: str = "image_freq") -> torch.Tensor:
    """``values`` (a per-class prior such as image_freq) as a float64 Tensor[C]; ValueError unless it
    has exactly C entries."""
    vector = torch.as_tensor(values, dtype=torch.float64).flatten()
    if vector.numel() != num_classes:
        raise ValueError(f"{name} has {vector.numel()} entries, expected {num_classes}")
    return vector


def empty_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero scalar connected to ``logits`` (for N = 0), so backward works."""
    return logits.float().sum() * 0.0


def tapped_mean_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    summed_loss: Callable[[torch.Tensor], torch.Tensor],
    grad_stats: Optional["GradientStatistics"] = None,  # noqa: F821
) -> torch.Tensor:
    """``summed_loss(z) / N`` in float32 with autocast off, through the gradient tap.

    The common frame of the autograd-built losses: ``z`` is ``logits`` in
    float32 routed through ``grad_stats.track`` (per-sample normalizer N), the
    result through ``grad_stats.watch``; N = 0 gives a connected zero.

    Args:
        logits: Tensor[N, C+1].
        labels: LongTensor[N] in 0..C.
        summed_loss: float32 Tensor[N, C+1] -> scalar, the loss summed over N.
        grad_stats: a ``GradientStatistics`` to feed, or None.
    """
    n = logits.shape[0]
    if n == 0:
        return empty_loss(logits)
    z = logits.float()
    if grad_stats is not None:
        z = grad_stats.track(z, labels, normalizer=n)
    with torch.autocast(z.device.type, enabled=False):
        loss = summed_loss(z) / n
    if grad_stats is not None:
        loss = grad_stats.watch(loss)
    return loss
