"""Two-stage classification losses against the papers' closed forms.

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].
"""
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ltdet.losses import (
    ACSLLoss,
    EffectiveClassMarginLoss,
    EQLLoss,
    EQLv2Loss,
    FederatedLoss,
    SeesawLoss,
    SigmoidBCELoss,
    SoftmaxCELoss,
)

C = 6
FREQ = torch.tensor([5e-4, 1e-3, 1.5e-3, 2e-3, 1e-2, 2e-1], dtype=torch.float64)
GROUPS = torch.tensor([0, 0, 1, 1, 2, 2])

FACTORIES = {
    "softmax": lambda: SoftmaxCELoss(C),
    "sigmoid": lambda: SigmoidBCELoss(C),
    "sigmoid_obj": lambda: SigmoidBCELoss(C, objectness=True),
    "eql": lambda: EQLLoss(C, FREQ),
    "eqlv2": lambda: EQLv2Loss(C),
    "eqlv2_noobj": lambda: EQLv2Loss(C, objectness=False),
    "acsl": lambda: ACSLLoss(C, class_groups=GROUPS),
    "acsl_obj": lambda: ACSLLoss(C, class_groups=GROUPS, objectness=True),
    "seesaw": lambda: SeesawLoss(C),
    "ecm": lambda: EffectiveClassMarginLoss(C, FREQ),
    # every class in the set: deterministic (the sampling itself is tested in test_losses_federated.py)
    "federated": lambda: FederatedLoss(C, FREQ, num_fed_classes=C + 1),
}


def make_batch(n=48, c=C, seed=0, scale=2.0, bg_frac=0.4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c + 1, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    labels[torch.rand(n, generator=g) < bg_frac] = c
    return logits, labels


def grad_of(loss_fn, logits, labels, scale=1.0, **kw):
    z = logits.clone().requires_grad_()
    loss = loss_fn(z, labels, **kw)
    (loss * scale).backward()
    return loss.detach(), z.grad


def split_stats(grad_abs, labels, c=C):
    """Per-class (pos, neg) sums of per-sample |dl_i/dz_ij| over the first C columns."""
    onehot = F.one_hot(labels, c + 1)[:, :c].double()
    g = grad_abs[:, :c].double()
    return (g * onehot).sum(0), (g * (1 - onehot)).sum(0)


def sync_stats(loss_fn):
    loss_fn.grad_stats.synchronize()
    return loss_fn.grad_stats.pos_grad.clone(), loss_fn.grad_stats.neg_grad.clone()


# ----------------------------------------------------------------- baselines
def test_softmax_gradient_is_p_minus_y():
    logits, labels = make_batch()
    loss, grad = grad_of(SoftmaxCELoss(C), logits, labels)
    p = F.softmax(logits, 1)
    torch.testing.assert_close(grad, (p - F.one_hot(labels, C + 1)) / len(labels))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("objectness", [False, True])
def test_sigmoid_gradient_is_p_minus_y(objectness):
    logits, labels = make_batch()
    n = len(labels)
    loss, grad = grad_of(SigmoidBCELoss(C, objectness=objectness), logits, labels)
    y = F.one_hot(labels, C + 1).float()
    mask = torch.ones(C + 1)
    mask[C] = float(objectness)
    torch.testing.assert_close(grad, (torch.sigmoid(logits) - y) * mask / n)
    ref = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum() / n
    torch.testing.assert_close(loss, ref)


# ----------------------------------------------------------------------- EQL
def eql_threshold(f, fn, lam=1.76e-3):
    """EQL Sec. 4.4 / Table 3 threshold functions, written independently."""
    if fn == "step":
        return (f < lam).float()
    if fn == "exp":
        return torch.clamp(1 - (400.0 * f) ** 2, min=0.0).float()
    return (1 - 1.0 * torch.exp(-80.0 * torch.exp(-3000.0 * f))).float()


@pytest.mark.parametrize("fn", ["step", "exp", "gompertz"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_eql_gradient_eq5_eq7(fn, use_mask):
    logits, labels = make_batch(seed=1)
    n = len(labels)
    mask = torch.rand(n, C, generator=torch.Generator().manual_seed(3)) < 0.3 if use_mask else None
    loss, grad = grad_of(EQLLoss(C, FREQ, threshold_fn=fn), logits, labels, image_label_mask=mask)
    y = F.one_hot(labels, C + 1).float()[:, :C]
    e_r = (labels < C).float()[:, None]  # E(r): 1 for foreground proposals
    w = 1 - e_r * eql_threshold(FREQ, fn)[None] * (1 - y)  # eq. 7
    if mask is not None:
        w[mask] = 1.0
    expected = torch.zeros_like(grad)
    expected[:, :C] = w * (torch.sigmoid(logits[:, :C]) - y) / n  # eq. 5 times w
    torch.testing.assert_close(grad, expected)
    assert bool((grad[labels == C, :C] != 0).all())  # E(r) = 0: background never ignored


def test_eql_tail_ratio_eq8():
    loss = EQLLoss(C, FREQ)
    t = (FREQ < 1.76e-3).double()
    assert loss.tail_ratio() == pytest.approx(float((t * FREQ).sum() / FREQ.sum()))
    assert loss.tail_class_fraction() == pytest.approx(3 / C)


# --------------------------------------------------------------------- EQLv2
@pytest.mark.parametrize(
    "pos,neg,obj", [(True, True, True), (True, True, False), (False, True, True), (True, False, True)]
)
def test_eqlv2_gradient_eqs3_to_9_over_iterations(pos, neg, obj):
    alpha, gamma, mu = 4.0, 12.0, 0.8
    loss_fn = EQLv2Loss(C, objectness=obj, pos_reweight=pos, neg_reweight=neg)
    pos_acc = torch.zeros(C, dtype=torch.float64)
    neg_acc = torch.zeros(C, dtype=torch.float64)
    weights_seen = []
    for it in range(4):
        logits, labels = make_batch(n=40, seed=10 + it, scale=3.0)
        n = len(labels)
        g = torch.where(neg_acc > 0, pos_acc / (neg_acc + 1e-10), torch.full_like(pos_acc, 100.0))
        f = 1 / (1 + torch.exp(-gamma * (g - mu)))  # eq. 6
        q = 1 + alpha * (1 - f) if pos else torch.ones(C, dtype=torch.float64)  # eq. 5
        r = f if neg else torch.ones(C, dtype=torch.float64)
        weights_seen.append(r.clone())
        y = F.one_hot(labels, C + 1).double()
        p = torch.sigmoid(logits.double())
        w = torch.ones(n, C + 1, dtype=torch.float64) * float(obj)
        w[:, :C] = q * y[:, :C] + r * (1 - y[:, :C])
        raw = y * (p - 1) + (1 - y) * p  # eqs. 3-4 per sample
        expected = w * raw  # eqs. 7-8
        loss, grad = grad_of(loss_fn, logits, labels)
        torch.testing.assert_close(grad.double(), expected / n, rtol=1e-5, atol=1e-7)
        ref = (w * F.binary_cross_entropy_with_logits(logits.double(), y, reduction="none")).sum() / n
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
        p_sum, n_sum = split_stats(expected.abs(), labels)
        pos_acc += p_sum  # eq. 9 accumulates the re-weighted gradients
        neg_acc += n_sum
    stats_pos, stats_neg = sync_stats(loss_fn)
    torch.testing.assert_close(stats_pos, pos_acc, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(stats_neg, neg_acc, rtol=1e-5, atol=1e-8)
    if neg:
        assert not torch.allclose(weights_seen[0], weights_seen[-1])


# ---------------------------------------------------------------------- ACSL
@pytest.mark.parametrize("objectness", [False, True])
def test_acsl_gradient_eq7(objectness):
    n_fg, n_bg = 40, 300
    logits, labels = make_batch(n=n_fg + n_bg, seed=4, scale=2.5, bg_frac=0.0)
    labels[n_fg:] = C
    n = len(labels)
    xi = 0.7
    loss_fn = ACSLLoss(C, xi=xi, class_groups=GROUPS, objectness=objectness)
    _, grad = grad_of(loss_fn, logits, labels)
    grad = grad * n
    p = torch.sigmoid(logits)
    fg = labels < C
    y = F.one_hot(labels, C + 1).float()
    w_fg = torch.where(y[fg] > 0, torch.ones_like(p[fg]), (p[fg] >= xi).float())
    if objectness:
        w_fg[:, C] = 1.0
    torch.testing.assert_close(grad[fg], torch.where(y[fg] > 0, p[fg] - 1, w_fg * p[fg]))  # eq. 7
    g_bg, p_bg = grad[~fg], p[~fg]
    torch.testing.assert_close(g_bg[:, C], p_bg[:, C] - 1)  # background task, target 1
    active = g_bg[:, :C] != 0
    torch.testing.assert_close(g_bg[:, :C], active.float() * p_bg[:, :C])
    for group, frac in ((0, 0.01), (1, 0.1), (2, 1.0)):
        cols = active[:, GROUPS == group]
        assert torch.equal(cols.all(1), cols.any(1))  # a sampled row suppresses the whole group
        assert int(cols.all(1).sum()) == int(n_bg * frac)


def test_acsl_without_groups_suppresses_every_class_on_background():
    logits, labels = make_batch(n=60, seed=5)
    _, grad = grad_of(ACSLLoss(C), logits, labels)
    bg = labels == C
    torch.testing.assert_close(grad[bg] * len(labels), torch.sigmoid(logits[bg]) - F.one_hot(labels[bg], C + 1))


# -------------------------------------------------------------------- Seesaw
def seesaw_reference(logits, labels, counts, p=0.8, q=2.0, eps=1e-2):
    """Seesaw eqs. 1-4 written directly: s_i = e^{z_i} / (sum_{j!=i} S_ij e^{z_j} + e^{z_i})."""
    n = len(labels)
    z = logits[:, :C]
    obj = F.binary_cross_entropy_with_logits(logits[:, C], (labels == C).float(), reduction="sum")
    total = obj
    sigma = F.softmax(z.detach(), 1)
    for i in range(n):
        k = int(labels[i])
        if k == C:
            continue
        nk = counts.clamp(min=1)
        m = torch.where(nk < nk[k], (nk / nk[k]) ** p, torch.ones_like(nk))  # eq. 3
        ratio = sigma[i] / sigma[i, k].clamp(min=eps)
        comp = torch.where(ratio > 1, ratio**q, torch.ones_like(ratio))  # eq. 4
        s = (m * comp).float()
        s[k] = 1.0
        denom = (s * torch.exp(z[i])).sum()
        total = total - (z[i, k] - torch.log(denom))
    return total / n


def test_seesaw_matches_formula_over_iterations():
    loss_fn = SeesawLoss(C)
    counts = torch.zeros(C, dtype=torch.float64)
    for it in range(3):
        logits, labels = make_batch(n=30, seed=20 + it, scale=1.5)
        labels[labels == 0] = 1 if it else 0  # unequal class counts
        counts += torch.bincount(labels, minlength=C + 1)[:C].double()
        loss, grad = grad_of(loss_fn, logits, labels)
        z = logits.clone().requires_grad_()
        ref = seesaw_reference(z, labels, counts)
        ref.backward()
        torch.testing.assert_close(loss, ref.detach())
        torch.testing.assert_close(grad, z.grad)
        assert torch.equal(loss_fn.cum_samples, counts)


# ------------------------------------------------- statistics, common checks
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_statistics_are_per_sample_and_scale_free(name):
    logits, labels = make_batch(n=50, seed=7, scale=3.0)
    n = len(labels)
    _, grad = grad_of(FACTORIES[name](), logits, labels)
    exp_pos, exp_neg = split_stats(grad.abs() * n, labels)
    for scale in (7.0, 1.0 / 3.0):
        loss_fn = FACTORIES[name]()
        grad_of(loss_fn, logits, labels, scale=scale)
        pos, neg = sync_stats(loss_fn)
        torch.testing.assert_close(pos, exp_pos, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(neg, exp_neg, rtol=1e-5, atol=1e-8)
    assert float(exp_pos.sum()) > 0 and float(exp_neg.sum()) > 0


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_extreme_logits_finite_fp32_and_bf16_autocast(name):
    logits, labels = make_batch(n=32, seed=8)
    big = torch.where(logits > 0, 100.0, -100.0)
    loss, grad = grad_of(FACTORIES[name](), big, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    x = torch.eye(32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = x @ big.to(torch.bfloat16)
        assert z.dtype == torch.bfloat16
        loss_fn = FACTORIES[name]()
        loss = loss_fn(z, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    if getattr(loss_fn, "grad_stats", None) is not None:
        assert all(torch.isfinite(t).all() for t in sync_stats(loss_fn))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("bad", [-1, C + 1])
def test_bad_labels_raise(name, bad):
    logits, labels = make_batch(n=8)
    labels[3] = bad
    with pytest.raises(ValueError, match=f"0..{C}"):
        FACTORIES[name]()(logits, labels)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_empty_batch(name):
    z = torch.zeros(0, C + 1, requires_grad=True)
    loss = FACTORIES[name]()(z, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and z.grad.shape == z.shape


def test_get_probs():
    logits, _ = make_batch(n=10)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(SoftmaxCELoss(C).get_probs(logits), F.softmax(logits, 1))
    torch.testing.assert_close(SigmoidBCELoss(C).get_probs(logits)[:, :C], p[:, :C])
    obj = EQLv2Loss(C).get_probs(logits)
    torch.testing.assert_close(obj[:, :C], p[:, :C] * (1 - p[:, C:]))  # EQLv2 eq. 10
    torch.testing.assert_close(obj[:, C], p[:, C])
    s = SeesawLoss(C).get_probs(logits)
    torch.testing.assert_close(s.sum(1), torch.ones(10))
    for loss_fn in FACTORIES.values():
        out = loss_fn().get_probs(logits)
        assert out.shape == logits.shape and bool(((out >= 0) & (out <= 1)).all())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip(name):
    a = FACTORIES[name]()
    for it in range(2):
        grad_of(a, *make_batch(n=200, seed=30 + it, bg_frac=0.6))
    if getattr(a, "grad_stats", None) is not None:
        a.grad_stats.synchronize()
    b = FACTORIES[name]()
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    batch = make_batch(n=200, seed=40, bg_frac=0.6)  # ACSL samples background rows
    loss_a, grad_a = grad_of(a, *batch)
    loss_b, grad_b = grad_of(b, *batch)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


# --------------------------------------------------------------- distributed
DIST_LOSSES = ("softmax", "sigmoid_obj", "eql", "eqlv2", "seesaw")


def _run_iterations(rank, world):
    """3 iterations of every loss on this rank's share of each batch; returns its state."""
    losses = {name: FACTORIES[name]() for name in DIST_LOSSES}
    trace = {}
    for it in range(3):
        logits, labels = make_batch(n=40, seed=50 + it, scale=3.0)
        share = slice(rank * 40 // world, (rank + 1) * 40 // world)
        for name, loss_fn in losses.items():
            grad_of(loss_fn, logits[share], labels[share])
            if name == "eqlv2":
                trace[f"eqlv2_r{it}"] = loss_fn.class_weights()[1]
            else:
                loss_fn.grad_stats.synchronize()
    for name, loss_fn in losses.items():
        loss_fn.grad_stats.synchronize()
        trace[f"{name}_pos"], trace[f"{name}_neg"] = loss_fn.grad_stats.pos_grad, loss_fn.grad_stats.neg_grad
    trace["seesaw_counts"] = losses["seesaw"].cum_samples
    return trace


def _dist_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_run_iterations(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        traces = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    single = _run_iterations(0, 1)
    for key, value in single.items():
        for trace in traces:
            torch.testing.assert_close(trace[key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert not math.isclose(float(single["eqlv2_r2"].min()), 1.0)
