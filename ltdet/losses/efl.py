"""Equalized Focal Loss and its variants (Li et al., CVPR 2022, arXiv 2201.02593).

Shape shorthand: M dense samples, C foreground classes, logits [M, C];
labels 0..C-1 foreground, C background (all-zero target); P foreground samples.

From the accumulated per-sample gradients of the loss itself
(``GradientStatistics``), g^j = clamp(sum |grad_pos_j| / sum |grad_neg_j|, 0, 1)
(EFL Sec. 3.2, initial g^j = 1, i.e. focal loss before any statistics), and

    γ^j = γ_b + γ_v^j = γ_b + s (1 - g^j)                          (eq. 3)
    EFL = -sum_j α_t (γ^j / γ_b) (1 - p_t)^γ^j log(p_t)              (eq. 4)
    EQFL = -w^j |y' - p|^γ^j (y' log p + (1 - y') log(1 - p))        (eq. 5)

with the focusing factor γ^j and the weighting factor w^j = γ^j / γ_b treated
as constants in backward (as the official code), so ∂EFL/∂z is appendix eq. 6
times α_t. ``EQLv2FocalLoss`` puts EQLv2's gradient-guided weights on focal
loss (EFL Sec. 1 / Table 1, derivative appendix eq. 7), with EQLv2's Table 2
switches (``pos_reweight`` / ``neg_reweight``).
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from .base import check_range
from .eqlv2 import EQLV2_CONFIG_KEYS, EQLv2Weights
from .focal import DenseSigmoidLoss
from .focal_family import alpha_weights, check_alpha, check_logits, focal_family_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY

__all__ = ["EFLLoss", "EQFLLoss", "EQLv2FocalLoss", "EqualizedFocalFactors"]

#: Constructor argument -> config key of EFL's factors (EFL and EQFL).
EFL_FACTOR_KEYS = {
    "gamma_b": "LTDET.FOCAL.GAMMA",
    "scale": "LTDET.EFL.SCALE",
    "focusing_factor": "LTDET.EFL.FOCUSING_FACTOR",
    "weighting_factor": "LTDET.EFL.WEIGHTING_FACTOR",
}


class EqualizedFocalFactors(DenseSigmoidLoss):
    """EFL's per-class focusing and weighting factors (eqs. 3-4), shared by EFL and EQFL.

    Args:
        num_classes (int): C.
        gamma_b (float): γ_b > 0, the class-agnostic focusing factor.
        scale (float): s >= 0, upper limit of γ_v^j (8; 4 for YOLOX-like heads).
        focusing_factor (bool): use γ^j (else γ_b for every class; Table 3 "FF").
        weighting_factor (bool): multiply by (γ_b + γ_v^j) / γ_b (Table 3 "WF").

    ``grad_stats`` holds the accumulated |∂l/∂z| of the loss (including its
    factors); ``synchronize()`` runs at the start of every forward (a
    collective: every rank calls forward in the same order).
    """

    requires_grad_stats = True

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        focusing_factor: bool = True,
        weighting_factor: bool = True,
    ):
        super().__init__(num_classes)
        # the weighting factor divides by γ_b
        self.gamma_b = check_range("gamma_b", gamma_b, low=0.0, low_open=True)
        self.scale = check_range("scale", scale, low=0.0)
        self.focusing_factor = bool(focusing_factor)
        self.weighting_factor = bool(weighting_factor)
        self.grad_stats = GradientStatistics(self.num_classes)

    def class_factors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Current focusing factors γ^j and weighting factors w^j (eqs. 3-4).

        Returns:
            (gamma[C], weight[C]), float64, on the statistics' device.
        """
        g = self.grad_stats.ratio(initial=1.0).clamp(0.0, 1.0)
        gamma = self.gamma_b + self.scale * (1.0 - g)
        weight = gamma / self.gamma_b if self.weighting_factor else torch.ones_like(gamma)
        if not self.focusing_factor:
            gamma = torch.full_like(gamma, self.gamma_b)
        return gamma, weight

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, scale={self.scale}, "
            f"focusing_factor={self.focusing_factor}, weighting_factor={self.weighting_factor}"
        )


@LOSS_REGISTRY.register("efl")
class EFLLoss(EqualizedFocalFactors):
    """Sum-reduced Equalized Focal Loss (eq. 4).

    Args:
        num_classes (int): C.
        alpha (float): α of α_t (α for positives, 1 - α for negatives); α < 0
            disables it.
        gamma_b, scale, focusing_factor, weighting_factor: see
            :class:`EqualizedFocalFactors`.
    """

    config_keys = {"alpha": "LTDET.FOCAL.ALPHA", **EFL_FACTOR_KEYS}

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.25,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        focusing_factor: bool = True,
        weighting_factor: bool = True,
    ):
        super().__init__(num_classes, gamma_b, scale, focusing_factor, weighting_factor)
        self.alpha = check_alpha("alpha", alpha)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[M, C]; labels LongTensor[M] in 0..C. Returns: scalar sum."""
        self.grad_stats.synchronize()
        check_logits(logits, self.num_classes)
        gamma, weight = self.class_factors()
        alpha_pos, alpha_neg = alpha_weights(self.alpha)
        return focal_family_loss(
            logits,
            labels,
            gamma,
            neg_weight=alpha_neg * weight,
            pos_weight=alpha_pos * weight,
            stats=self.grad_stats,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


@LOSS_REGISTRY.register("eqfl")
class EQFLLoss(EqualizedFocalFactors):
    """Sum-reduced Equalized Quality Focal Loss (eq. 5): EFL's factors on QFL.

    Negatives: w^j σ(z)^γ^j softplus(z); the gt entry of a foreground sample
    has the soft target y' = IoU score: w^j |y' - p|^γ^j BCE(z, y'). The
    quality factor |y' - p| is differentiated, γ^j and w^j are constants.
    QFL and EQFL (eq. 5, official code) have no α_t, so there is no ``alpha``.
    The head passes the IoU targets as ``scores`` (``extra_inputs``).
    """

    config_keys = dict(EFL_FACTOR_KEYS)

    @property
    def extra_inputs(self):
        return ("scores",)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Sum of EQFL over all M x C entries.

        Args:
            logits: Tensor[M, C].
            labels: LongTensor[M] in 0..C.
            scores: Tensor[M], IoU target y' in [0, 1] of each foreground
                sample (values of background rows are not used).
        Returns:
            Scalar sum.
        """
        self.grad_stats.synchronize()
        check_logits(logits, self.num_classes)
        if scores.shape != labels.shape:
            raise ValueError(
                f"scores must have the shape of labels {tuple(labels.shape)}, got {tuple(scores.shape)}"
            )
        gamma, weight = self.class_factors()
        scores = scores.detach()

        def quality_terms(z, rows, cols):
            target = scores[rows].to(z.dtype)
            if target.numel() and not bool(((target >= 0) & (target <= 1)).all()):
                raise ValueError("EQFL scores of foreground samples must lie in [0, 1]")
            return quality_focal_terms(z, target, gamma.to(z)[cols], weight.to(z)[cols])

        return focal_family_loss(
            logits, labels, gamma, neg_weight=weight, pos_terms=quality_terms, stats=self.grad_stats
        )


def quality_focal_terms(z, target, gamma, weight) -> Tuple[torch.Tensor, torch.Tensor]:
    """EQFL term of gt entries (eq. 5) and its derivative, elementwise.

    l = w |y' - p|^γ BCE(z, y'),
    ∂l/∂z = w (γ |p - y'|^(γ-1) sign(p - y') p (1 - p) BCE(z, y') + |p - y'|^γ (p - y')),
    with p = σ(z) and BCE(z, y') = softplus(z) - y' z (stable).

    Args:
        z, target, gamma, weight: Tensor[P] (logit, y', γ^j, w^j).
    Returns:
        (loss[P], grad[P]).
    """
    p, q = torch.sigmoid(z), torch.sigmoid(-z)
    bce = F.softplus(z) - target * z
    diff = p - target
    mod = diff.abs().pow(gamma)
    grad = gamma * diff.abs().pow(gamma - 1.0) * diff.sign() * p * q * bce + mod * diff
    return weight * mod * bce, weight * grad


@LOSS_REGISTRY.register("eqlv2_focal")
class EQLv2FocalLoss(DenseSigmoidLoss):
    """Sum-reduced focal loss with EQLv2's gradient-guided weights (EFL eq. 7).

    From the accumulated re-weighted |∂l/∂z| (EQLv2 eq. 9) g_j,
    f(x) = 1 / (1 + exp(-γ (x - μ))) (EQLv2 eq. 6), q_j = 1 + α (1 - f(g_j)),
    r_j = f(g_j) (eq. 5); the focal term of gt entries is multiplied by q_j,
    of negatives by r_j, so ∂l/∂z = w_t α_t (2y - 1) (1 - p_t)^γ (γ p_t log p_t
    + p_t - 1) (EFL appendix eq. 7). g starts at 100 (weights 1) until
    statistics exist, as the official EQLv2.

    Args:
        num_classes (int): C.
        alpha (float): α of EQLv2 (positive up-weighting).
        gamma (float): γ of EQLv2's mapping function.
        mu (float): μ of EQLv2's mapping function.
        focal_alpha (float): α of the focal term (α < 0 disables α_t).
        focal_gamma (float): γ of the focal term.
        pos_reweight (bool): apply q_j to positives (EQLv2 Table 2 "pos").
        neg_reweight (bool): apply r_j to negatives (EQLv2 Table 2 "neg").
    """

    requires_grad_stats = True
    config_keys = {**EQLV2_CONFIG_KEYS, "focal_alpha": "LTDET.FOCAL.ALPHA", "focal_gamma": "LTDET.FOCAL.GAMMA"}

    def __init__(
        self,
        num_classes: int,
        alpha: float = 4.0,
        gamma: float = 12.0,
        mu: float = 0.8,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        pos_reweight: bool = True,
        neg_reweight: bool = True,
    ):
        super().__init__(num_classes)
        self.weights = EQLv2Weights(alpha, gamma, mu, pos_reweight, neg_reweight)
        self.focal_alpha = check_alpha("focal_alpha", focal_alpha)
        self.focal_gamma = check_range("focal_gamma", focal_gamma, low=0.0)
        self.grad_stats = GradientStatistics(self.num_classes)

    def class_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Current (q[C], r[C]) in float64 (EQLv2 eqs. 5-6)."""
        return self.weights(self.grad_stats)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[M, C]; labels LongTensor[M] in 0..C. Returns: scalar sum."""
        self.grad_stats.synchronize()
        check_logits(logits, self.num_classes)
        q, r = self.class_weights()
        alpha_pos, alpha_neg = alpha_weights(self.focal_alpha)
        return focal_family_loss(
            logits,
            labels,
            self.focal_gamma,
            neg_weight=alpha_neg * r,
            pos_weight=alpha_pos * q,
            stats=self.grad_stats,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, {self.weights!r}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )
