"""NorCal: post-hoc normalised calibration of softmax detectors (Pan et al., NeurIPS 2021).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1] (column C: background).

A softmax detector trained on long-tailed data scores frequent classes too high. NorCal divides the
exponentiated logit of every foreground class by its training count N_c to the power γ (the image count, as
the official tydpan/NorCal ``_get_frequencies(cfg, by="image")``; ``LTDET.TEST.NORCAL.COUNT instance`` is the
option), leaves the background untouched and renormalises (the official ``WITH: "exps"``, ``RENORM: True``):

    s_c  = exp(z_c) / N_c^γ / (sum_{c' < C} exp(z_c') / N_c'^γ + exp(z_bg))     (c < C)
    s_bg = exp(z_bg)        / (same denominator)

i.e. a softmax over z_c - γ log N_c (foreground) and z_bg. γ = 0 is the uncalibrated softmax. It is a
test-time change only: the model, its training and the box regression are untouched, so one trained
model can be evaluated for several γ (``LTDET.TEST.NORCAL.GAMMAS`` with ``--eval-only``). Classes with no
training sample count as one sample.
"""
from typing import Sequence

import torch
from torch import nn

__all__ = ["NorCal", "check_gamma"]


def check_gamma(value) -> float:
    """``float(value)`` if it is a valid γ (finite, >= 0), else ValueError."""
    gamma = float(value)
    if not 0.0 <= gamma < float("inf"):
        raise ValueError(f"NorCal gamma must be finite and >= 0, got {value!r}")
    return gamma


class NorCal(nn.Module):
    """Calibrated class probabilities of a (C+1)-way softmax classifier.

    Args:
        class_counts (Sequence[int] or Tensor[C]): N_c, training samples of each foreground class.
        gamma (float): γ >= 0, the calibration strength (0: plain softmax).
    """

    def __init__(self, class_counts: Sequence[int], gamma: float = 0.0):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
        if counts.numel() == 0 or (counts < 0).any() or not torch.isfinite(counts).all():
            raise ValueError("class_counts must be a non-empty sequence of finite counts >= 0")
        self.register_buffer("log_counts", counts.clamp(min=1.0).log().float(), persistent=False)
        self.gamma = gamma

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float):
        self._gamma = check_gamma(value)

    @property
    def num_classes(self) -> int:
        return self.log_counts.numel()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] logits -> Tensor[N, C+1] calibrated probabilities (rows sum to 1)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
            raise ValueError(f"expected logits [N, {self.num_classes + 1}], got {list(logits.shape)}")
        z = logits.float()
        if self._gamma > 0:
            shift = torch.cat([self._gamma * self.log_counts.to(z.device), z.new_zeros(1)])
            z = z - shift
        return torch.softmax(z, dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self._gamma}"
