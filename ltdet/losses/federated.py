"""Federated loss (Zhou, Koltun, Krähenbühl, "Probabilistic two-stage detection", 2021; CenterNet2 / Detic).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1] (column C unused: no objectness).

LVIS is federated: an image is exhaustively annotated only for some classes. The federated loss trains
sigmoid BCE on a subset S of the classes per iteration, the classes present in the batch's labels plus
classes drawn at random (without replacement) with probability proportional to w_j = image_count_j^power
(power 0.5), until S has ``num_fed_classes`` (50) members:

    L = 1/N sum_i sum_{j in S} BCE(z_ij, 1[j == y_i])

The columns outside S get no loss, no gradient and no gradient statistics. As CenterNet2's
``get_fed_loss_inds`` and detectron2 main's ``get_fed_loss_classes``, the background label counts
towards the 50 when a background row is present (it is then dropped), and sampling uses the torch
global generator (restored on ``--resume`` with the rest of the RNG state). Inference: sigmoid of the C
foreground columns.

``federated_eqlv2`` multiplies the BCE of the columns in S by EQLv2's weights (q_j for positives, r_j for
negatives, eqs. 5-6) computed from the accumulated statistics of the sampled columns: a combination
(Detic-style federated sampling with EQLv2's gradient-guided reweighting) offered as an option, not a
published recipe.
"""
import torch

from .base import ClassificationLoss, check_range
from .common import check_labels, class_vector, empty_loss
from .eqlv2 import EQLV2_CONFIG_KEYS, EQLv2Weights
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import column_weighted_bce, sigmoid_probs

__all__ = ["FederatedLoss", "FederatedEQLv2Loss", "FED_LOSS_CONFIG_KEYS", "federated_classes"]

#: Constructor argument -> config key of the federated loss's hyper-parameters.
FED_LOSS_CONFIG_KEYS = {
    "num_fed_classes": "LTDET.FED_LOSS.NUM_CLASSES",
    "freq_weight_power": "LTDET.FED_LOSS.FREQ_WEIGHT_POWER",
}


def federated_classes(labels: torch.Tensor, num_fed_classes: int, weights: torch.Tensor) -> torch.Tensor:
    """The classes a federated loss trains on: present labels plus classes sampled ∝ ``weights``.

    Args:
        labels: LongTensor[N] in 0..C (C = background).
        num_fed_classes: the size of the set, the background label included when present.
        weights: Tensor[C], sampling weights (image_count^power); classes with weight 0 are never drawn.
    Returns:
        BoolTensor[C]: the foreground columns in the set.
    """
    c = weights.numel()
    present = torch.unique(labels)
    mask = torch.zeros(c + 1, dtype=torch.bool, device=labels.device)
    mask[present] = True
    missing = num_fed_classes - present.numel()
    if missing > 0:
        prob = weights.to(device=labels.device, dtype=torch.float32).clone()
        prob[mask[:c]] = 0.0
        missing = min(missing, int((prob > 0).sum()))
        if missing > 0:
            mask[torch.multinomial(prob, missing, replacement=False)] = True
    return mask[:c]


@LOSS_REGISTRY.register("federated")
class FederatedLoss(ClassificationLoss):
    """Sigmoid BCE over the present and sampled classes (module docstring).

    Args:
        num_classes (int): C.
        image_freq (Tensor[C]): image_count / num_images of the training set (the sampling weights are
            its power, proportional to image_count^power).
        num_fed_classes (int): size of the class set per iteration (50).
        freq_weight_power (float): the power of the image counts (0.5).
        collect_stats (bool): accumulate per-class |dl/dz| of the sampled columns in ``grad_stats``.
    """

    priors = ("image_freq",)
    config_keys = FED_LOSS_CONFIG_KEYS

    def __init__(self, num_classes, image_freq, num_fed_classes=50, freq_weight_power=0.5, collect_stats=True):
        super().__init__(num_classes, objectness=False)
        self.num_fed_classes = int(check_range("num_fed_classes", num_fed_classes, low=1))
        if self.num_fed_classes != num_fed_classes:
            raise ValueError(f"num_fed_classes must be an integer, got {num_fed_classes!r}")
        self.freq_weight_power = check_range("freq_weight_power", freq_weight_power, low=0.0)
        image_freq = class_vector(image_freq, self.num_classes)
        if (image_freq < 0).any() or not torch.isfinite(image_freq).all():
            raise ValueError("image_freq must be finite and >= 0")
        weights = torch.where(image_freq > 0, image_freq.pow(self.freq_weight_power), torch.zeros_like(image_freq))
        self.register_buffer("sampling_weights", weights.float(), persistent=False)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    def sampled_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """BoolTensor[C]: this iteration's class set (draws from the torch global generator)."""
        return federated_classes(labels, self.num_fed_classes, self.sampling_weights)

    def column_weights(self, mask: torch.Tensor):
        """(pos_w[C+1], neg_w[C+1]) of ``column_weighted_bce``: 1 on the sampled columns, else 0."""
        w = torch.cat([mask.float(), mask.new_zeros(1, dtype=torch.float32)])
        return w, w

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)
        if self.requires_grad_stats:
            self.grad_stats.synchronize()
        if logits.shape[0] == 0:
            return empty_loss(logits)
        pos_w, neg_w = self.column_weights(self.sampled_classes(labels))
        return column_weighted_bce(logits, labels, pos_w.to(logits.device), neg_w.to(logits.device), self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: sigmoid of the foreground columns, background column 0."""
        return sigmoid_probs(logits, objectness=False)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_fed_classes={self.num_fed_classes}, "
                f"freq_weight_power={self.freq_weight_power}")


@LOSS_REGISTRY.register("federated_eqlv2")
class FederatedEQLv2Loss(FederatedLoss):
    """The federated loss with EQLv2's gradient-guided weights on the sampled columns (module docstring).

    Args: those of :class:`FederatedLoss` (statistics always on) and EQLv2's ``alpha``, ``gamma``, ``mu``,
    ``pos_reweight``, ``neg_reweight`` (eqs. 5-6, Table 2).
    """

    requires_grad_stats = True
    config_keys = {**FED_LOSS_CONFIG_KEYS, **EQLV2_CONFIG_KEYS}

    def __init__(self, num_classes, image_freq, num_fed_classes=50, freq_weight_power=0.5, alpha=4.0,
                 gamma=12.0, mu=0.8, pos_reweight=True, neg_reweight=True):
        super().__init__(num_classes, image_freq, num_fed_classes, freq_weight_power, collect_stats=True)
        self.weights = EQLv2Weights(alpha, gamma, mu, pos_reweight, neg_reweight)

    def column_weights(self, mask: torch.Tensor):
        """(mask * q, mask * r) with EQLv2's (q, r) from the statistics accumulated so far."""
        q, r = self.weights(self.grad_stats)
        m = mask.to(q.device, torch.float64)
        zero = q.new_zeros(1)
        return torch.cat([m * q, zero]).float(), torch.cat([m * r, zero]).float()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.weights!r}"
