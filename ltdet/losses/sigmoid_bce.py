"""Sigmoid binary cross-entropy: one binary task per class (EQL eqs. 3-5).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].
"""
import torch

from .base import ClassificationLoss
from .common import check_labels, empty_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import column_weighted_bce, sigmoid_probs

__all__ = ["SigmoidBCELoss"]


@LOSS_REGISTRY.register("sigmoid")
class SigmoidBCELoss(ClassificationLoss):
    """Sigmoid BCE over the C foreground columns, plus the optional objectness task.

    l_i = sum_j BCE(z_ij, y_ij), with y_ij = 1[j == label_i]; background rows
    are negative for every foreground class. Gradient p_ij - y_ij (EQL eq. 5).
    Column C: plain BCE with target 1 for background rows when ``objectness``
    is on, no loss otherwise.

    Args:
        num_classes (int): C.
        objectness (bool): train column C as the category-agnostic task.
        collect_stats (bool): accumulate per-class |dl/dz| in ``grad_stats``.
    """

    objectness_choices = (False, True)

    def __init__(self, num_classes: int, objectness: bool = False, collect_stats: bool = True):
        super().__init__(num_classes, objectness)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None
        obj = 1.0 if self.objectness else 0.0
        weights = torch.cat([torch.ones(self.num_classes), torch.tensor([obj])])
        self.register_buffer("_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        if logits.shape[0] == 0:
            return empty_loss(logits)
        return column_weighted_bce(logits, labels, self._weights, self._weights, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: sigmoid scores (x (1 - p_bg) with objectness)."""
        return sigmoid_probs(logits, self.objectness)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, objectness={self.objectness}"
