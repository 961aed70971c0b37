"""Effective Class-Margin loss (Hyun Cho & Krähenbühl, "Long-tail Detection with Effective Class-Margins",
ECCV 2022; official code janghyuncho/ECM-Loss, ``mmdet/models/losses/effective_class_margin_loss.py``
and ``ecm_utils.py``).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1]; column C is the background, trained
as a (C+1)-th binary class with its own margin and weight (not the plain objectness task of ``base.py``).

Every column j in 0..C is a binary classifier with a positive margin m+_j and a negative margin m-_j
derived from the training counts: n_j the image count of class j, the background count
n_C = fg_bg_ratio * sum_{j<C} n_j (6.3313, "empirical fg-bg ratio from Mask-RCNN"), and
n-_j = sum_k n_k - n_j:

    m+_j = -log( n-_j^{1/4} / (n_j^{1/4} + n-_j^{1/4}) )
    m-_j = -log( n_j^{1/4}  / (n_j^{1/4} + n-_j^{1/4}) )
    p_ij = e^{z_ij + m+_j} / (e^{z_ij + m+_j} + e^{-z_ij + m-_j}) = sigmoid(2 z_ij + b_j),
    b_j  = m+_j - m-_j = 1/4 log(n_j / n-_j)

and each column is weighted by w_j = a_j log((1 + a_j) / a_j), a_j = n-_j / n_j (the paper's Theorem 2):

    L = 1/N sum_i sum_{j=0..C} w_j BCE(2 z_ij + b_j, 1[j == y_i])
    dL/dz_ij = 2 w_j (p_ij - 1[j == y_i]) / N.

Margins and weights depend only on count ratios, so image_count / num_images gives the same values as
the image counts. Inference (the official ``get_activation``): sigmoid of the raw logits, foreground
scores times 1 - sigmoid(z_iC); no margin at test time. The official config pairs it with a cosine
classifier of temperature 20 (``LTDET.CLASSIFIER.NAME cosine``).
"""
import torch
import torch.nn.functional as F

from .base import ClassificationLoss, check_range
from .common import check_labels, class_vector, tapped_mean_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import one_hot_like, sigmoid_probs

__all__ = ["EffectiveClassMarginLoss", "ECM_CONFIG_KEYS", "effective_class_margins"]

#: Constructor argument -> config key of the ECM loss's hyper-parameters.
ECM_CONFIG_KEYS = {"fg_bg_ratio": "LTDET.ECM.FG_BG_RATIO"}


def effective_class_margins(counts: torch.Tensor, fg_bg_ratio: float = 6.3313):
    """ECM's per-column logit offsets and weights from the foreground counts.

    Args:
        counts: Tensor[C] > 0, per-class training counts (image counts, or any multiple of them).
        fg_bg_ratio: background count / sum of the foreground counts.
    Returns:
        (offset, weight), float64 Tensor[C + 1] each: b_j = m+_j - m-_j and w_j (module docstring),
        the last entry the background's.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    n = torch.cat([n, n.sum().reshape(1) * fg_bg_ratio])
    n_neg = n.sum() - n
    root_pos, root_neg = n.pow(0.25), n_neg.pow(0.25)
    margin_pos = -torch.log(root_neg / (root_pos + root_neg))
    margin_neg = -torch.log(root_pos / (root_pos + root_neg))
    a = n_neg / n
    weight = a * torch.log((1.0 + a) / a)
    return margin_pos - margin_neg, weight


@LOSS_REGISTRY.register("ecm")
class EffectiveClassMarginLoss(ClassificationLoss):
    """C + 1 margin-adjusted, re-weighted sigmoid classifiers (module docstring).

    Args:
        num_classes (int): C.
        image_freq (Tensor[C]): image_count / num_images of the training set; every class must occur
            (a class without training images has no finite margin).
        objectness (bool): always True: column C is ECM's background class and scores are
            p_j (1 - p_bg).
        fg_bg_ratio (float): background count / foreground count (6.3313).
        collect_stats (bool): accumulate per-class |dl/dz| of the foreground columns in ``grad_stats``.
    """

    objectness_choices = (True,)
    priors = ("image_freq",)
    config_keys = ECM_CONFIG_KEYS

    def __init__(self, num_classes, image_freq, objectness=True, fg_bg_ratio=6.3313, collect_stats=True):
        super().__init__(num_classes, objectness)
        self.fg_bg_ratio = check_range("fg_bg_ratio", fg_bg_ratio, low=0.0, low_open=True)
        image_freq = class_vector(image_freq, self.num_classes)
        if not torch.isfinite(image_freq).all() or (image_freq <= 0).any():
            missing = torch.nonzero(~(image_freq > 0)).flatten()[:10].tolist()
            raise ValueError(
                f"the ECM loss needs every class in the training set (its margin is -log of the count); "
                f"classes {missing} have no training image"
            )
        offset, weight = effective_class_margins(image_freq, self.fg_bg_ratio)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("column_weight", weight.float(), persistent=False)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        offset = self.offset.to(logits.device)
        weight = self.column_weight.to(logits.device)

        def summed_loss(z):
            bce = F.binary_cross_entropy_with_logits(2.0 * z + offset, one_hot_like(z, labels), reduction="none")
            return (bce * weight).sum()

        return tapped_mean_loss(logits, labels, summed_loss, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: sigmoid(z_j) (1 - sigmoid(z_C)), background column last."""
        return sigmoid_probs(logits, objectness=True)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, fg_bg_ratio={self.fg_bg_ratio}"
