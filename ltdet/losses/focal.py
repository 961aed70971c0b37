"""Sigmoid focal loss for dense detectors (Lin et al., ICCV 2017, eq. 5).

Shape shorthand: M dense samples, C foreground classes, logits [M, C];
labels 0..C-1 foreground, C background (all-zero target).

    FL(p_t) = -α_t (1 - p_t)^γ log(p_t)        (EFL eq. 1)

summed over all M x C binary tasks (the head divides by its normaliser). The
gradient is EFL appendix eq. 6 with γ^j = γ and no weighting factor:
α_t (2y - 1) (1 - p_t)^γ (γ p_t log p_t + p_t - 1).
"""
import torch

from .base import ClassificationLoss, check_range
from .focal_family import alpha_weights, check_alpha, check_logits, focal_family_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY

__all__ = ["FocalLoss", "DenseSigmoidLoss"]


class DenseSigmoidLoss(ClassificationLoss):
    """Base of the dense losses: logits [M, C], sum-reduced, per-class sigmoid scores."""

    family = "dense"

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[M, C] -> Tensor[M, C]: per-class sigmoid scores."""
        return torch.sigmoid(logits.float())


@LOSS_REGISTRY.register("focal")
class FocalLoss(DenseSigmoidLoss):
    """Sum-reduced sigmoid focal loss with optional gradient statistics.

    Args:
        num_classes (int): C.
        alpha (float): α, weight of positives (1 - α for negatives); α < 0
            disables the balance (α_t = 1), as torchvision's convention.
        gamma (float): γ >= 0, focusing parameter.
        collect_stats (bool): accumulate per-sample |∂l/∂z| per class in
            ``grad_stats`` (for the gradient-ratio plots); the loss itself
            never reads them, so it leaves ``synchronize()`` to the hook.
    """

    config_keys = {"alpha": "LTDET.FOCAL.ALPHA", "gamma": "LTDET.FOCAL.GAMMA"}

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, collect_stats: bool = True):
        super().__init__(num_classes)
        self.alpha = check_alpha("alpha", alpha)
        self.gamma = check_range("gamma", gamma, low=0.0)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[M, C]; labels LongTensor[M] in 0..C. Returns: scalar sum."""
        check_logits(logits, self.num_classes)
        pos_w, neg_w = alpha_weights(self.alpha)
        return focal_family_loss(
            logits, labels, self.gamma, neg_weight=neg_w, pos_weight=pos_w, stats=self.grad_stats
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, gamma={self.gamma}"
