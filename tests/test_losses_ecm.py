"""ECM loss (Hyun Cho & Krähenbühl, ECCV 2022) against the official ECM-Loss code's formulas.

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1] (column C: ECM's background class).
"""
import json
import math
import os

import pytest
import torch

from ltdet.losses import EffectiveClassMarginLoss
from ltdet.losses.ecm import effective_class_margins

CAT_INFO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "shared", "data", "lvis_v1_train_cat_info.json")
C = 8
# image counts of a long tail (LVIS-like: a few frequent classes, single-image rare ones)
COUNTS = torch.tensor([3000.0, 800.0, 200.0, 60.0, 20.0, 6.0, 2.0, 1.0], dtype=torch.float64)
NUM_IMAGES = 5000.0
FG_BG = 6.3313


def make_batch(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C + 1, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C + 1, (n,), generator=g)
    labels[: C + 1] = torch.arange(C + 1)  # every class and the background at least once
    return logits, labels


def official_terms(counts, fg_bg_ratio):
    """The official ``compute_weight`` / ``get_detection_weight`` expressions, written as they are there."""
    n = torch.cat([counts, counts.sum()[None] * fg_bg_ratio])
    n_pos, n_neg = n, n.sum() - n
    pos_w = (n_neg.pow(1 / 4) / (n_pos.pow(1 / 4) + n_neg.pow(1 / 4))).pow(-1).log()
    neg_w = (n_pos.pow(1 / 4) / (n_pos.pow(1 / 4) + n_neg.pow(1 / 4))).pow(-1).log()
    a = (n.sum() - n) / n
    weight = a * ((1 + a) / a).log()
    return pos_w, neg_w, weight


def official_loss(logits, labels, counts, fg_bg_ratio):
    """The official forward: two exponentials per entry, log-likelihood, column weights, sum / B."""
    pos_w, neg_w, weight = official_terms(counts, fg_bg_ratio)
    b = logits.shape[0]
    target = torch.zeros_like(logits)
    target[torch.arange(b), labels] = 1
    exp_pos = (logits + pos_w).exp()
    exp_neg = (-logits + neg_w).exp()
    pred_pos = exp_pos / (exp_pos + exp_neg)
    pred_neg = exp_neg / (exp_pos + exp_neg)
    loss = -(pred_pos.log() * target + pred_neg.log() * (1 - target))
    return (loss * weight[None]).sum() / b


def make_loss(**kw):
    return EffectiveClassMarginLoss(C, COUNTS / NUM_IMAGES, **kw).double()


def test_margins_and_weights_are_the_official_ones_and_count_ratio_only():
    pos_w, neg_w, weight = official_terms(COUNTS, FG_BG)
    offset, w = effective_class_margins(COUNTS / NUM_IMAGES, FG_BG)  # frequencies: same ratios
    assert torch.allclose(offset, pos_w - neg_w, rtol=1e-12, atol=1e-12)
    assert torch.allclose(w, weight, rtol=1e-12)
    # b_j = m+_j - m-_j = 1/4 log(n_j / (sum_k n_k - n_j)) (module docstring)
    n = torch.cat([COUNTS, COUNTS.sum()[None] * FG_BG])
    assert torch.allclose(offset, 0.25 * torch.log(n / (n.sum() - n)), rtol=1e-12)
    # rarer class: more negative offset (harder to fire), weight closer to 1 (a log(1 + 1/a) -> 1)
    assert (offset[:C].diff() < 0).all() and (w[:C].diff() > 0).all()
    assert (w > 0).all() and (w < 1).all()


def test_loss_equals_the_official_forward():
    logits, labels = make_batch()
    loss = make_loss(fg_bg_ratio=FG_BG)(logits, labels)
    ref = official_loss(logits, labels, COUNTS, FG_BG)
    assert torch.allclose(loss.double(), ref, rtol=1e-5), (float(loss), float(ref))
    other = official_loss(logits, labels, COUNTS, 2.0)
    assert torch.allclose(make_loss(fg_bg_ratio=2.0)(logits, labels).double(), other, rtol=1e-5)
    assert not torch.allclose(other, ref, rtol=1e-3)


def test_gradient_is_the_closed_form():
    """dL/dz_ij = 2 w_j (sigmoid(2 z_ij + b_j) - 1[j == y_i]) / N on every column, background included."""
    logits, labels = make_batch(seed=1)
    z = logits.clone().requires_grad_(True)
    make_loss()(z, labels).backward()
    offset, w = effective_class_margins(COUNTS, FG_BG)
    target = torch.nn.functional.one_hot(labels, C + 1).double()
    expected = 2 * w * (torch.sigmoid(2 * logits + offset) - target) / logits.shape[0]
    assert torch.allclose(z.grad.double(), expected, rtol=1e-4, atol=1e-7)


def test_statistics_are_the_per_sample_gradients_of_the_foreground_columns():
    logits, labels = make_batch(seed=2)
    loss = make_loss()
    z = logits.clone().requires_grad_(True)
    (3.0 * loss(z, labels)).backward()  # a loss weight does not change the statistics
    loss.grad_stats.synchronize()
    offset, w = effective_class_margins(COUNTS, FG_BG)
    target = torch.nn.functional.one_hot(labels, C + 1).double()
    per_sample = (2 * w * (torch.sigmoid(2 * logits + offset) - target)).abs()[:, :C]
    pos = (per_sample * target[:, :C]).sum(0)
    neg = (per_sample * (1 - target[:, :C])).sum(0)
    assert torch.allclose(loss.grad_stats.pos_grad, pos, rtol=1e-4)
    assert torch.allclose(loss.grad_stats.neg_grad, neg, rtol=1e-4)


def test_scores_are_raw_sigmoids_times_foreground_probability():
    logits, _ = make_batch(seed=3)
    probs = make_loss().get_probs(logits)
    p = torch.sigmoid(logits)
    assert torch.allclose(probs[:, :C].double(), p[:, :C] * (1 - p[:, C:]), rtol=1e-5)


def test_empty_batch_and_checked_inputs():
    loss = make_loss()
    z = torch.zeros(0, C + 1, dtype=torch.float64, requires_grad=True)
    out = loss(z, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert float(out) == 0.0
    with pytest.raises(ValueError, match="labels must be in 0..8"):
        loss(torch.zeros(2, C + 1), torch.tensor([0, C + 1]))
    freq = (COUNTS / NUM_IMAGES).clone()
    freq[5] = 0.0
    with pytest.raises(ValueError, match=r"classes \[5\] have no training image"):
        EffectiveClassMarginLoss(C, freq)
    with pytest.raises(ValueError, match="fg_bg_ratio must be > 0"):
        EffectiveClassMarginLoss(C, COUNTS / NUM_IMAGES, fg_bg_ratio=0.0)
    with pytest.raises(ValueError, match="objectness"):
        EffectiveClassMarginLoss(C, COUNTS / NUM_IMAGES, objectness=False)


@pytest.mark.skipif(not os.path.exists(CAT_INFO), reason="../shared/data/lvis_v1_train_cat_info.json absent")
def test_lvis_v1_margins_from_the_real_counts():
    """On LVIS v1's 1,203 classes the rare classes' offsets sit well below the frequent ones'."""
    with open(CAT_INFO) as f:
        lvis_v1_cat_info = json.load(f)
    counts = torch.tensor([c["image_count"] for c in lvis_v1_cat_info], dtype=torch.float64)
    offset, w = effective_class_margins(counts)
    groups = [c["frequency"] for c in lvis_v1_cat_info]
    rare = torch.tensor([g == "r" for g in groups])
    freq = torch.tensor([g == "f" for g in groups])
    gap = float(offset[:-1][freq].mean() - offset[:-1][rare].mean())
    assert 1.0 < gap < 3.0, gap
    assert math.isclose(float(w[:-1][rare].min()), 1.0, abs_tol=1e-3)
