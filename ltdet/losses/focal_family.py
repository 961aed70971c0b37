"""Fused sum-reduced focal-family loss shared by Focal, EFL, EQFL and EQLv2-focal.

Shape shorthand: M dense samples (anchors / points), C foreground classes,
logits [M, C] (background = all-zero target), P foreground samples (one
ground-truth entry each).

Every loss of the family is, for a class j with focusing exponent γ_j and
weights a_j (negative entries) and its own term at the P ground-truth entries,

    L = sum_{ij not gt} a_j σ(z_ij)^γ_j softplus(z_ij)  +  sum_{gt entries} l_pos

(focal loss, Lin et al. eq. 5; EFL eq. 4 with a_j = (1 - α) w_j; EQFL eq. 5
with a_j = w_j; EQLv2-focal with a_j = (1 - α) r_j). The negative gradient
(EFL appendix eq. 6 / eq. 7 with y = 0, p_t = 1 - σ(z)) is

    ∂l/∂z = a_j σ(z)^γ_j (γ_j (1 - σ(z)) softplus(z) + σ(z)) >= 0,

with γ_j and a_j constants (as the official EFL code). ``focal_family_loss``
evaluates both in a few row chunks with small temporaries: forward saves
only its inputs, backward recomputes and writes the gradient once. Per-sample
|gradient| sums for ``GradientStatistics`` come for free: a column sum of the
unweighted chunk (negatives are >= 0) and |gradient| at the gt entries.
Everything is computed from log-sigmoid / softplus forms, never
``log(sigmoid(z))``, in float32 (float64 for float64 logits) with autocast off.
"""
import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .base import InvalidHyperParameter
from .common import check_labels, empty_loss
from .grad_stats import GradientStatistics

__all__ = ["alpha_weights", "check_alpha", "check_logits", "focal_family_loss", "focal_terms"]

Scalar = Union[float, torch.Tensor]
PosTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]

# Elements per row chunk: bounds the float32 [rows, C] temporaries (16 MiB on
# CPU, 32 MiB on accelerators) while keeping the chunks few. On CPU every op
# is a parallel region whose threads must all be scheduled: with the cores
# shared, hundreds of small chunks cost 3x more than a handful of large ones,
# which are within ~20% of cache-sized chunks on an idle machine.
_CHUNK_ELEMENTS = 1 << 22
_DEVICE_CHUNK_ELEMENTS = 1 << 23


def _softplus(z: torch.Tensor) -> torch.Tensor:
    """softplus(z) = -log(1 - σ(z)) = -log σ(-z), exact to the dtype's precision.

    Above the threshold torch returns z; log1p(exp(-z)) is then below the
    rounding error (exp(-20) for float32, exp(-40) for float64).
    """
    return F.softplus(z, threshold=40.0 if z.dtype == torch.float64 else 20.0)


def _modulator(z: torch.Tensor, softplus: torch.Tensor, gamma: Scalar) -> torch.Tensor:
    """σ(z)^γ = exp(γ log σ(z)) with log σ(z) = z - softplus(z); γ a float or Tensor[C]."""
    return torch.sub(z, softplus).mul_(gamma).exp_()


def focal_terms(z: torch.Tensor, gamma: Scalar, weight: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient of a weighted focal term with target 0, elementwise.

    l = a σ(z)^γ softplus(z),  ∂l/∂z = a σ(z)^γ (γ (1 - σ(z)) softplus(z) + σ(z))
    (EFL appendix eq. 6 with y = 0). For target 1 use l(-z) and -∂l/∂z(-z).

    Args:
        z: Tensor[...] of logits.
        gamma: γ, float or Tensor broadcastable to z.
        weight: a, float or Tensor broadcastable to z.
    Returns:
        (loss, grad), each Tensor[...] like z.
    """
    softplus = _softplus(z)
    sig = torch.sigmoid(z)
    mod = _modulator(z, softplus, gamma).mul_(weight)
    grad = (1.0 - sig).mul_(gamma).mul_(softplus).add_(sig).mul_(mod)
    return mod * softplus, grad


class _FocalFamilySum(torch.autograd.Function):
    """Chunked loss sum (forward) and closed-form gradient (backward)."""

    @staticmethod
    def forward(ctx, logits, gamma, neg_weight, pos_rows, pos_cols, pos_loss, pos_grad, stats):
        cdtype = pos_loss.dtype
        bounds = _chunk_bounds(logits, pos_rows)
        col_sum = torch.zeros(logits.shape[1], dtype=torch.float64, device=logits.device)
        for r0, r1, b0, b1 in bounds:
            z = logits[r0:r1].to(cdtype)
            softplus = _softplus(z)
            unweighted = _modulator(z, softplus, gamma).mul_(softplus)
            unweighted[pos_rows[b0:b1] - r0, pos_cols[b0:b1]] = 0.0
            col_sum += unweighted.sum(dim=0)
        ctx.save_for_backward(logits, pos_rows, pos_cols, pos_grad)
        ctx.gamma, ctx.neg_weight, ctx.stats, ctx.bounds = gamma, neg_weight, stats, bounds
        return ((col_sum * neg_weight).sum() + pos_loss.sum()).to(cdtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, pos_rows, pos_cols, pos_grad = ctx.saved_tensors
        gamma, neg_weight, stats = ctx.gamma, ctx.neg_weight, ctx.stats
        cdtype = pos_grad.dtype
        scale = grad_output.to(cdtype)
        out_weight = neg_weight * scale
        pos_out = pos_grad * scale
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        neg_sum = torch.zeros(logits.shape[1], dtype=torch.float64, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            for r0, r1, b0, b1 in ctx.bounds:
                z = logits[r0:r1].to(cdtype)
                softplus = _softplus(z)
                sig = torch.sigmoid(z)
                mod = _modulator(z, softplus, gamma)
                # (γ (1 - σ) softplus + σ) σ^γ, appendix eq. 6 with y = 0.
                unweighted = torch.addcmul(sig, torch.rsub(sig, 1.0), softplus.mul_(gamma)).mul_(mod)
                rows, cols = pos_rows[b0:b1] - r0, pos_cols[b0:b1]
                if stats is not None:
                    unweighted[rows, cols] = 0.0
                    neg_sum += unweighted.sum(dim=0)
                out = grad[r0:r1]
                if out.dtype == cdtype:
                    torch.mul(unweighted, out_weight, out=out)
                else:
                    out.copy_(unweighted.mul_(out_weight))
                out[rows, cols] = pos_out[b0:b1].to(out.dtype)
            if stats is not None:
                pos = torch.zeros_like(neg_sum).index_add_(0, pos_cols, pos_grad.abs().double())
                neg = neg_sum * torch.as_tensor(neg_weight, dtype=torch.float64, device=neg_sum.device)
                stats.add(pos, neg)
        return grad, None, None, None, None, None, None, None


def _chunk_bounds(logits: torch.Tensor, pos_rows: torch.Tensor):
    """[(row_start, row_end, gt_start, gt_end)] of the row chunks; ``pos_rows`` sorted."""
    m, c = logits.shape
    limit = _CHUNK_ELEMENTS if logits.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    rows = max(1, limit // max(1, c))
    starts = torch.arange(0, m, rows, device=pos_rows.device)
    cuts = torch.searchsorted(pos_rows, starts).tolist() + [pos_rows.numel()]
    return [(r0, min(r0 + rows, m), cuts[k], cuts[k + 1]) for k, r0 in enumerate(range(0, m, rows))]


def check_alpha(arg: str, alpha) -> float:
    """α of focal loss: in [0, 1], or negative to switch α_t off (torchvision's convention)."""
    value = float(alpha)
    if not (math.isfinite(value) and (value < 0 or value <= 1.0)):
        raise InvalidHyperParameter(arg, alpha, "in [0, 1], or < 0 to disable alpha_t")
    return value


def alpha_weights(alpha: float) -> Tuple[float, float]:
    """(α_t of positives, α_t of negatives): (α, 1 - α), or (1, 1) for α < 0."""
    return (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)


def check_logits(logits: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless ``logits`` is [M, C] with C = ``num_classes``."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"expected logits of shape [M, {num_classes}], got {tuple(logits.shape)}")


def focal_family_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: Scalar,
    neg_weight: Scalar,
    pos_weight: Scalar = 1.0,
    pos_terms: Optional[PosTerms] = None,
    stats: Optional[GradientStatistics] = None,
) -> torch.Tensor:
    """Sum over all M x C entries of a focal-family loss (module docstring).

    Args:
        logits: Tensor[M, C], any float dtype (float32 compute, float64 kept).
        labels: LongTensor[M] in 0..C, C = background (all-zero target).
        gamma: γ, float or Tensor[C] (per-class focusing factor).
        neg_weight: a_j of negative entries, float or Tensor[C].
        pos_weight: weight of the gt entries' focal term, float or Tensor[C];
            ignored when ``pos_terms`` is given.
        pos_terms: optional ``fn(z[P], rows[P], cols[P]) -> (loss[P], grad[P])``
            giving the gt entries' loss and ∂l/∂z (EQFL's quality term); the
            default is the focal term with target 1.
        stats: receives per-sample |∂l/∂z| sums (positives = gt entries,
            negatives = all others) when backward runs.
    Returns:
        Scalar float32 (float64 for float64 logits) tensor: the loss sum; for
        M = 0 a zero connected to ``logits``.
    """
    num_classes = logits.shape[1] if logits.dim() == 2 else -1
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [M, C] and labels [M]; got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    check_labels(labels, num_classes)
    if logits.shape[0] == 0:
        return empty_loss(logits)
    cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    gamma, neg_weight, pos_weight = (
        _prepare(value, logits.device, cdtype) for value in (gamma, neg_weight, pos_weight)
    )
    pos_rows = torch.nonzero(labels < num_classes).squeeze(1)
    pos_cols = labels[pos_rows]
    track = stats is not None and torch.is_grad_enabled() and logits.requires_grad
    with torch.autocast(logits.device.type, enabled=False):
        with torch.no_grad():
            z_pos = logits.detach()[pos_rows, pos_cols].to(cdtype)
            if pos_terms is not None:
                pos_loss, pos_grad = pos_terms(z_pos, pos_rows, pos_cols)
            else:
                pos_loss, neg_of_pos = focal_terms(-z_pos, _at(gamma, pos_cols), _at(pos_weight, pos_cols))
                pos_grad = neg_of_pos.neg_()
        return _FocalFamilySum.apply(
            logits, gamma, neg_weight, pos_rows, pos_cols, pos_loss.to(cdtype), pos_grad.to(cdtype),
            stats if track else None,
        )


def _prepare(value: Scalar, device: torch.device, dtype: torch.dtype) -> Scalar:
    """A per-class Tensor[C] on ``device``/``dtype``, or a float when all entries are equal."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    value = value.to(device=device, dtype=dtype)
    if value.numel() > 0 and bool((value == value.reshape(-1)[0]).all()):
        return float(value.reshape(-1)[0])
    return value


def _at(value: Scalar, cols: torch.Tensor) -> Scalar:
    """value[cols] for a per-class Tensor[C], the float itself otherwise."""
    return value[cols] if isinstance(value, torch.Tensor) else value
