"""NorCal (Pan et al., NeurIPS 2021): the calibration formula, the predictor option and its checks.

Shape shorthand: N proposals, C foreground classes, logits [N, C + 1] (column C: background).
"""
import pytest
import torch

import ltdet  # noqa: F401
from detectron2.layers import ShapeSpec

from ltdet.modeling.roi_heads import LongTailFastRCNNOutputLayers
from ltdet.modeling.roi_heads.norcal import NorCal

from test_roi_heads import C, base_cfg  # the in-memory 5-class training set (image counts 2 ... 150)

COUNTS = torch.tensor([2.0, 8.0, 15.0, 40.0, 150.0])


def closed_form(logits, counts, gamma):
    """s_c = exp(z_c) / N_c^gamma / (sum_c' exp(z_c') / N_c'^gamma + exp(z_bg)); background untouched."""
    e = logits.double().exp()
    fg = e[:, :-1] / counts.double().pow(gamma)
    denominator = fg.sum(1, keepdim=True) + e[:, -1:]
    return torch.cat([fg, e[:, -1:]], 1) / denominator


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.3])
def test_calibration_matches_the_formula(gamma):
    logits = torch.randn(20, C + 1) * 3
    probs = NorCal(COUNTS, gamma)(logits)
    torch.testing.assert_close(probs.double(), closed_form(logits, COUNTS, gamma), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(probs.sum(1), torch.ones(20))
    if gamma == 0:
        torch.testing.assert_close(probs, torch.softmax(logits, 1))
    # the background is untouched: its odds against class c grow by exactly N_c^gamma
    plain = torch.softmax(logits.double(), 1)
    odds_ratio = (probs[:, -1:].double() / probs[:, :-1]) / (plain[:, -1:] / plain[:, :-1])
    torch.testing.assert_close(odds_ratio, COUNTS.double().pow(gamma).expand(20, -1), rtol=1e-4, atol=0)


def test_frequent_classes_lose_score_to_rare_ones_and_zero_counts_are_one():
    logits = torch.zeros(1, C + 1)
    probs = NorCal(COUNTS, 1.0)(logits)[0, :C]
    assert bool((probs[:-1] > probs[1:]).all())  # rarest first
    with_zero = NorCal(torch.tensor([0.0, 1.0, 8.0, 15.0, 40.0]), 1.0)(logits)
    assert torch.isfinite(with_zero).all() and torch.isclose(with_zero[0, 0], with_zero[0, 1])
    with pytest.raises(ValueError, match="gamma"):
        NorCal(COUNTS, -0.5)
    with pytest.raises(ValueError, match=r"logits \[N, 6\]"):
        NorCal(COUNTS, 1.0)(torch.zeros(2, C))


def test_predictor_calibrates_softmax_scores_with_the_training_counts():
    cfg = base_cfg("softmax")
    cfg.LTDET.TEST.NORCAL.GAMMA = 1.0
    cfg.LTDET.TEST.NORCAL.COUNT = "image"  # the in-memory set has one instance per image and class
    predictor = LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    assert isinstance(predictor.norcal, NorCal) and predictor.norcal.gamma == 1.0
    torch.testing.assert_close(predictor.norcal.log_counts.exp(), torch.tensor([2.0, 8.0, 15.0, 40.0, 150.0]))
    scores = torch.randn(4, C + 1)
    (probs,) = predictor.predict_probs((scores, None), [range(4)])
    torch.testing.assert_close(probs.double(), closed_form(scores, COUNTS, 1.0), rtol=1e-5, atol=1e-7)
    off = LongTailFastRCNNOutputLayers(base_cfg("softmax"), ShapeSpec(channels=8))
    assert off.norcal is None
    (plain,) = off.predict_probs((scores, None), [range(4)])
    torch.testing.assert_close(plain, torch.softmax(scores, 1))
    cfg.LTDET.TEST.NORCAL.GAMMA = 0.0
    cfg.LTDET.TEST.NORCAL.GAMMAS = [0.0, 1.0]  # a sweep builds the module at gamma 0
    assert LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8)).norcal.gamma == 0.0


@pytest.mark.parametrize("loss", ["sigmoid", "seesaw", "eqlv2", "federated"])
def test_norcal_is_rejected_without_a_softmax_background(loss):
    cfg = base_cfg(loss)
    cfg.LTDET.TEST.NORCAL.GAMMA = 1.0
    with pytest.raises(ValueError, match=f"LTDET.TEST.NORCAL calibrates a softmax.*'{loss}'"):
        LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))


@pytest.mark.parametrize("key, value, match", [
    ("GAMMA", -1.0, "LTDET.TEST.NORCAL.GAMMA: NorCal gamma must be"),
    ("GAMMAS", [0.5, float("nan")], "LTDET.TEST.NORCAL.GAMMAS: NorCal gamma must be"),
    ("COUNT", "box", "COUNT must be 'instance' or 'image'"),
])
def test_bad_norcal_keys_are_named(key, value, match):
    cfg = base_cfg("softmax")
    cfg.LTDET.TEST.NORCAL.GAMMA = 1.0 if key != "GAMMA" else value
    if key != "GAMMA":
        cfg.LTDET.TEST.NORCAL[key] = value
    with pytest.raises(ValueError, match=match):
        LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))


def test_count_without_calibration_is_rejected_not_ignored():
    cfg = base_cfg("softmax")
    cfg.LTDET.TEST.NORCAL.COUNT = "instance"
    with pytest.raises(ValueError, match="LTDET.TEST.NORCAL.COUNT = 'instance' is not used: NorCal is off"):
        LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    cfg.LTDET.TEST.NORCAL.GAMMA = 0.5
    assert LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8)).norcal.gamma == 0.5
