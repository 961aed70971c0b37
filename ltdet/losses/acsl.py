"""Adaptive Class Suppression Loss (Wang et al., CVPR 2021).

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1],
n_bg background rows.

    L_ACSL = -sum_i w_i log(p^_i)                                     (eq. 5)
    w_i    = 1 if i = k;  1[p_i >= xi] if i != k                       (eq. 6)
    dL/dz_i = p_i - 1 if i = k;  w_i p_i if i != k                     (eq. 7)

for a foreground row of class k. Background rows follow the official code:
their weights are reset to 0, then a random int(n_bg * 1%) of them get weight
1 on the rare classes, an independent random 10% on the common classes and
all of them on the frequent classes (Sec. 4.1 "1%, 10% background samples for
rare and common categories"); without r/c/f groups, every class on every
background row. The rows are drawn without replacement from a seeded
``torch.Generator`` whose state is checkpointed (``_extra_state``).

Column C. With ``objectness`` on it is the category-agnostic task of ltdet
(see ``base.py``): plain BCE on every row, target 1 for background rows.
With it off, column C is handled exactly as in the official code: a binary
background task with target 1 and weight 1 on background rows, and weight
1[sigmoid(z_iC) >= xi] (the same adaptive mask) on foreground rows.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .base import ClassificationLoss, check_range
from .common import check_labels, tapped_mean_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .sigmoid_family import one_hot_like, sigmoid_probs

__all__ = ["ACSLLoss"]

# Fraction of background rows that suppress each frequency group (rare, common, frequent).
GROUP_BG_FRACTIONS = (0.01, 0.1, 1.0)


@LOSS_REGISTRY.register("acsl")
class ACSLLoss(ClassificationLoss):
    """ACSL (eqs. 5-7) with the official background sampling; mean over N.

    Args:
        num_classes (int): C.
        xi (float): ξ, confidence above which a non-ground-truth class is suppressed.
        class_groups (LongTensor[C] or None): 0 rare, 1 common, 2 frequent.
        objectness (bool): column C is the objectness task (see module docstring).
        seed (int): seed of the generator that samples background rows.
        collect_stats (bool): accumulate per-class |dl/dz| in ``grad_stats``.
    """

    objectness_choices = (False, True)
    priors = ("class_groups",)
    config_keys = {"xi": "LTDET.ACSL.XI", "seed": "LTDET.ACSL.SEED"}

    def __init__(
        self,
        num_classes: int,
        xi: float = 0.7,
        class_groups: Optional[torch.Tensor] = None,
        objectness: bool = False,
        seed: int = 0,
        collect_stats: bool = True,
    ):
        super().__init__(num_classes, objectness)
        self.xi = check_range("xi", xi, low=0.0, high=1.0)
        if class_groups is not None:
            class_groups = torch.as_tensor(class_groups, dtype=torch.long).flatten()
            if class_groups.numel() != self.num_classes:
                raise ValueError(f"class_groups has {class_groups.numel()} entries, expected {self.num_classes}")
            if class_groups.numel() and (class_groups.min() < 0 or class_groups.max() > 2):
                raise ValueError("class_groups must be 0 (rare), 1 (common) or 2 (frequent)")
            group_masks = torch.stack([class_groups == g for g in range(3)])
        else:
            group_masks = torch.zeros(3, self.num_classes, dtype=torch.bool)
            group_masks[2] = True
        self.register_buffer("group_masks", group_masks, persistent=False)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    def get_extra_state(self) -> torch.Tensor:
        """The sampling generator's state (uint8 tensor), so resume is exact."""
        return self.generator.get_state()

    def set_extra_state(self, state) -> None:
        self.generator.set_state(torch.as_tensor(state, dtype=torch.uint8).cpu())

    @torch.no_grad()
    def weights(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The binary weights w of eq. 6 plus the background sampling.

        Args:
            logits: Tensor[N, C+1] float32.
            labels: LongTensor[N] in 0..C.
        Returns:
            Tensor[N, C+1] float32 in {0, 1}.
        """
        n, c = logits.shape[0], self.num_classes
        rows = torch.arange(n, device=logits.device)
        weight = (torch.sigmoid(logits) >= self.xi).float()
        weight[rows, labels] = 1.0
        bg_rows = torch.nonzero(labels == c).squeeze(1)
        weight[bg_rows] = 0.0
        for frac, classes in zip(GROUP_BG_FRACTIONS, self.group_masks):
            k = int(bg_rows.numel() * frac)
            chosen = torch.randperm(bg_rows.numel(), generator=self.generator)[:k]
            chosen = bg_rows[chosen.to(bg_rows.device)]
            cols = torch.nonzero(classes).squeeze(1).to(logits.device)
            weight[chosen[:, None], cols[None, :]] = 1.0
        weight[bg_rows, c] = 1.0
        if self.objectness:
            weight[:, c] = 1.0
        return weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N."""
        check_labels(labels, self.num_classes)

        def summed_loss(z):
            weight = self.weights(z.detach(), labels)
            target = one_hot_like(z, labels)
            return F.binary_cross_entropy_with_logits(z, target, weight=weight, reduction="sum")

        return tapped_mean_loss(logits, labels, summed_loss, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: sigmoid scores; with ``objectness`` x (1 - p_bg).

        Without it the official model scores p_j alone; its last column, the
        trained background task, is the background score.
        """
        return sigmoid_probs(logits, self.objectness, bg_trained=True)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, xi={self.xi}, objectness={self.objectness}, seed={self.seed}"
