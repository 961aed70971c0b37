"""Equalization Loss v2: gradient-guided re-weighting (Tan et al., CVPR 2021).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].

For every foreground class j, from the accumulated re-weighted gradients
(eq. 9) g_j = sum |grad_pos'_j| / sum |grad_neg'_j|:

    f(x) = 1 / (1 + exp(-gamma (x - mu)))          (eq. 6)
    q_j  = 1 + alpha (1 - f(g_j)),  r_j = f(g_j)   (eq. 5)

and the BCE gradient of positives is multiplied by q_j, of negatives by r_j
(eqs. 7-8), i.e. l_i = sum_j [q_j y_ij + r_j (1 - y_ij)] BCE(z_ij, y_ij).
As in the official code, g starts at 100 (all weights 1) until statistics
exist. Column C is the category-agnostic task (Sec. 3.3): plain BCE, target 1
for background rows, never re-weighted, no statistics.
"""
from typing import Tuple

import torch

from .base import ClassificationLoss, check_range
from .common import check_labels, empty_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import column_weighted_bce, sigmoid_probs

__all__ = ["EQLv2Loss", "EQLV2_CONFIG_KEYS", "EQLv2Weights"]

INITIAL_RATIO = 100.0

#: Constructor argument -> config key of EQLv2's hyper-parameters (EQLv2 and EQLv2-focal).
EQLV2_CONFIG_KEYS = {
    "alpha": "LTDET.EQLV2.ALPHA",
    "gamma": "LTDET.EQLV2.GAMMA",
    "mu": "LTDET.EQLV2.MU",
    "pos_reweight": "LTDET.EQLV2.POS_REWEIGHT",
    "neg_reweight": "LTDET.EQLV2.NEG_REWEIGHT",
}


class EQLv2Weights:
    """EQLv2's mapping from accumulated ratios to (q_j, r_j) (eqs. 5-6, Table 2 switches).

    Args:
        alpha (float): α >= 0, positive up-weighting strength (eq. 5).
        gamma (float): γ > 0, steepness of f (eq. 6).
        mu (float): μ >= 0, centre of f (eq. 6).
        pos_reweight (bool): apply q_j to positives (Table 2 "pos"), else q_j = 1.
        neg_reweight (bool): apply r_j to negatives (Table 2 "neg"), else r_j = 1.
    """

    def __init__(self, alpha=4.0, gamma=12.0, mu=0.8, pos_reweight=True, neg_reweight=True):
        self.alpha = check_range("alpha", alpha, low=0.0)
        self.gamma = check_range("gamma", gamma, low=0.0, low_open=True)
        self.mu = check_range("mu", mu, low=0.0)
        self.pos_reweight = bool(pos_reweight)
        self.neg_reweight = bool(neg_reweight)

    def __call__(self, grad_stats: GradientStatistics) -> Tuple[torch.Tensor, torch.Tensor]:
        """(q[C], r[C]) in float64 from the accumulated statistics (g = 100 where none)."""
        f = torch.sigmoid(self.gamma * (grad_stats.ratio(initial=INITIAL_RATIO) - self.mu))
        q = 1.0 + self.alpha * (1.0 - f) if self.pos_reweight else torch.ones_like(f)
        r = f if self.neg_reweight else torch.ones_like(f)
        return q, r

    def __repr__(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, mu={self.mu}, "
            f"pos_reweight={self.pos_reweight}, neg_reweight={self.neg_reweight}"
        )


@LOSS_REGISTRY.register("eqlv2")
class EQLv2Loss(ClassificationLoss):
    """EQLv2 (eqs. 3-9) with the fused column-weighted BCE.

    Args:
        num_classes (int): C.
        alpha (float): α, positive up-weighting strength (eq. 5).
        gamma (float): γ, steepness of f (eq. 6).
        mu (float): μ, centre of f (eq. 6).
        objectness (bool): train column C as the objectness task (Sec. 3.3).
        pos_reweight (bool): apply q_j to positives (Table 2 "pos").
        neg_reweight (bool): apply r_j to negatives (Table 2 "neg").

    ``grad_stats`` (always present) holds the accumulated re-weighted
    gradients; ``synchronize()`` runs at the start of every forward (a
    collective: every rank calls forward in the same order).
    """

    objectness_choices = (True, False)
    requires_grad_stats = True
    config_keys = EQLV2_CONFIG_KEYS

    def __init__(
        self,
        num_classes: int,
        alpha: float = 4.0,
        gamma: float = 12.0,
        mu: float = 0.8,
        objectness: bool = True,
        pos_reweight: bool = True,
        neg_reweight: bool = True,
    ):
        super().__init__(num_classes, objectness)
        self.weights = EQLv2Weights(alpha, gamma, mu, pos_reweight, neg_reweight)
        self.grad_stats = GradientStatistics(self.num_classes)

    def class_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Current (q[C], r[C]) in float32 from the accumulated statistics (eqs. 5-6)."""
        q, r = self.weights(self.grad_stats)
        return q.float(), r.float()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        self.grad_stats.synchronize()
        if logits.shape[0] == 0:
            return empty_loss(logits)
        q, r = self.class_weights()
        obj = q.new_full((1,), 1.0 if self.objectness else 0.0)
        pos_w = torch.cat([q, obj]).to(logits.device)
        neg_w = torch.cat([r, obj]).to(logits.device)
        return column_weighted_bce(logits, labels, pos_w, neg_w, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: p_j (1 - p_bg) with objectness (eq. 10), else p_j."""
        return sigmoid_probs(logits, self.objectness)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self.weights!r}, objectness={self.objectness}"
