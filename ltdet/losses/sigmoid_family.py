"""Shared pieces of the sigmoid-family two-stage losses (BCE, EQL, EQLv2, ACSL).

Shape shorthand: N proposals, C foreground classes, K = C + 1 logit columns
(column C is the category-agnostic objectness task, see ``base.py``).

``column_weighted_bce`` is a fused autograd function for the losses whose
binary cross-entropy weights depend only on the column and on whether the
entry is the row's ground truth (sigmoid BCE, EQLv2 eqs. 5-8):

    w_ij = pos_w[j] if j == y_i else neg_w[j]
    L    = 1/N sum_ij w_ij BCE(z_ij, 1[j == y_i])

It computes L from column sums of softplus(z) plus a correction at the N
ground-truth entries, and the gradient (EQL eq. 5 times w) as
sigmoid(z) * neg_w with the ground-truth entries overwritten, i.e. two passes
over the [N, K] logits in forward and three in backward, instead of the ~10 of
an autograd BCE with a dense weight matrix. Background rows (label C) have
their ground-truth entry in column C: with ``pos_w[C] = neg_w[C] = 1`` that
column is the plain objectness BCE (target 1 for background), with zeros it
carries no loss.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .grad_stats import GradientStatistics

__all__ = ["column_weighted_bce", "sigmoid_probs", "one_hot_like"]


def one_hot_like(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Float one-hot targets: Tensor[N, K], LongTensor[N] -> Tensor[N, K] like ``logits``."""
    target = torch.zeros_like(logits)
    target[torch.arange(labels.numel(), device=logits.device), labels] = 1.0
    return target


# Elements per chunk of the softplus column sums on CPU: 16 MB temporaries stay
# under glibc's mmap threshold (reused, no page faults, unlike one [N, K]
# temporary for LVIS-sized logits) while keeping the number of parallel ops
# small (tiny chunks are slow on a loaded machine). One chunk on accelerators.
_CHUNK_ELEMENTS = 1 << 22


def _softplus_col_sums(logits: torch.Tensor) -> torch.Tensor:
    """sum_i softplus(z_ij) for every column j: Tensor[N, K] -> Tensor[K]."""
    if logits.device.type != "cpu":
        return F.softplus(logits).sum(dim=0)
    rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[1]))
    total = torch.zeros(logits.shape[1], dtype=logits.dtype)
    for chunk in logits.split(rows):
        total += F.softplus(chunk).sum(dim=0)
    return total


class _ColumnWeightedBCE(torch.autograd.Function):
    """Fused forward/backward of the column-weighted BCE (see module docstring)."""

    @staticmethod
    def forward(ctx, logits, labels, pos_w, neg_w, stats):
        with torch.autocast(logits.device.type, enabled=False):
            n = logits.shape[0]
            rows = torch.arange(n, device=logits.device)
            z_gt = logits[rows, labels]
            sp_gt = F.softplus(z_gt)
            col_sums = _softplus_col_sums(logits)
            # Every entry as a negative (softplus(z) = BCE(z, 0)), then replace
            # the ground-truth entries by their positive term softplus(z) - z.
            total = torch.dot(neg_w, col_sums) + torch.sum(
                pos_w[labels] * (sp_gt - z_gt) - neg_w[labels] * sp_gt
            )
        ctx.save_for_backward(logits, labels, pos_w, neg_w)
        ctx.stats = stats
        return total / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, labels, pos_w, neg_w = ctx.saved_tensors
        stats: Optional[GradientStatistics] = ctx.stats
        with torch.autocast(logits.device.type, enabled=False):
            n = logits.shape[0]
            rows = torch.arange(n, device=logits.device)
            prob = torch.sigmoid(logits)
            p_gt = prob[rows, labels]
            if stats is not None:
                _record(stats, prob, p_gt, labels, pos_w, neg_w)
            scale = grad_output.to(prob.dtype) / n
            grad = prob.mul_(neg_w * scale)
            grad[rows, labels] = pos_w[labels] * (p_gt - 1.0) * scale
        return grad, None, None, None, None


@torch.no_grad()
def _record(stats: GradientStatistics, prob, p_gt, labels, pos_w, neg_w) -> None:
    """Feed per-sample re-weighted |dl_i/dz_ij| sums (EQLv2 eq. 9) to ``stats``.

    pos_j = sum_{i: y_i = j} pos_w[j] (1 - p_ij);
    neg_j = neg_w[j] (sum_i p_ij - sum_{i: y_i = j} p_ij).
    """
    c = stats.num_classes
    col = prob[:, :c].sum(dim=0).double()
    fg = labels < c
    fg_labels = labels[fg]
    p_fg = p_gt[fg].double()
    own = torch.zeros(c, dtype=torch.float64, device=prob.device).index_add_(0, fg_labels, p_fg)
    count = torch.zeros_like(own).index_add_(0, fg_labels, torch.ones_like(p_fg))
    pos = pos_w[:c].double() * (count - own)
    neg = neg_w[:c].double() * (col - own)
    stats.add(pos, neg)


def column_weighted_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_w: torch.Tensor,
    neg_w: torch.Tensor,
    stats: Optional[GradientStatistics] = None,
) -> torch.Tensor:
    """Mean over rows of the column-weighted binary cross-entropy.

    Args:
        logits: Tensor[N, K], any float dtype (computed in float32), N > 0.
        labels: LongTensor[N] in 0..C (C = K - 1 = background).
        pos_w: Tensor[K], weight of the ground-truth entry of a row whose label
            is j (EQLv2 q_j); entry C is the objectness weight for background rows.
        neg_w: Tensor[K], weight of every other entry of column j (EQLv2 r_j).
        stats: if given, receives the per-sample weighted |gradient| sums of
            the first ``stats.num_classes`` columns in backward.
    Returns:
        Scalar float32 tensor, sum_ij w_ij BCE(z_ij, y_ij) / N.
    """
    z = logits.float()
    pos_w = pos_w.to(device=z.device, dtype=torch.float32)
    neg_w = neg_w.to(device=z.device, dtype=torch.float32)
    return _ColumnWeightedBCE.apply(z, labels, pos_w, neg_w, stats)


def sigmoid_probs(logits: torch.Tensor, objectness: bool, bg_trained: Optional[bool] = None) -> torch.Tensor:
    """Inference probabilities of the sigmoid family.

    Args:
        logits: Tensor[N, C + 1].
        objectness: whether column C is the objectness task; then
            p'_j = p_j (1 - p_bg) (EQLv2 eq. 10 with p_obj = 1 - sigmoid(z_C)).
        bg_trained: whether column C was trained as a background task at all
            (defaults to ``objectness``); if not, the last column is 0.
    Returns:
        Tensor[N, C + 1]: per-class scores, last column the background score
        (detectron2 drops it).
    """
    if bg_trained is None:
        bg_trained = objectness
    probs = torch.sigmoid(logits.float())
    p_bg = probs[:, -1:]
    if objectness:
        probs = torch.cat([probs[:, :-1] * (1.0 - p_bg), p_bg], dim=1)
    elif not bg_trained:
        probs = torch.cat([probs[:, :-1], torch.zeros_like(p_bg)], dim=1)
    return probs
