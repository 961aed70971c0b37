"""Decoupled training helpers (LTDET.TRAIN_ONLY / REINIT) and full-model gradient clipping."""
import pytest
import torch
from torch import nn

import ltdet  # noqa: F401
from detectron2.config import get_cfg

from ltdet import add_ltdet_config
from ltdet.engine.decoupled import restore_parameters, snapshot_parameters, train_only
from ltdet.engine.optimizer import build_optimizer


def toy():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "backbone": nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5)),
        "head": nn.ModuleDict({"norm": nn.BatchNorm1d(8), "cls_score": nn.Linear(8, 3), "drop": nn.Dropout(0.5)}),
    })


def forward(model, x):
    h = model["backbone"](x)
    return model["head"]["cls_score"](model["head"]["drop"](model["head"]["norm"](h)))


def test_train_only_freezes_the_rest_and_its_leaves_stay_in_eval_mode():
    model = toy()
    trained = train_only(model, [r"cls_score\."])
    assert trained == ["head.cls_score.bias", "head.cls_score.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.cls_score.weight", "head.cls_score.bias"]
    bn = model["backbone"][1]
    stats = bn.running_mean.clone()
    model.train()
    x = torch.randn(16, 4)
    forward(model, x)
    assert torch.equal(bn.running_mean, stats), "frozen BatchNorm statistics do not move"
    assert torch.equal(model["backbone"](x), model["backbone"](x)), "frozen Dropout is off: the frozen part is deterministic"
    assert model["head"]["drop"].training, "a parameter-free leaf of a trained module keeps training (dropout before the classifier)"
    assert not bn.training and not model["head"]["norm"].training  # frozen BN beside the trained classifier too
    assert model["head"].training, "non-leaf modules keep their training behaviour"
    with pytest.raises(ValueError, match="LTDET.TRAIN_ONLY pattern 'nothing' matches no parameter"):
        train_only(toy(), ["nothing"])


def test_reinit_keeps_the_fresh_values():
    model = toy()
    fresh = snapshot_parameters(model, [r"cls_score"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "loading trained weights"
    restore_parameters(model, fresh)
    assert torch.equal(model["head"]["cls_score"].weight, fresh["head.cls_score.weight"])
    assert not torch.equal(model["backbone"][0].weight, toy()["backbone"][0].weight)


def _grads_after_step(clip_type, value=1.0):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_type, value
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    optimizer = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.ones(2, 4) * 10).sum() * 100).backward()
    optimizer.step()
    return [(b - p.detach()) for b, p in zip(before, model.parameters())]  # lr 1: the applied gradient


def test_full_model_clipping_bounds_the_norm_of_all_gradients_together():
    full = _grads_after_step("full_model")
    per_param = _grads_after_step("norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in full]))
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert all(torch.linalg.vector_norm(g) <= 1.0 + 1e-5 for g in per_param)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in per_param]))
    assert total > 1.5, "detectron2's 'norm' clips each parameter: the total stays above the bound"
    with pytest.raises(ValueError, match="CLIP_TYPE = 'global'"):
        _grads_after_step("global")
