"""Cosine (normalised linear) classifier for the box predictor.

logits_j = τ · <x / ‖x‖, w_j / ‖w_j‖> + b_j, with τ the temperature (scale):
mmdetection's ``NormedLinear`` (``tempearture=20``), which the official Seesaw
LVIS configs use (Seesaw Sec. 3.3 "normalized linear activation") and ECM's
official config too. Usable by every classification loss: the head swaps
``cls_score`` for it; parameter names stay ``cls_score.weight`` / ``.bias``.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormalizedLinear"]


class NormalizedLinear(nn.Linear):
    """``nn.Linear`` on L2-normalised inputs and weight rows, times ``scale``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        scale (float): τ > 0, the temperature (20 in Seesaw's configs).
        eps (float): added to the norms (mmdetection: 1e-6).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 20.0, eps: float = 1e-6):
        super().__init__(in_features, out_features, bias=True)
        if not scale > 0:
            raise ValueError(f"the cosine classifier's scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.eps = float(eps)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        return F.linear(x * self.scale, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"
