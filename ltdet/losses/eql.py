"""Equalization Loss (Tan et al., CVPR 2020).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].

    L_EQL = -sum_j w_j log(p^_j)                    (eq. 6)
    w_j   = 1 - E(r) T_lambda(f_j) (1 - y_j)         (eq. 7)

E(r) = 1 for foreground proposals, 0 for background; f_j = image_count_j /
num_images. Threshold functions (Sec. 4.4, Fig. 3 / Table 3):

    step:      T(f) = 1[f < lambda]
    exp:       T(f) = 1 - (a f)^n, clipped to [0, 1]   (a = 400, n = 2)
    gompertz:  T(f) = 1 - a exp(-b exp(-c f))          (a = 1, b = 80, c = 3000)

For LVIS, classes in the image's pos_category_ids / neg_category_ids are
never ignored (Sec. 4.2): w_j = 1 there.
"""
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from .base import ClassificationLoss, check_choice, check_range
from .common import check_labels, class_vector, tapped_mean_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import one_hot_like, sigmoid_probs

__all__ = ["EQLLoss", "threshold_weights"]

THRESHOLD_FNS = ("step", "exp", "gompertz")

logger = logging.getLogger(__name__)


def threshold_weights(
    image_freq: torch.Tensor,
    lambda_: float,
    threshold_fn: str = "step",
    exp_a: float = 400.0,
    exp_n: float = 2.0,
    gompertz_a: float = 1.0,
    gompertz_b: float = 80.0,
    gompertz_c: float = 3000.0,
) -> torch.Tensor:
    """T(f_j) for every class (EQL eq. 7 and Sec. 4.4).

    Args:
        image_freq: Tensor[C], image_count / num_images.
        lambda_: λ of the step function (unused by the decay variants).
        threshold_fn: "step", "exp" or "gompertz".
    Returns:
        Tensor[C] in [0, 1], float32.
    """
    f = image_freq.double()
    check_choice("threshold_fn", threshold_fn, THRESHOLD_FNS)
    if threshold_fn == "step":
        t = (f < lambda_).double()
    elif threshold_fn == "exp":
        t = (1.0 - (exp_a * f).pow(exp_n)).clamp(0.0, 1.0)
    else:
        t = 1.0 - gompertz_a * torch.exp(-gompertz_b * torch.exp(-gompertz_c * f))
    return t.float()


@LOSS_REGISTRY.register("eql")
class EQLLoss(ClassificationLoss):
    """Sigmoid BCE with the EQL weights of eq. 7; mean over N.

    Gradient: w_ij (p_ij - y_ij) (EQL eq. 5 times w). Column C: plain BCE with
    target 1 for background rows when ``objectness`` is on, no loss otherwise.

    Args:
        num_classes (int): C.
        image_freq (Tensor[C]): f_j, image_count / num_images of the training set.
        lambda_ (float): λ, frequency threshold of the step function.
        threshold_fn (str): "step", "exp" or "gompertz".
        objectness (bool): train column C as the category-agnostic task.
        exp_a, exp_n: a, n of the exponential decay.
        gompertz_a, gompertz_b, gompertz_c: a, b, c of the Gompertz decay.
        collect_stats (bool): accumulate per-class |dl/dz| in ``grad_stats``.
        use_image_labels (bool): the head passes ``image_label_mask`` (LVIS
            image-level labels, Sec. 4.2); those classes are never ignored.
    """

    objectness_choices = (False, True)
    priors = ("image_freq",)
    config_keys = {
        "lambda_": "LTDET.EQL.LAMBDA",
        "threshold_fn": "LTDET.EQL.THRESHOLD_FN",
        "exp_a": "LTDET.EQL.EXP_A",
        "exp_n": "LTDET.EQL.EXP_N",
        "gompertz_a": "LTDET.EQL.GOMPERTZ_A",
        "gompertz_b": "LTDET.EQL.GOMPERTZ_B",
        "gompertz_c": "LTDET.EQL.GOMPERTZ_C",
        "use_image_labels": "LTDET.EQL.USE_IMAGE_LABELS",
    }

    def __init__(
        self,
        num_classes: int,
        image_freq,
        lambda_: float = 1.76e-3,
        threshold_fn: str = "step",
        objectness: bool = False,
        exp_a: float = 400.0,
        exp_n: float = 2.0,
        gompertz_a: float = 1.0,
        gompertz_b: float = 80.0,
        gompertz_c: float = 3000.0,
        collect_stats: bool = True,
        use_image_labels: bool = False,
    ):
        super().__init__(num_classes, objectness)
        image_freq = class_vector(image_freq, self.num_classes)
        self.lambda_ = check_range("lambda_", lambda_, low=0.0, high=1.0)
        self.threshold_fn = check_choice("threshold_fn", threshold_fn, THRESHOLD_FNS)
        exp_a = check_range("exp_a", exp_a, low=0.0, low_open=True)
        exp_n = check_range("exp_n", exp_n, low=0.0, low_open=True)
        gompertz_a = check_range("gompertz_a", gompertz_a, low=0.0, high=1.0)
        gompertz_b = check_range("gompertz_b", gompertz_b, low=0.0, low_open=True)
        gompertz_c = check_range("gompertz_c", gompertz_c, low=0.0, low_open=True)
        self.use_image_labels = bool(use_image_labels)
        t = threshold_weights(
            image_freq, self.lambda_, threshold_fn, exp_a, exp_n, gompertz_a, gompertz_b, gompertz_c
        )
        # Dataset priors, not training state: rebuilt from the dataset, not checkpointed.
        self.register_buffer("image_freq", image_freq, persistent=False)
        self.register_buffer("threshold", t, persistent=False)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None
        logger.info(
            f"EQL: lambda={self.lambda_:g} ({self.threshold_fn}), tail ratio TR(lambda)="
            f"{100 * self.tail_ratio():.2f}% of image-level occurrences, "
            f"{100 * self.tail_class_fraction():.1f}% of the classes below the threshold"
        )

    @property
    def extra_inputs(self):
        return ("image_label_mask",) if self.use_image_labels else ()

    def tail_ratio(self) -> float:
        """TR(λ) = sum_j T(f_j) N_j / sum_j N_j (EQL eq. 8), N_j the image count of class j.

        Image-count weighted, as in Table 2 (λ = 1.76e-3 gives TR = 9.08% on
        LVIS v0.5 although ~74% of the classes are under λ).
        """
        f = self.image_freq
        return float((self.threshold.double() * f).sum() / f.sum().clamp(min=1e-12))

    def tail_class_fraction(self) -> float:
        """Unweighted fraction of classes with T(f_j) > 0 (step: f_j < λ)."""
        return float((self.threshold > 0).double().mean())

    def weights(self, labels: torch.Tensor, image_label_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """w_ij of EQL eq. 7 for all C + 1 columns.

        Args:
            labels: LongTensor[N] in 0..C.
            image_label_mask: BoolTensor[N, C], classes of the proposal's image
                pos/neg category ids (never ignored), or None.
        Returns:
            Tensor[N, C+1] float32; column C is 1 with objectness, else 0.
        """
        n, c = labels.numel(), self.num_classes
        w = torch.ones(n, c + 1, device=labels.device)
        fg_rows = torch.nonzero(labels < c).squeeze(1)
        w[fg_rows, :c] = 1.0 - self.threshold.to(w.device)  # E(r) = 1, y_j = 0
        w[fg_rows, labels[fg_rows]] = 1.0  # y_j = 1
        if image_label_mask is not None:
            w[:, :c].masked_fill_(image_label_mask.to(w.device).bool(), 1.0)
        if not self.objectness:
            w[:, c] = 0.0
        return w

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        image_label_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C; image_label_mask
        BoolTensor[N, C] or None. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        n, c = logits.shape[0], self.num_classes
        if image_label_mask is not None and tuple(image_label_mask.shape) != (n, c):
            raise ValueError(f"image_label_mask must have shape ({n}, {c}), got {tuple(image_label_mask.shape)}")

        def summed_loss(z):
            weight = self.weights(labels.to(z.device), image_label_mask)
            target = one_hot_like(z, labels)
            return F.binary_cross_entropy_with_logits(z, target, weight=weight, reduction="sum")

        return tapped_mean_loss(logits, labels, summed_loss, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: sigmoid scores (x (1 - p_bg) with objectness)."""
        return sigmoid_probs(logits, self.objectness)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, lambda_={self.lambda_}, "
            f"threshold_fn={self.threshold_fn!r}, objectness={self.objectness}, "
            f"use_image_labels={self.use_image_labels}"
        )
