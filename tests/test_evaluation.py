"""Frequency-group APs, datasets registered from config (LVIS and COCO format), setup errors,
tools/category_stats.py, and (slow) a smoke run of bench/long_tail_study.py."""
import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)

import copy
import importlib.util
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from ltdet import add_ltdet_config
from ltdet.data import get_category_stats
from ltdet.data.custom import check_num_classes, register_from_config
from ltdet.data.synthetic import generate
from ltdet.evaluation import (
    COCOGroupEvaluator,
    LongTailLVISEvaluator,
    build_ltdet_evaluator,
    split_frequency_groups,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
FIVE = [f"AP{g}" for g in range(1, 6)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-class LVIS-format split on disk, plus a COCO-format copy with arbitrary category ids."""
    root = str(tmp_path_factory.mktemp("d2datasets") / "synthetic_lt")
    paths = generate(root, seed=0, num_train=150, num_val=40, image_size=64, num_frequent=2, num_common=3,
                     num_rare=5, val_min_images=2, progress=False)
    for split in ("train", "val"):
        with open(paths[split]) as f:
            data = json.load(f)
        paths[f"coco_{split}"] = _write(os.path.join(root, f"coco_{split}.json"), to_coco(data))
    return root, paths


def to_coco(lvis_data):
    """COCO-format copy: ids 1000 - 7k (reverse order), no counts, ``file_name`` and ``iscrowd``."""
    data = copy.deepcopy(lvis_data)
    new_id = {c["id"]: 1000 - 7 * c["id"] for c in data["categories"]}
    data["categories"] = [{"id": new_id[c["id"]], "name": c["name"]} for c in reversed(data["categories"])]
    for image in data["images"]:
        image["file_name"] = image["coco_url"]
    for ann in data["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
        ann["iscrowd"] = 0
    return data


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def make_cfg(entries, train, test, config="faster_rcnn_softmax.yaml", num_classes=NUM_CLASSES):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", config))
    cfg.LTDET.DATASETS.REGISTER = [list(e) for e in entries]
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (test,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.LTDET_DENSE.NUM_CLASSES = num_classes
    return cfg


def registered(tiny, fmt):
    """Config with train/val of ``tiny`` registered from LTDET.DATASETS.REGISTER in ``fmt``."""
    root, paths = tiny
    prefix = "" if fmt == "lvis" else "coco_"
    train, val = _name(f"{fmt}_train"), _name(f"{fmt}_val")
    cfg = make_cfg([(train, fmt, paths[f"{prefix}train"], root), (val, fmt, paths[f"{prefix}val"], root)],
                   train, val)
    register_from_config(cfg)
    check_num_classes(cfg)
    return cfg, train, val


def evaluate(evaluator, dataset_name, drop_classes=()):
    """Run ``evaluator`` on predictions equal to the ground truth, minus ``drop_classes``."""
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        anns = [a for a in record["annotations"] if a["category_id"] not in drop_classes]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(anns))
        instances.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def test_split_frequency_groups_equal_sizes_sorted_by_count():
    counts = np.array([50, 2, 9, 2, 400, 7, 30, 1, 120, 11, 3])
    groups = split_frequency_groups(counts)
    assert np.bincount(groups).tolist() == [3, 2, 2, 2, 2]
    order = np.argsort(counts, kind="stable")
    assert (np.diff(groups[order]) >= 0).all()
    assert groups[[7, 1, 3]].tolist() == [0, 0, 0]  # the three rarest (ties in id order)
    assert groups[[4, 8]].tolist() == [4, 4]


def test_lvis_group_aps_perfect_and_degraded(tiny):
    cfg, train, val = registered(tiny, "lvis")
    evaluator = build_ltdet_evaluator(cfg, val)
    assert isinstance(evaluator, LongTailLVISEvaluator)
    perfect = evaluate(evaluator, val)
    for key in ["AP", "APr", "APc", "APf"] + FIVE:
        assert perfect[key] == pytest.approx(100.0), key

    five = split_frequency_groups(get_category_stats(train).image_count.numpy())
    rarest = set(np.flatnonzero(five == 0).tolist())
    degraded = evaluate(evaluator, val, drop_classes=rarest)
    assert degraded["AP1"] == pytest.approx(0.0)
    for key in FIVE[1:]:
        assert degraded[key] == pytest.approx(100.0), key
    assert degraded["APr"] < 100.0 and degraded["AP"] < 100.0
    # AP and APr/APc/APf are detectron2's LVISEvaluator's (the lvis API), with either backend
    plain = evaluate(LVISEvaluator(val, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE), val,
                     drop_classes=rarest)
    cfg.defrost()
    cfg.LTDET.EVAL.BACKEND = "lvis"
    official = evaluate(build_ltdet_evaluator(cfg, val), val, drop_classes=rarest)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APr", "APc", "APf"):
        assert official[key] == pytest.approx(plain[key], abs=1e-9), key
        assert degraded[key] == pytest.approx(plain[key], abs=0.01), key
    assert official["AP1"] == pytest.approx(degraded["AP1"], abs=0.01)


def test_coco_format_dataset_from_config(tiny):
    root, paths = tiny
    cfg, train, val = registered(tiny, "coco")
    with open(paths["train"]) as f:
        lvis_categories = json.load(f)["categories"]
    stats = get_category_stats(train, cfg.LTDET.DATA.RARE_MAX_IMAGES, cfg.LTDET.DATA.COMMON_MAX_IMAGES)
    # contiguous ids follow the sorted COCO ids 1000 - 7k, i.e. the LVIS categories reversed
    assert stats.source == "dicts" and stats.num_classes == NUM_CLASSES
    assert list(stats.class_names) == [c["name"] for c in reversed(lvis_categories)]
    assert stats.image_count.tolist() == [c["image_count"] for c in reversed(lvis_categories)]
    assert stats.instance_count.tolist() == [c["instance_count"] for c in reversed(lvis_categories)]
    rcf = {"r": 0, "c": 1, "f": 2}
    assert stats.groups.tolist() == [rcf[c["frequency"]] for c in reversed(lvis_categories)]

    evaluator = build_ltdet_evaluator(cfg, val)
    assert isinstance(evaluator, COCOGroupEvaluator)
    perfect = evaluate(evaluator, val)
    for key in ["AP", "APr", "APc", "APf"] + FIVE:
        assert perfect[key] == pytest.approx(100.0), key
    frequent = set(torch.nonzero(stats.groups == 2).flatten().tolist())
    degraded = evaluate(evaluator, val, drop_classes=frequent)
    assert degraded["APf"] == pytest.approx(0.0) and degraded["AP5"] == pytest.approx(0.0)
    assert degraded["APr"] == pytest.approx(100.0) and degraded["AP1"] == pytest.approx(100.0)


def test_group_aps_skipped_without_training_json(tiny, tmp_path):
    root, paths = tiny
    train, val = _name("gone_train"), _name("val")
    missing = str(tmp_path / "not_here.json")
    cfg = make_cfg([(train, "lvis", missing, root), (val, "lvis", paths["val"], root)], train, val)
    register_from_config(cfg, eval_only=True)
    check_num_classes(cfg)
    result = evaluate(build_ltdet_evaluator(cfg, val), val)
    assert result["AP"] == pytest.approx(100.0)
    assert not set(FIVE) & set(result)


def test_missing_file_is_named(tiny, tmp_path):
    root, paths = tiny
    train, val = _name("train"), _name("val")
    missing = str(tmp_path / "missing_train.json")
    cfg = make_cfg([(train, "coco", missing, root), (val, "coco", paths["coco_val"], root)], train, val)
    with pytest.raises(FileNotFoundError, match="missing_train.json"):
        register_from_config(cfg)
    no_images = str(tmp_path / "no_images")
    cfg = make_cfg([(train, "coco", paths["coco_train"], root), (val, "coco", paths["coco_val"], no_images)],
                   train, val)
    with pytest.raises(FileNotFoundError, match="no_images"):
        register_from_config(cfg)
    cfg = make_cfg([], _name("never_registered"), val)
    with pytest.raises(KeyError, match="LTDET.DATASETS.REGISTER"):
        register_from_config(cfg)


@pytest.mark.parametrize("change", ["name", "id"])
def test_category_mismatch_between_splits(tiny, tmp_path, change):
    root, paths = tiny
    with open(paths["coco_val"]) as f:
        data = json.load(f)
    category = data["categories"][3]
    if change == "name":
        category["name"] = "renamed_class"
    else:
        old, category["id"] = category["id"], 5000
        for ann in data["annotations"]:
            ann["category_id"] = 5000 if ann["category_id"] == old else ann["category_id"]
    val_json = _write(str(tmp_path / "val.json"), data)
    train, val = _name("train"), _name("val")
    cfg = make_cfg([(train, "coco", paths["coco_train"], root), (val, "coco", val_json, root)], train, val)
    with pytest.raises(ValueError, match="different categories"):
        register_from_config(cfg)


@pytest.mark.parametrize("config,key", [("faster_rcnn_softmax.yaml", "MODEL.ROI_HEADS.NUM_CLASSES"),
                                        ("atss_focal.yaml", "MODEL.LTDET_DENSE.NUM_CLASSES")])
def test_num_classes_mismatch(tiny, config, key):
    root, paths = tiny
    train, val = _name("train"), _name("val")
    entries = [(train, "lvis", paths["train"], root), (val, "lvis", paths["val"], root)]
    cfg = make_cfg(entries, train, val, config=config, num_classes=40)
    register_from_config(cfg)
    with pytest.raises(ValueError, match=rf"{key} = 40 but dataset '{train}' has {NUM_CLASSES} categories"):
        check_num_classes(cfg)
    check_num_classes(make_cfg(entries, train, val, config=config))


def test_category_stats_tool(tiny, tmp_path, capsys):
    root, paths = tiny
    spec = importlib.util.spec_from_file_location("category_stats_tool",
                                                  os.path.join(REPO, "tools", "category_stats.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    reports = {}
    for fmt in ("train", "coco_train"):
        out = str(tmp_path / f"{fmt}.json")
        tool.main(["--json", paths[fmt], "--out", out, "--rare-max", "5"])
        with open(out) as f:
            reports[fmt] = json.load(f)
        assert "frequency group" in capsys.readouterr().out
    from ltdet.data.datasets import read_json_summary

    assert read_json_summary(paths["train"])["lvis_format"] and not read_json_summary(paths["coco_train"])["lvis_format"]
    lvis, coco = reports["train"], reports["coco_train"]
    assert (lvis["source"], coco["source"]) == ("json", "dicts")
    assert lvis["image_count"] == coco["image_count"][::-1]
    assert lvis["class_names"] == coco["class_names"][::-1]
    assert sum(lvis["group_counts"].values()) == NUM_CLASSES
    assert all(g == "rare" for g, n in zip(lvis["groups"], lvis["image_count"]) if n <= 5)
    bounds = lvis["frequency_group_boundaries"]
    assert [b["num_classes"] for b in bounds] == [2] * 5
    assert all(a["max_images"] <= b["min_images"] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.slow
def test_long_tail_study_smoke(tiny, tmp_path):
    root, _ = tiny
    out = str(tmp_path / "study")
    cmd = [sys.executable, os.path.join(REPO, "bench", "long_tail_study.py"), "--methods", "faster_rcnn_softmax",
           "atss_focal", "--seeds", "0", "--max-iter", "2", "--jobs", "2", "--out", out,
           "--records", str(tmp_path / "records"),
           "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0"]
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(root))
    for _ in range(2):  # the second run resumes: nothing left to train
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skip (finished)" in proc.stdout
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)["methods"]
    for method in ("faster_rcnn_softmax", "atss_focal"):
        assert set(["AP", "APr", "AP1", "AP5"]) <= set(results[method]["mean"])
    assert os.path.isfile(os.path.join(out, "results.md"))
    # a later session without the output directory: the records stand for the runs
    cmd[cmd.index("--out") + 1] = str(tmp_path / "study2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0 and "skip (recorded" in proc.stdout and "0 runs to train" in proc.stdout
    with open(tmp_path / "study2" / "results.json") as f:
        again = json.load(f)["methods"]
    assert {m: again[m]["runs"] for m in again} == {m: results[m]["runs"] for m in results}


def test_visualize_tool_with_datasets_from_the_command_line(tiny, tmp_path):
    root, paths = tiny
    spec = importlib.util.spec_from_file_location("visualize_tool", os.path.join(REPO, "tools", "visualize.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    val = _name("cli_val")
    out = str(tmp_path / "vis")
    written = tool.main([
        "--config-file", os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml"),
        "--num-images", "2", "--out", out, "--score-thresh", "0",
        "LTDET.DATASETS.REGISTER", repr([(val, "coco", paths["coco_val"], root)]),
        "DATASETS.TRAIN", "()", "DATASETS.TEST", repr((val,)), "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
    ])
    assert len(written) == 2 and all(p.endswith(".png") and os.path.isfile(p) for p in written)


def test_training_evaluator_and_offline_tool_agree(tiny, tmp_path):
    """One pass gives AP..AP5 and AP_fixed; tools/evaluate_lvis.py on its saved file gives the same numbers."""
    import importlib.util

    cfg, train, val = registered(tiny, "lvis")
    cfg.defrost()
    cfg.LTDET.EVAL.AP_FIXED = True
    cfg.LTDET.EVAL.FREQUENCY_GROUPS_BY = "instance"
    evaluator = build_ltdet_evaluator(cfg, val, str(tmp_path / "inference"))
    metrics = evaluate(evaluator, val, drop_classes={0})
    assert {"AP", "APr", "AP1", "AP5", "AP_fixed", "APr_fixed"} <= set(metrics)
    spec = importlib.util.spec_from_file_location("evaluate_lvis", os.path.join(REPO, "tools", "evaluate_lvis.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    offline = tool.main(["--gt", MetadataCatalog.get(val).json_file, "--results",
                         str(tmp_path / "inference" / "lvis_instances_results.json"), "--out",
                         str(tmp_path / "m.json"), "--ap-fixed", "--groups-by", "instance"])
    for key in ("AP", "AP50", "APr", "APc", "APf", "AP1", "AP5", "AP_fixed"):
        assert offline[key] == pytest.approx(metrics[key], abs=1e-6), key
