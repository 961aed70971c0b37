"""Softmax cross-entropy over C + 1 classes (detectron2's baseline, EQL eqs. 1-2).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1] with
column C the background class.
"""
import torch
import torch.nn.functional as F

from .base import ClassificationLoss
from .common import check_labels, tapped_mean_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY

__all__ = ["SoftmaxCELoss"]


@LOSS_REGISTRY.register("softmax")
class SoftmaxCELoss(ClassificationLoss):
    """Softmax cross-entropy, mean over N; gradient p_j - y_j (EQL eq. 5).

    Statistics: the ground-truth column is positive, the other foreground
    columns negative; the background column is never collected.

    Args:
        num_classes (int): C.
        collect_stats (bool): accumulate per-class |dl/dz| in ``grad_stats``.
    """

    activation = "softmax"

    def __init__(self, num_classes: int, collect_stats: bool = True):
        super().__init__(num_classes)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        return tapped_mean_loss(
            logits, labels, lambda z: F.cross_entropy(z, labels, reduction="sum"), self.grad_stats
        )

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: softmax over all C + 1 classes."""
        return F.softmax(logits.float(), dim=-1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
