"""Dense (one-stage) classification losses against the papers' closed forms.

Shape shorthand: M dense samples, C foreground classes, logits [M, C]; label C
is background (all-zero target). References are written from the equations
(focal loss; EFL eqs. 3-5, appendix eqs. 6-7; EQLv2 eqs. 5-6) in float64.
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

import ltdet.losses.focal_family as focal_family
from ltdet.losses import EFLLoss, EQFLLoss, EQLv2FocalLoss, FocalLoss

C = 7
ALPHA, GAMMA_B, SCALE = 0.25, 2.0, 8.0


def make_batch(m=60, seed=0, scale=3.0, dtype=torch.float64):
    """Random logits[M, C] (shifted negative, as dense heads), labels[M] with ~1/3 background, scores[M]."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, C, generator=gen, dtype=dtype) * scale - 1.0
    labels = torch.randint(0, C, (m,), generator=gen)
    labels[torch.rand(m, generator=gen) < 0.35] = C
    scores = torch.rand(m, generator=gen, dtype=dtype)
    return logits, labels, scores


def onehot(labels):
    return F.one_hot(labels, C + 1)[:, :C].double()


def call(loss_fn, logits, labels, scores):
    return loss_fn(logits, labels, scores) if isinstance(loss_fn, EQFLLoss) else loss_fn(logits, labels)


def loss_and_grad(loss_fn, logits, labels, scores=None, factor=1.0):
    logits = logits.detach().clone().requires_grad_(True)
    loss = call(loss_fn, logits, labels, scores)
    (loss * factor).backward()
    return loss.detach(), logits.grad


def focal_closed_form(x, labels, gamma, weight_t):
    """w_t (2y - 1) (1 - p_t)^γ (γ p_t log p_t + p_t - 1) (EFL appendix eqs. 6-7), α_t inside w_t."""
    y = onehot(labels)
    x_t = (2 * y - 1) * x
    p_t, log_p_t = torch.sigmoid(x_t), F.logsigmoid(x_t)
    return weight_t * (2 * y - 1) * torch.exp(gamma * F.logsigmoid(-x_t)) * (gamma * p_t * log_p_t + p_t - 1)


def focal_reference_loss(x, labels, gamma, weight_t):
    """-w_t (1 - p_t)^γ log p_t summed (EFL eqs. 1, 4)."""
    x_t = (2 * onehot(labels) - 1) * x
    return -(weight_t * torch.exp(gamma * F.logsigmoid(-x_t)) * F.logsigmoid(x_t)).sum()


def alpha_t(labels, alpha=ALPHA):
    y = onehot(labels)
    return alpha * y + (1 - alpha) * (1 - y)


def split_stats(grad, labels):
    """Per-class (pos, neg) sums of |grad| (positives = gt column)."""
    y = onehot(labels)
    return (grad.abs() * y).sum(0), (grad.abs() * (1 - y)).sum(0)


def efl_factors(pos, neg, focusing=True, weighting=True):
    """γ^j and w^j (EFL eqs. 3-4) from accumulated statistics, g = 1 where nothing was seen."""
    g = torch.where(neg > 0, pos / (neg + 1e-10), torch.ones_like(pos)).clamp(0, 1)
    gamma = GAMMA_B + SCALE * (1 - g)
    weight = gamma / GAMMA_B if weighting else torch.ones_like(gamma)
    return (gamma if focusing else torch.full_like(gamma, GAMMA_B)), weight


@pytest.fixture(params=[1 << 17, 5], ids=["one_chunk", "row_chunks"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(focal_family, "_CHUNK_ELEMENTS", request.param)


# ------------------------------------------------------------ closed forms
def test_focal_matches_torchvision_and_closed_form(chunk):
    logits, labels, _ = make_batch()
    loss_fn = FocalLoss(C)
    loss, grad = loss_and_grad(loss_fn, logits, labels)
    x = logits.clone().requires_grad_(True)
    ref = sigmoid_focal_loss(x, onehot(labels), alpha=ALPHA, gamma=2.0, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, x.grad, rtol=1e-10, atol=1e-14)
    closed = focal_closed_form(logits, labels, 2.0, alpha_t(labels))
    torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-14)
    loss_fn.grad_stats.synchronize()
    pos, neg = split_stats(closed, labels)
    torch.testing.assert_close(loss_fn.grad_stats.pos_grad, pos, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(loss_fn.grad_stats.neg_grad, neg, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("focusing,weighting", [(True, True), (True, False), (False, True), (False, False)])
def test_efl_eq4_eq6_over_iterations(chunk, focusing, weighting):
    """EFL loss (eq. 4) and gradient (eq. 6) over iterations whose statistics change γ^j."""
    loss_fn = EFLLoss(C, focusing_factor=focusing, weighting_factor=weighting)
    pos = torch.zeros(C, dtype=torch.float64)
    neg = torch.zeros(C, dtype=torch.float64)
    for it in range(4):
        logits, labels, _ = make_batch(seed=10 + it)
        gamma, weight = efl_factors(pos, neg, focusing, weighting)
        if it > 0 and (focusing or weighting):
            assert float((gamma * weight).std()) > 0.1
        loss, grad = loss_and_grad(loss_fn, logits, labels)
        w_t = alpha_t(labels) * weight
        torch.testing.assert_close(loss, focal_reference_loss(logits, labels, gamma, w_t), rtol=1e-11, atol=0)
        closed = focal_closed_form(logits, labels, gamma, w_t)
        torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-14)
        x = logits.clone().requires_grad_(True)
        focal_reference_loss(x, labels, gamma, w_t).backward()
        torch.testing.assert_close(x.grad, closed, rtol=1e-10, atol=1e-14)
        p, n = split_stats(closed, labels)
        pos, neg = pos + p, neg + n
        loss_fn.grad_stats.synchronize()
        torch.testing.assert_close(loss_fn.grad_stats.pos_grad, pos, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(loss_fn.grad_stats.neg_grad, neg, rtol=1e-10, atol=1e-14)


def test_efl_with_all_g_one_is_focal_exactly():
    logits, labels, _ = make_batch(seed=3)
    focal = loss_and_grad(FocalLoss(C), logits, labels)
    fresh = EFLLoss(C)
    assert torch.equal(loss_and_grad(fresh, logits, labels)[0], focal[0])
    saturated = EFLLoss(C)
    saturated.grad_stats.pos_grad.fill_(3.0)
    saturated.grad_stats.neg_grad.fill_(2.0)
    for got, want in zip(loss_and_grad(saturated, logits, labels), focal):
        assert torch.equal(got, want)
    both_off = EFLLoss(C, focusing_factor=False, weighting_factor=False)
    both_off.grad_stats.neg_grad.fill_(1.0)
    for got, want in zip(loss_and_grad(both_off, logits, labels), focal):
        assert torch.equal(got, want)


def test_eqfl_matches_eq5_over_iterations(chunk):
    """EQFL (eq. 5) with autograd through |y' - p|^γ, factors constant."""
    loss_fn = EQFLLoss(C)
    pos = torch.zeros(C, dtype=torch.float64)
    neg = torch.zeros(C, dtype=torch.float64)
    for it in range(3):
        logits, labels, scores = make_batch(seed=20 + it)
        gamma, weight = efl_factors(pos, neg)
        loss, grad = loss_and_grad(loss_fn, logits, labels, scores)
        x = logits.clone().requires_grad_(True)
        target = onehot(labels) * scores[:, None]
        bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        ref = (weight * (target - torch.sigmoid(x)).abs().pow(gamma) * bce).sum()
        ref.backward()
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-11, atol=0)
        torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-13)
        p, n = split_stats(x.grad, labels)
        pos, neg = pos + p, neg + n
        loss_fn.grad_stats.synchronize()
        torch.testing.assert_close(loss_fn.grad_stats.pos_grad, pos, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(loss_fn.grad_stats.neg_grad, neg, rtol=1e-9, atol=1e-13)
    assert float(gamma.std()) > 0.1


def test_eqlv2_focal_matches_eq7_over_iterations(chunk):
    """EQLv2 weights (EQLv2 eqs. 5-6, initial ratio 100) on focal loss, gradient EFL eq. 7."""
    loss_fn = EQLv2FocalLoss(C)
    pos = torch.zeros(C, dtype=torch.float64)
    neg = torch.zeros(C, dtype=torch.float64)
    for it in range(3):
        logits, labels, _ = make_batch(seed=30 + it)
        ratio = torch.where(neg > 0, pos / (neg + 1e-10), torch.full_like(pos, 100.0))
        r = torch.sigmoid(12.0 * (ratio - 0.8))
        q = 1 + 4.0 * (1 - r)
        y = onehot(labels)
        w_t = alpha_t(labels) * (q * y + r * (1 - y))
        loss, grad = loss_and_grad(loss_fn, logits, labels)
        torch.testing.assert_close(loss, focal_reference_loss(logits, labels, 2.0, w_t), rtol=1e-11, atol=0)
        closed = focal_closed_form(logits, labels, 2.0, w_t)
        torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-14)
        p, n = split_stats(closed, labels)
        pos, neg = pos + p, neg + n
        loss_fn.grad_stats.synchronize()
        torch.testing.assert_close(loss_fn.grad_stats.pos_grad, pos, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(loss_fn.grad_stats.neg_grad, neg, rtol=1e-10, atol=1e-14)
    assert float(q.max()) > 1.5


# --------------------------------------------------------------- statistics
FACTORIES = {
    "focal": lambda: FocalLoss(C),
    "efl": lambda: EFLLoss(C),
    "eqfl": lambda: EQFLLoss(C),
    "eqlv2_focal": lambda: EQLv2FocalLoss(C),
}


@pytest.mark.parametrize("factor", [7.0, 1.0 / 13.0], ids=["loss_weight_7", "normalizer_13"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_statistics_ignore_loss_weight_and_normalizer(name, factor):
    plain, scaled = FACTORIES[name](), FACTORIES[name]()
    for it in range(2):
        logits, labels, scores = make_batch(seed=40 + it)
        _, g_plain = loss_and_grad(plain, logits, labels, scores)
        _, g_scaled = loss_and_grad(scaled, logits, labels, scores, factor=factor)
        torch.testing.assert_close(g_scaled, g_plain * factor, rtol=1e-12, atol=1e-15)
    for loss_fn in (plain, scaled):
        loss_fn.grad_stats.synchronize()
    for key in ("pos_grad", "neg_grad"):
        want = getattr(plain.grad_stats, key)
        torch.testing.assert_close(getattr(scaled.grad_stats, key), want, rtol=1e-12, atol=0)
    assert float(plain.grad_stats.neg_grad.min()) > 0


@pytest.mark.parametrize("name", list(FACTORIES))
def test_no_statistics_without_backward(name):
    loss_fn = FACTORIES[name]()
    logits, labels, scores = make_batch()
    with torch.no_grad():
        call(loss_fn, logits, labels, scores)
    call(loss_fn, logits, labels, scores)
    loss_fn.grad_stats.synchronize()
    assert float(loss_fn.grad_stats.neg_grad.abs().sum()) == 0.0


def test_focal_without_statistics():
    loss_fn = FocalLoss(C, collect_stats=False)
    assert loss_fn.grad_stats is None
    logits, labels, _ = make_batch()
    loss, _ = loss_and_grad(loss_fn, logits, labels)
    assert torch.equal(loss, loss_and_grad(FocalLoss(C), logits, labels)[0])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip(name):
    trained = FACTORIES[name]()
    for it in range(2):
        logits, labels, scores = make_batch(seed=60 + it)
        loss_and_grad(trained, logits, labels, scores)
    trained.grad_stats.synchronize()
    state = trained.state_dict()
    assert {"grad_stats.pos_grad", "grad_stats.neg_grad"} <= set(state)
    restored = FACTORIES[name]()
    restored.load_state_dict(state)
    for key in ("pos_grad", "neg_grad"):
        assert torch.equal(getattr(restored.grad_stats, key), getattr(trained.grad_stats, key))
    logits, labels, scores = make_batch(seed=62)
    expected = loss_and_grad(trained, logits, labels, scores)
    for got, want in zip(loss_and_grad(restored, logits, labels, scores), expected):
        assert torch.equal(got, want)


# ---------------------------------------------------------- numerics, input
def extreme_batch(dtype=torch.float32):
    """Every class has positives at ±100 and negatives at ±100, ±20, ±16.6, 0."""
    values = torch.tensor([-100.0, -20.0, -16.6, 0.0, 16.6, 20.0, 100.0], dtype=dtype)
    rows = torch.arange(7 * (C + 1))
    logits = values[(rows[:, None] + torch.arange(C)) % 7]
    labels = rows % (C + 1)
    scores = torch.linspace(0, 1, logits.shape[0], dtype=dtype)
    return logits, labels, scores


def loaded(name):
    """A loss whose statistics give every class a different γ^j / weight."""
    loss_fn = FACTORIES[name]()
    loss_fn.grad_stats.pos_grad.copy_(torch.linspace(0.0, 2.0, C, dtype=torch.float64))
    loss_fn.grad_stats.neg_grad.fill_(1.0)
    return loss_fn


@pytest.mark.parametrize("name", list(FACTORIES))
def test_extreme_logits_float32(name):
    logits, labels, scores = extreme_batch()
    loss, grad = loss_and_grad(loaded(name), logits, labels, scores)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref_loss, ref_grad = loss_and_grad(loaded(name), logits.double(), labels, scores.double())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_extreme_logits_bf16_autocast(name):
    logits, labels, scores = extreme_batch()
    head = torch.nn.Linear(C, C, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(C))
    loss_fn = loaded(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(logits)
        assert out.dtype == torch.bfloat16
        loss = call(loss_fn, out, labels, scores)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()
    loss_fn.grad_stats.synchronize()
    assert torch.isfinite(loss_fn.grad_stats.neg_grad).all() and float(loss_fn.grad_stats.neg_grad.sum()) > 0


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("bad", [-1, C + 1])
def test_labels_out_of_range(name, bad):
    logits, labels, scores = make_batch()
    labels[3] = bad
    with pytest.raises(ValueError, match=f"0..{C}"):
        call(FACTORIES[name](), logits, labels, scores)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_empty_batch(name):
    logits = torch.zeros(0, C, requires_grad=True)
    loss = call(FACTORIES[name](), logits, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad.shape == (0, C)


def test_wrong_shapes_and_scores():
    logits, labels, scores = make_batch()
    with pytest.raises(ValueError):
        EFLLoss(C + 1)(logits, labels)
    with pytest.raises(ValueError):
        EQFLLoss(C)(logits, labels, scores[:-1])
    with pytest.raises(ValueError):
        EQFLLoss(C)(logits, labels, scores + 1.5)


def test_get_probs_is_sigmoid():
    logits, _, _ = make_batch()
    for make in FACTORIES.values():
        torch.testing.assert_close(make().get_probs(logits), torch.sigmoid(logits.float()))


# ---------------------------------------------------------------- distributed
DIST_LOSSES = ("efl", "eqfl", "eqlv2_focal")


def _run_iterations(rank, world):
    """3 iterations of each loss on this rank's share of every batch; returns its trace."""
    losses = {name: FACTORIES[name]() for name in DIST_LOSSES}
    trace = {}
    for it in range(3):
        logits, labels, scores = make_batch(m=40, seed=70 + it)
        share = slice(rank * 40 // world, (rank + 1) * 40 // world)
        for name, loss_fn in losses.items():
            loss, grad = loss_and_grad(loss_fn, logits[share], labels[share], scores[share])
            if world > 1:
                dist.all_reduce(loss)
            trace[f"{name}_loss{it}"] = loss
            trace[f"{name}_grad{it}"] = grad
    for name, loss_fn in losses.items():
        loss_fn.grad_stats.synchronize()
        trace[f"{name}_pos"], trace[f"{name}_neg"] = loss_fn.grad_stats.pos_grad, loss_fn.grad_stats.neg_grad
    return trace


def _dist_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
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
        if "_grad" in key:
            value = torch.cat([traces[0][key], traces[1][key]])
            torch.testing.assert_close(value, single[key], rtol=1e-10, atol=1e-14, msg=key)
            continue
        for trace in traces:
            torch.testing.assert_close(trace[key], value, rtol=1e-10, atol=1e-14, msg=key)
