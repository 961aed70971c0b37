"""The paper-scale LVIS configs: each follows its paper's protocol, builds, and trains two iterations.

The models are the configs' own (ResNet-50 FPN, 1203 or 1230 classes) at a 64-pixel input, trained by
``LongTailTrainer`` on a miniature LVIS-format split: synthetic images whose categories are LVIS v1's
1203 (names, frequencies and counts from ``../shared/data/lvis_v1_train_cat_info.json``), or 1230
generic ones for v0.5. No weights are downloaded (MODEL.WEIGHTS is emptied).
"""
import glob
import json
import os

import pytest
import torch

import ltdet  # noqa: F401
from detectron2.config import get_cfg

from ltdet import add_ltdet_config
from ltdet.data import clear_category_stats_cache, register_lvis_format_dataset
from ltdet.data.synthetic import generate
from ltdet.engine import LongTailTrainer
from ltdet.losses import LOSS_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAT_INFO = os.path.join(os.path.dirname(REPO), "shared", "data", "lvis_v1_train_cat_info.json")
LVIS_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "lvis_v*", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
IDS = [os.path.relpath(p, os.path.join(REPO, "configs")) for p in LVIS_CONFIGS]


def load(path):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def num_classes(cfg):
    return cfg.MODEL.LTDET_DENSE.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "LongTailATSS" else cfg.MODEL.ROI_HEADS.NUM_CLASSES


# ---------------------------------------------------------------- protocol
@pytest.mark.parametrize("path", LVIS_CONFIGS, ids=IDS)
def test_config_states_its_source_and_follows_the_protocol(path):
    cfg = load(path)
    with open(path) as f:
        assert f.readline().startswith("# "), "the first line says which paper table / official config it reproduces"
    name = os.path.splitext(os.path.basename(path))[0]
    assert cfg.OUTPUT_DIR.endswith(name) and cfg.LTDET.CLS_LOSS.NAME in LOSS_REGISTRY
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    s, loss = cfg.SOLVER, cfg.LTDET.CLS_LOSS.NAME
    v1 = "lvis_v1" in path
    assert num_classes(cfg) == (1203 if v1 else 1230)
    if cfg.MODEL.META_ARCHITECTURE == "LongTailATSS":  # EFL 4.1 / EOD efl_improved_baseline_r50_2x_rfs.yaml
        d = cfg.MODEL.LTDET_DENSE
        assert (d.QUALITY, d.ATSS_TOPK, list(d.ANCHOR_SCALES), d.NMS_THRESH_TEST, d.TOPK_CANDIDATES_TEST) == (
            "iou", 18, [6.0, 8.0], 0.5, 6000)
        assert (d.BOX_LOSS_WEIGHTING, d.REG_LOSS_WEIGHT, d.NORMALIZER_MOMENTUM) == ("iou", 1.0, 0.0)
        assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS) == (
            16, 0.02, 150000, (100000, 137500), 6000)
        assert s.CLIP_GRADIENTS.ENABLED and (s.CLIP_GRADIENTS.CLIP_TYPE, s.CLIP_GRADIENTS.CLIP_VALUE) == ("full_model", 35.0)
        assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler" and cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
        return
    if v1:  # EQLv2 4.2 and its official mmdetection configs
        warmup = (10000, 0.0001) if loss == "ecm" else (500, s.WARMUP_FACTOR if s.WARMUP_FACTOR in (0.001, 1 / 3) else 0.001)
        assert (s.IMS_PER_BATCH, s.BASE_LR, s.WARMUP_ITERS, s.WARMUP_FACTOR) == (16, 0.02, *warmup)
        tokens = set(name.split("_"))
        two_x = "2x" in tokens
        assert s.MAX_ITER == (150000 if two_x else 75000)
        steps = (50000, 70000) if "crt" in tokens else (100000, 137500) if two_x else (50000, 68750)
        assert tuple(s.STEPS) == steps
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST in (0.0001, 0.0)
        sampler = ("RepeatFactorTrainingSampler" if "rfs" in tokens
                   else "ClassBalancedTrainingSampler" if "crt" in tokens else "TrainingSampler")
        assert cfg.DATALOADER.SAMPLER_TRAIN == sampler, "EQLv2 Table 1 compares with a random sampler"
    if loss == "seesaw":
        assert cfg.LTDET.CLASSIFIER.NAME == "cosine" and cfg.LTDET.CLASSIFIER.SCALE == 20.0 and s.MAX_ITER == 150000
    if loss == "acsl" or "crt" in name:  # a second stage: starts from its first stage's model, trains fc_cls only
        assert cfg.MODEL.WEIGHTS.startswith("output/") and cfg.MODEL.WEIGHTS.endswith("/model_final.pth")
        first_stage = os.path.join(REPO, "configs", os.path.relpath(os.path.dirname(cfg.MODEL.WEIGHTS), "output") + ".yaml")
        assert os.path.isfile(first_stage), first_stage
        assert load(first_stage).LTDET.CLS_LOSS.NAME == "softmax" and not load(first_stage).LTDET.TRAIN_ONLY
        assert cfg.LTDET.TRAIN_ONLY and cfg.LTDET.GRAD_STATS.RESET_ON_LOAD
    if loss == "ecm":  # ECM-Loss r50_ecm_1x.py: NormedLinear(tempearture=20), bias 0, grad_clip max_norm=5, RFS 1e-3
        assert (cfg.LTDET.CLASSIFIER.NAME, cfg.LTDET.CLASSIFIER.SCALE, cfg.LTDET.CLS_LOSS.PRIOR_PROB) == ("cosine", 20.0, 0.5)
        assert cfg.LTDET.ECM.FG_BG_RATIO == 6.3313 and cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
        assert s.CLIP_GRADIENTS.ENABLED and (s.CLIP_GRADIENTS.CLIP_TYPE, s.CLIP_GRADIENTS.CLIP_VALUE) == ("full_model", 5.0)
    if loss == "federated":  # CenterNet2 / Detic / ViTDet LVIS: 50 classes, image_count^0.5, prior 0.01, RFS 1e-3
        assert (cfg.LTDET.FED_LOSS.NUM_CLASSES, cfg.LTDET.FED_LOSS.FREQ_WEIGHT_POWER) == (50, 0.5)
        assert cfg.LTDET.CLS_LOSS.PRIOR_PROB == 0.01 and cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    if "norcal" in name:  # test-time calibration of a trained softmax model: the first stage's weights, a γ sweep
        assert loss == "softmax" and list(cfg.LTDET.TEST.NORCAL.GAMMAS) and cfg.LTDET.TEST.NORCAL.COUNT == "image"
        first_stage = os.path.join(REPO, "configs", os.path.relpath(os.path.dirname(cfg.MODEL.WEIGHTS), "output") + ".yaml")
        assert os.path.isfile(first_stage) and load(first_stage).OUTPUT_DIR == os.path.dirname(cfg.MODEL.WEIGHTS)
    if loss == "acsl":
        assert s.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,)
    if loss == "eql":
        assert cfg.LTDET.EQL.LAMBDA == (0.0011 if v1 else 0.00176)
        # EQLv2's re-implementation on v1 uses no image-level labels; EQL's own v0.5 protocol does
        assert cfg.LTDET.EQL.USE_IMAGE_LABELS == (not v1)
        if not v1:
            assert (s.IMS_PER_BATCH, s.BASE_LR, cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK) == (32, 0.04, True)


# ------------------------------------------------------- two iterations each
def _mini_lvis(root, categories):
    """A tiny synthetic LVIS-format split whose category list is ``categories``."""
    paths = generate(os.path.join(root, "images"), seed=3, num_train=120, num_val=4, image_size=64, num_frequent=1,
                     num_common=2, num_rare=3, val_min_images=1, progress=False)
    with open(paths["train"]) as f:
        data = json.load(f)
    used = [c["id"] for c in sorted(categories, key=lambda c: -c.get("image_count", 0))[:6]]  # the 6 most frequent
    for ann in data["annotations"]:
        ann["category_id"] = used[ann["category_id"] - 1]
    for image in data["images"]:
        image["neg_category_ids"] = [used[k - 1] for k in image["neg_category_ids"]]
        image["not_exhaustive_category_ids"] = [used[k - 1] for k in image["not_exhaustive_category_ids"]]
    data["images"] = data["images"][:16]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    data["categories"] = categories
    path = os.path.join(root, f"train_{len(categories)}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, os.path.join(root, "images")


@pytest.fixture(scope="module")
def mini_splits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mini_lvis"))
    with open(CAT_INFO) as f:
        v1 = [dict(c, synonyms=[c["name"]], synset=f"{c['name']}.n.01") for c in json.load(f)]
    v05 = [{"id": i, "name": f"category_{i}", "synonyms": [f"category_{i}"], "frequency": "rcf"[i % 3],
            "image_count": 1 + (i * 37) % 500, "instance_count": 2 + (i * 37) % 900} for i in range(1, 1231)]
    names = {}
    for version, categories in (("v1", v1), ("v0.5", v05)):
        json_file, image_root = _mini_lvis(root, categories)
        names[version] = f"mini_lvis_{version}_train"
        register_lvis_format_dataset(names[version], json_file, image_root)
    clear_category_stats_cache()
    return names


@pytest.fixture(autouse=True, scope="module")
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", LVIS_CONFIGS, ids=IDS)
def test_every_lvis_config_builds_and_trains_two_iterations(path, mini_splits, tmp_path):
    cfg = load(path)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "DATASETS.TRAIN", f"('{mini_splits['v1' if 'lvis_v1' in path else 'v0.5']}',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path),
    ])
    gammas = list(cfg.LTDET.TEST.NORCAL.GAMMAS)
    if gammas:  # an --eval-only sweep: refused for training; each of its γ builds the calibrated predictor
        with pytest.raises(ValueError, match="sweep for --eval-only"):
            LongTailTrainer(cfg)
        cfg.merge_from_list(["LTDET.TEST.NORCAL.GAMMAS", "[]", "LTDET.TEST.NORCAL.GAMMA", str(gammas[-1])])
    trainer = LongTailTrainer(cfg)
    if gammas:
        assert trainer.model.roi_heads.box_predictor.norcal.gamma == gammas[-1]
    trainer.checkpointer.save_to_disk = False  # a 1203-class R-50 checkpoint is 170 MB
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in losses)
    model = trainer.checkpointer.model
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    if cfg.LTDET.TRAIN_ONLY:
        assert trained and all("cls_score" in n for n in trained), trained
    loss = next(m for m in model.modules() if m.__class__.__name__.endswith("Loss") and hasattr(m, "family"))
    assert loss.name == cfg.LTDET.CLS_LOSS.NAME and loss.num_classes == num_classes(cfg)
