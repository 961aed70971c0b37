"""Seesaw Loss (Wang et al., CVPR 2021), with an objectness column.

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].

On the foreground rows, over the C foreground columns (seesaw paper eq. 1-2):

    L = -sum_i y_i log(s_i),  s_i = e^{z_i} / (sum_{j != i} S_ij e^{z_j} + e^{z_i})
    S_ij = M_ij C_ij
    M_ij = (N_j / N_i)^p if N_j < N_i else 1       (mitigation, eq. 3)
    C_ij = (s_j / s_i)^q if s_j > s_i else 1       (compensation, eq. 4)

N_j are the accumulated training counts of class j (including the current
batch, as the reference mmdet ``cum_samples``), s the detached softmax
probabilities over the C foreground columns, s_i clamped to >= 1e-2 (mmdet's
eps). As in mmdet, S is applied as log S_ij added to the non-ground-truth
logits, and is a constant in backward. Column C is the objectness task:
sigmoid BCE on every row with target 1 for background rows (mmdet uses a
2-way softmax; one sigmoid column is its equivalent under ltdet's K + 1
output convention). Both terms are summed and divided by N.
"""
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import ClassificationLoss, check_range
from .common import check_labels, tapped_mean_loss
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY

__all__ = ["SeesawLoss", "seesaw_log_weights"]

EPS = 1e-2


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes when a process group is initialised (collective)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        buf = t.cuda() if dist.get_backend() == "nccl" and not t.is_cuda else t.clone()
        dist.all_reduce(buf)
        return buf.to(t.device)
    return t


def seesaw_log_weights(
    logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, p: float, q: float
) -> torch.Tensor:
    """log S_ij for foreground rows (seesaw eqs. 3-4), 0 at the ground truth.

    Args:
        logits: Tensor[M, C] float32, foreground rows and columns.
        labels: LongTensor[M] in 0..C-1.
        counts: Tensor[C], accumulated class counts N_j.
        p, q: mitigation / compensation exponents.
    Returns:
        Tensor[M, C], detached.
    """
    logits = logits.detach()
    log_w = torch.zeros_like(logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    if p > 0:
        log_n = counts.clamp(min=1).log().to(logits)
        log_ratio = log_n[None, :] - log_n[labels][:, None]
        log_w += p * log_ratio.clamp(max=0.0)
    if q > 0:
        log_s = F.log_softmax(logits, dim=1)
        log_s_gt = log_s[rows, labels].clamp(min=math.log(EPS))
        log_w += q * (log_s - log_s_gt[:, None]).clamp(min=0.0)
    log_w[rows, labels] = 0.0
    return log_w


@LOSS_REGISTRY.register("seesaw")
class SeesawLoss(ClassificationLoss):
    """Seesaw-reweighted softmax CE on foreground rows + objectness BCE; mean over N.

    Args:
        num_classes (int): C.
        p (float): mitigation exponent (0 disables it).
        q (float): compensation exponent (0 disables it).
        collect_stats (bool): accumulate per-class |dl/dz| in ``grad_stats``.

    Buffer ``cum_samples[C]`` (float64, checkpointed): accumulated class
    counts, all-reduced over processes in every training forward (a collective).

    The objectness column is part of the method (Seesaw Sec. 3.3, every
    official config), so it cannot be switched off.
    """

    activation = "softmax"
    objectness_choices = (True,)
    config_keys = {"p": "LTDET.SEESAW.P", "q": "LTDET.SEESAW.Q"}

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 2.0, collect_stats: bool = True):
        super().__init__(num_classes, objectness=True)
        self.p = check_range("p", p, low=0.0)
        self.q = check_range("q", q, low=0.0)
        self.register_buffer("cum_samples", torch.zeros(self.num_classes, dtype=torch.float64))
        self.grad_stats = GradientStatistics(self.num_classes) if collect_stats else None

    @torch.no_grad()
    def _accumulate(self, labels: torch.Tensor) -> None:
        counts = torch.bincount(labels, minlength=self.num_classes + 1)[: self.num_classes]
        counts = counts.to(self.cum_samples)
        self.cum_samples += _all_reduce_sum(counts)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits Tensor[N, C+1]; labels LongTensor[N] in 0..C. Returns: scalar mean over N.

        In training mode the batch's labels are first added to ``cum_samples``.
        """
        check_labels(labels, self.num_classes)
        if self.training:
            self._accumulate(labels)
        c = self.num_classes

        def summed_loss(z):
            fg = labels < c
            obj_loss = F.binary_cross_entropy_with_logits(z[:, c], (~fg).float(), reduction="sum")
            z_fg, y_fg = z[fg, :c], labels[fg]
            log_w = seesaw_log_weights(z_fg, y_fg, self.cum_samples, self.p, self.q)
            return F.cross_entropy(z_fg + log_w, y_fg, reduction="sum") + obj_loss

        return tapped_mean_loss(logits, labels, summed_loss, self.grad_stats)

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[N, C+1] -> Tensor[N, C+1]: softmax over C classes x p_obj; last column 1 - p_obj."""
        logits = logits.float()
        p_bg = torch.sigmoid(logits[:, -1:])
        return torch.cat([F.softmax(logits[:, :-1], dim=1) * (1.0 - p_bg), p_bg], dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}"
