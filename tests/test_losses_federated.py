"""Federated loss (Zhou et al. 2021; CenterNet2 / detectron2 main) against its definition.

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1].
"""
import pytest
import torch
import torch.nn.functional as F

from ltdet.losses import EQLv2Loss, FederatedEQLv2Loss, FederatedLoss, SigmoidBCELoss
from ltdet.losses.federated import federated_classes

C = 12
FREQ = torch.tensor([4e-1, 2e-1, 1e-1, 5e-2, 2e-2, 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 1e-4, 0.0], dtype=torch.float64)


def make_batch(n=40, seed=0, present=(0, 3), bg_frac=0.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C + 1, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor(present)[torch.randint(0, len(present), (n,), generator=g)]
    labels[torch.rand(n, generator=g) < bg_frac] = C
    return logits, labels


def reference_fed_loss(logits, labels, mask):
    """detectron2 main's sigmoid_cross_entropy_loss with use_fed_loss, for a given class set."""
    n = logits.shape[0]
    target = F.one_hot(labels, C + 1)[:, :C].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits[:, :C], target, reduction="none")
    return (bce * mask.to(logits.dtype).view(1, C)).sum() / n


def test_class_set_is_present_plus_sampled_up_to_the_size():
    labels = torch.tensor([0, 3, 3, C, C])
    for seed in range(20):
        torch.manual_seed(seed)
        mask = federated_classes(labels, 6, FREQ.pow(0.5))
        assert mask[0] and mask[3]
        # the background label counts towards the 6 (CenterNet2 / detectron2): 2 present + bg + 3 sampled
        assert int(mask.sum()) == 5
        assert not mask[C - 1]  # image count 0: never sampled
    # more present classes than the size: exactly the present ones
    many = torch.arange(C - 1)
    assert torch.equal(federated_classes(many, 4, FREQ), torch.arange(C) < C - 1)
    # not enough classes with weight > 0: all of them, no error
    assert int(federated_classes(torch.tensor([C]), 100, FREQ).sum()) == C - 1


def test_sampling_probability_is_image_count_to_the_power():
    """One draw per call: P(class j) = w_j / sum of the absent classes' w (w = image_count^0.5)."""
    weights = FREQ.pow(0.5)
    labels = torch.tensor([0, C])  # class 0 present, background counts: one draw with size 3
    torch.manual_seed(0)
    trials = 20000
    counts = torch.zeros(C)
    for _ in range(trials):
        counts += federated_classes(labels, 3, weights).float()
    assert counts[0] == trials
    expected = weights.clone()
    expected[0] = 0
    expected = expected / expected.sum()
    observed = counts.double() / trials
    observed[0] = 0
    torch.testing.assert_close(observed, expected, atol=0.012, rtol=0)


def test_loss_gradient_and_statistics_on_the_sampled_columns_only():
    logits, labels = make_batch()
    loss_fn = FederatedLoss(C, FREQ, num_fed_classes=6)
    torch.manual_seed(3)
    mask = loss_fn.sampled_classes(labels)
    assert 2 < int(mask.sum()) < C
    torch.manual_seed(3)
    z = logits.clone().requires_grad_()
    loss = loss_fn(z, labels)
    loss.backward()
    z_ref = logits.clone().requires_grad_()
    reference = reference_fed_loss(z_ref, labels, mask)
    reference.backward()
    torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), z_ref.grad, rtol=1e-5, atol=1e-7)
    n = len(labels)
    # closed form: (p - y) / N on the sampled columns, exactly 0 elsewhere and on the background column
    p, y = torch.sigmoid(logits[:, :C]), F.one_hot(labels, C + 1)[:, :C].double()
    torch.testing.assert_close(z.grad[:, :C].double(), (p - y) * mask.double() / n, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(z.grad[:, C]) == 0 and torch.count_nonzero(z.grad[:, :C][:, ~mask]) == 0
    loss_fn.grad_stats.synchronize()
    pos_ref = ((1 - p) * y).sum(0) * mask.double()
    neg_ref = (p * (1 - y)).sum(0) * mask.double()
    torch.testing.assert_close(loss_fn.grad_stats.pos_grad, pos_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss_fn.grad_stats.neg_grad, neg_ref, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(loss_fn.grad_stats.neg_grad[~mask]) == 0


def test_all_classes_sampled_is_sigmoid_bce_and_eqlv2():
    """With the set covering every class the federated losses are their full-column counterparts."""
    logits, labels = make_batch(seed=1, present=(0, 2, 5))
    freq = FREQ.clone()
    freq[-1] = 1e-5
    fed, bce = FederatedLoss(C, freq, num_fed_classes=C + 1), SigmoidBCELoss(C)
    torch.testing.assert_close(fed(logits, labels), bce(logits, labels), rtol=1e-7, atol=0)
    fed2, eqlv2 = FederatedEQLv2Loss(C, freq, num_fed_classes=C + 1), EQLv2Loss(C, objectness=False)
    stats = (torch.linspace(0.05, 2.0, C, dtype=torch.float64), torch.ones(C, dtype=torch.float64))
    for loss_fn in (fed2, eqlv2):
        loss_fn.grad_stats.pos_grad.copy_(stats[0])
        loss_fn.grad_stats.neg_grad.copy_(stats[1])
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    l1, l2 = fed2(z1, labels), eqlv2(z2, labels)
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=0)
    (l1 + l2).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-6, atol=1e-9)


def test_federated_eqlv2_weights_only_the_sampled_columns():
    logits, labels = make_batch(seed=2)
    loss_fn = FederatedEQLv2Loss(C, FREQ, num_fed_classes=6)
    loss_fn.grad_stats.pos_grad.copy_(torch.linspace(0.05, 2.0, C, dtype=torch.float64))
    loss_fn.grad_stats.neg_grad.fill_(1.0)
    q, r = loss_fn.weights(loss_fn.grad_stats)
    torch.manual_seed(5)
    mask = loss_fn.sampled_classes(labels)
    torch.manual_seed(5)
    z = logits.clone().requires_grad_()
    loss_fn(z, labels).backward()
    p, y = torch.sigmoid(logits[:, :C]), F.one_hot(labels, C + 1)[:, :C].double()
    expected = (q * y * (p - 1) + r * (1 - y) * p) * mask.double() / len(labels)  # EQLv2 eqs. 7-8 on S
    torch.testing.assert_close(z.grad[:, :C].double(), expected, rtol=1e-5, atol=1e-7)


def test_get_probs_and_hyper_parameters():
    logits, _ = make_batch(n=5)
    probs = FederatedLoss(C, FREQ).get_probs(logits)
    torch.testing.assert_close(probs[:, :C], torch.sigmoid(logits[:, :C]).float())
    assert torch.count_nonzero(probs[:, C]) == 0
    with pytest.raises(ValueError, match="num_fed_classes"):
        FederatedLoss(C, FREQ, num_fed_classes=0)
    with pytest.raises(ValueError, match="freq_weight_power"):
        FederatedLoss(C, FREQ, freq_weight_power=-1)
    with pytest.raises(ValueError, match="image_freq has"):
        FederatedLoss(C, FREQ[:-1])
