"""The loss/head contract: every config key is honoured or rejected, never silently ignored.

Each case below used to build a model that ran something other than what its
saved config.yaml records.
"""
import glob
import os
import re

import pytest
import torch

import ltdet  # noqa: F401  (registers losses, models, datasets)
from detectron2.config import get_cfg

from ltdet import add_ltdet_config
from ltdet.config import ltdet_default
from ltdet.losses import LOSS_REGISTRY, ClassificationLoss, EQLv2FocalLoss, build_classification_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 5
PRIORS = {"image_freq": torch.linspace(1e-4, 0.3, C, dtype=torch.float64), "class_groups": torch.tensor([0, 0, 1, 1, 2])}


def cfg_for(name, **overrides):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.LTDET.CLS_LOSS.NAME = name
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def build(name, **overrides):
    return build_classification_loss(cfg_for(name, **overrides), C, priors=PRIORS)


# ------------------------------------------------------------------ registry
def test_registry_lists_every_loss_by_family():
    assert LOSS_REGISTRY.names("two_stage") == (
        "softmax", "sigmoid", "eql", "eqlv2", "acsl", "seesaw", "federated", "federated_eqlv2", "ecm")
    assert LOSS_REGISTRY.names("dense") == ("focal", "efl", "eqfl", "eqlv2_focal")
    for name, cls in LOSS_REGISTRY:
        assert issubclass(cls, ClassificationLoss) and cls.name == name
        for arg, key in cls.config_keys.items():
            ltdet_default(key)  # every declared key exists in ltdet/config.py


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_every_loss_builds_from_the_defaults_and_declares_its_contract(name):
    loss = build(name)
    assert loss.family in ("two_stage", "dense") and loss.activation in ("softmax", "sigmoid")
    assert loss.objectness in loss.objectness_choices
    assert set(loss.extra_inputs) <= {"image_label_mask", "scores"}
    assert (loss.grad_stats is not None) or not loss.requires_grad_stats


def test_the_wrong_family_is_rejected():
    with pytest.raises(ValueError, match="not a dense loss"):
        build_classification_loss(cfg_for("softmax"), C, family="dense")
    with pytest.raises(ValueError, match="not a two-stage loss"):
        build_classification_loss(cfg_for("efl"), C, family="two_stage")
    with pytest.raises(ValueError, match="choose one of"):
        build("no_such_loss")


# --------------------------------------------------- the four cases
def test_objectness_is_honoured_or_rejected():
    with pytest.raises(ValueError, match=r"OBJECTNESS = 'on' is not supported by loss 'softmax'"):
        build("softmax", **{"LTDET.CLS_LOSS.OBJECTNESS": "on"})
    with pytest.raises(ValueError, match=r"OBJECTNESS = 'off' is not supported by loss 'seesaw'"):
        build("seesaw", **{"LTDET.CLS_LOSS.OBJECTNESS": "off"})
    with pytest.raises(ValueError, match=r"OBJECTNESS = 'on' is not supported by loss 'focal'"):
        build("focal", **{"LTDET.CLS_LOSS.OBJECTNESS": "on"})
    with pytest.raises(ValueError, match=r"OBJECTNESS = 'on' is not supported by loss 'federated'"):
        build("federated", **{"LTDET.CLS_LOSS.OBJECTNESS": "on"})
    for name in ("sigmoid", "eql", "eqlv2", "acsl"):
        for value, expected in (("on", True), ("off", False)):
            assert build(name, **{"LTDET.CLS_LOSS.OBJECTNESS": value}).objectness is expected
    assert build("eqlv2").objectness and not build("sigmoid").objectness and build("seesaw").objectness


def test_eqlv2_focal_honours_the_table2_switches():
    loss = build("eqlv2_focal", **{"LTDET.EQLV2.POS_REWEIGHT": False, "LTDET.EQLV2.NEG_REWEIGHT": False})
    assert isinstance(loss, EQLv2FocalLoss)
    loss.grad_stats.pos_grad.copy_(torch.tensor([0.1, 0.5, 1.0, 2.0, 0.0], dtype=torch.float64))
    loss.grad_stats.neg_grad.fill_(1.0)
    q, r = loss.class_weights()
    assert torch.equal(q, torch.ones(C, dtype=q.dtype)) and torch.equal(r, torch.ones(C, dtype=r.dtype))
    # with both off, EQLv2-focal is focal loss exactly
    logits, labels = torch.randn(30, C, dtype=torch.float64) * 3, torch.randint(0, C + 1, (30,))
    focal = build("focal")
    assert torch.allclose(loss(logits, labels), focal(logits, labels), rtol=1e-12, atol=0)
    pos_only = build("eqlv2_focal", **{"LTDET.EQLV2.NEG_REWEIGHT": False})
    pos_only.grad_stats.pos_grad.copy_(loss.grad_stats.pos_grad)
    pos_only.grad_stats.neg_grad.fill_(1.0)
    q, r = pos_only.class_weights()
    assert bool((q > 1).any()) and torch.equal(r, torch.ones(C, dtype=r.dtype))


def test_focal_alpha_is_rejected_for_eqfl():
    """EQFL (EFL eq. 5) has no α: today's loss was bit-identical for α = 0.25, 0.5 and -1."""
    with pytest.raises(ValueError, match=r"LTDET.FOCAL.ALPHA = 0.5 is not used by loss 'eqfl'.*LTDET.FOCAL.GAMMA"):
        build("eqfl", **{"LTDET.FOCAL.ALPHA": 0.5})
    assert build("eqfl", **{"LTDET.FOCAL.GAMMA": 1.5}).gamma_b == 1.5


@pytest.mark.parametrize("name", ["eqlv2", "federated_eqlv2", "efl", "eqfl", "eqlv2_focal"])
def test_statistics_cannot_be_switched_off_for_losses_that_need_them(name):
    with pytest.raises(ValueError, match=r"GRAD_STATS.ENABLED = False.*" + name):
        build(name, **{"LTDET.GRAD_STATS.ENABLED": False})


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "eql", "acsl", "seesaw", "federated", "ecm", "focal"])
def test_statistics_switch_is_honoured_by_the_others(name):
    assert build(name, **{"LTDET.GRAD_STATS.ENABLED": False}).grad_stats is None
    assert build(name).grad_stats is not None


# ------------------------------------------------------------- general rule
def _namespace_keys(namespace):
    cfg = cfg_for("softmax")
    node = cfg
    for part in namespace.split("."):
        node = node[part]
    return [f"{namespace}.{leaf}" for leaf in node]


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return {"step": "exp", "exp": "step"}.get(value, value + "_x")
    return value * 0.5 if value else 0.5


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_unused_keys_of_the_namespaces_a_loss_reads_are_rejected(name):
    """Every key of a namespace the loss reads: used (the build honours it) or rejected."""
    cls = LOSS_REGISTRY.get(name)
    used = set(cls.config_keys.values())
    namespaces = {k.rpartition(".")[0] for k in used}
    for key in sorted(k for ns in namespaces for k in _namespace_keys(ns)):
        if key in used:
            continue
        with pytest.raises(ValueError, match=re.escape(key) + ".*not used by loss"):
            build(name, **{key: _changed(ltdet_default(key))})


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_every_used_key_reaches_the_constructor(name, monkeypatch):
    cls = LOSS_REGISTRY.get(name)
    seen = {}
    original = cls.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", spy)
    overrides = {}
    for arg, key in cls.config_keys.items():
        default = ltdet_default(key)
        overrides[key] = default if key == "LTDET.EQL.THRESHOLD_FN" else _changed(default)
    if "LTDET.FOCAL.ALPHA" in overrides:
        overrides["LTDET.FOCAL.ALPHA"] = 0.4
    build(name, **overrides)
    for arg, key in cls.config_keys.items():
        assert seen[arg] == overrides[key], f"{key} -> {arg}"


def test_prior_prob_is_rejected_without_sigmoid_columns():
    with pytest.raises(ValueError, match="PRIOR_PROB = 0.01 is not used by loss 'softmax'"):
        build("softmax", **{"LTDET.CLS_LOSS.PRIOR_PROB": 0.01})
    # Seesaw's objectness column is a 2-way softmax (starts at p = 0.5), not a prior-initialised sigmoid
    with pytest.raises(ValueError, match="PRIOR_PROB = 0.01 is not used by loss 'seesaw'"):
        build("seesaw", **{"LTDET.CLS_LOSS.PRIOR_PROB": 0.01})
    build("eqlv2", **{"LTDET.CLS_LOSS.PRIOR_PROB": 0.01})


# -------------------------------------------------------------- value ranges
@pytest.mark.parametrize(
    "name, key, value, valid",
    [
        ("eqlv2", "LTDET.EQLV2.GAMMA", -1.0, "> 0"),
        ("eqlv2", "LTDET.EQLV2.ALPHA", -0.5, ">= 0"),
        ("eqlv2_focal", "LTDET.EQLV2.MU", -1.0, ">= 0"),
        ("eqlv2_focal", "LTDET.EQLV2.GAMMA", float("nan"), "> 0"),
        ("eql", "LTDET.EQL.LAMBDA", 1.5, "<= 1"),
        ("eql", "LTDET.EQL.THRESHOLD_FN", "linear", "one of"),
        ("acsl", "LTDET.ACSL.XI", 1.2, "<= 1"),
        ("seesaw", "LTDET.SEESAW.P", -0.8, ">= 0"),
        ("focal", "LTDET.FOCAL.ALPHA", 1.5, "in [0, 1]"),
        ("focal", "LTDET.FOCAL.GAMMA", -2.0, ">= 0"),
        ("efl", "LTDET.FOCAL.GAMMA", 0.0, "> 0"),
        ("efl", "LTDET.EFL.SCALE", -8.0, ">= 0"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(name, key, value, valid):
    with pytest.raises(ValueError, match=re.escape(key) + r" = .* out of range .*" + re.escape(valid)):
        build(name, **{key: value})


def test_gamma_minus_one_no_longer_reaches_training():
    """The issue's reproduction: EQLv2 with γ = -1 used to crash the hook at iteration 19."""
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", "faster_rcnn_eqlv2.yaml"))
    cfg.merge_from_list(["LTDET.EQLV2.GAMMA", "-1.0", "MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"LTDET.EQLV2.GAMMA = -1.0 is out of range for loss 'eqlv2': it must be > 0"):
        build_model(cfg)


# ----------------------------------------------------------- the heads ask
def test_heads_use_the_contract_not_names():
    """No head or benchmark tests a loss by name or type; the lists come from the registry."""
    offenders = []
    for path in glob.glob(os.path.join(REPO, "ltdet", "modeling", "**", "*.py"), recursive=True) + glob.glob(
        os.path.join(REPO, "bench", "*.py")
    ):
        with open(path) as f:
            text = f.read()
        for pattern in (r'NAME\s*==\s*"', r"isinstance\([^)]*Loss\)", r"inspect\.signature", r'\("softmax", "sigmoid"'):
            if re.search(pattern, text):
                offenders.append(f"{os.path.relpath(path, REPO)}: {pattern}")
    assert not offenders


def test_loss_files_import_nothing_from_detectron2():
    for path in glob.glob(os.path.join(REPO, "ltdet", "losses", "*.py")):
        with open(path) as f:
            assert not re.search(r"^\s*(from|import) detectron2", f.read(), re.M), path
