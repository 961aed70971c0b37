"""Synthetic LVIS-format generator, registration through detectron2, category stats."""
import copy
import json
import os
import uuid
from fractions import Fraction

import numpy as np
import pytest
import torch

import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from lvis import LVIS, LVISEval

from ltdet.data import (
    SYNTHETIC_SPLITS,
    get_category_stats,
    group_names,
    register_lvis_format_dataset,
)
from ltdet.data.synthetic import class_image_targets, generate

TINY = dict(num_train=300, num_val=60, image_size=64, num_frequent=2, num_common=3, num_rare=4,
            progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_lt"))
    return root, generate(root, seed=0, **TINY)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
    return out


def _hand_counts(data):
    num_classes = len(data["categories"])
    image_sets = [set() for _ in range(num_classes)]
    instances = np.zeros(num_classes, np.int64)
    for ann in data["annotations"]:
        image_sets[ann["category_id"] - 1].add(ann["image_id"])
        instances[ann["category_id"] - 1] += 1
    return np.array([len(s) for s in image_sets]), instances


def _unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_generator_is_deterministic(tiny, tmp_path):
    root, _ = tiny
    generate(str(tmp_path / "same"), seed=0, **TINY)
    first, second = _files(root), _files(str(tmp_path / "same"))
    assert sorted(first) == sorted(second)
    assert sum(name.endswith(".png") for name in first) == TINY["num_train"] + TINY["num_val"]
    for name, content in first.items():
        assert content == second[name], name
    other = generate(str(tmp_path / "other"), seed=1, **TINY)
    with open(other["train"], "rb") as f:
        assert f.read() != first["train.json"]


def _decimal_polygon_area(flat):
    """The exact area of the polygon that the json's decimal coordinates denote, rounded half to even."""
    x, y = [Fraction(repr(v)) for v in flat[0::2]], [Fraction(repr(v)) for v in flat[1::2]]
    twice = sum(x[i] * y[i - len(x) + 1] - y[i] * x[i - len(x) + 1] for i in range(len(x)))
    return abs(twice) / 2


def test_areas_are_exact_on_every_machine(tiny):
    # version 1 summed the shoelace formula with np.dot, whose OpenBLAS kernel (chosen by CPU) decides how a
    # value on a rounding tie (x.xx5) rounds: 173 of 121,868 LVIS-like areas differed between two CPUs
    ties = 0
    for split in ("train", "val"):
        for ann in _load(tiny[1][split])["annotations"]:
            exact = _decimal_polygon_area(ann["segmentation"][0])
            ties += (exact * 100).denominator == 2
            assert ann["area"] == float(round(exact, 2)), ann["id"]
    assert ties > 5  # the test holds rounding ties, where a summation order shows


def test_generation_is_skipped_when_up_to_date(tiny):
    root, paths = tiny
    before = {p: os.stat(p).st_mtime_ns for p in paths.values()}
    generate(root, seed=0, **TINY)
    assert {p: os.stat(p).st_mtime_ns for p in paths.values()} == before


def test_default_profile_fills_every_group():
    targets = class_image_targets(1000, 6, 16, 18)
    assert len(targets) == 40
    assert (targets[:6] > 100).all()
    assert ((targets[6:22] > 10) & (targets[6:22] <= 100)).all()
    assert ((targets[22:] >= 2) & (targets[22:] <= 10)).all()
    assert (np.diff(targets) <= 0).all()


def test_json_passes_lvis_api_and_ground_truth_scores_one(tiny):
    _, paths = tiny
    for path in paths.values():
        gt = LVIS(path)
        results = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"],
                        score=1.0) for a in gt.dataset["annotations"]]
        evaluator = LVISEval(gt, copy.deepcopy(results), "bbox")
        evaluator.run()
        metrics = evaluator.get_results()
        for key in ("AP", "APr", "APc", "APf"):
            assert metrics[key] == pytest.approx(1.0), (path, key)


def test_frequencies_and_image_labels_follow_lvis(tiny):
    root, paths = tiny
    train, val = _load(paths["train"]), _load(paths["val"])
    image_count, instance_count = _hand_counts(train)
    assert [c["id"] for c in train["categories"]] == list(range(1, 10))
    assert [c["image_count"] for c in train["categories"]] == image_count.tolist()
    assert [c["instance_count"] for c in train["categories"]] == instance_count.tolist()
    expected = ["r" if n <= 10 else "c" if n <= 100 else "f" for n in image_count]
    assert [c["frequency"] for c in train["categories"]] == expected
    assert set(expected) == {"r", "c", "f"}
    assert min(image_count) >= 1
    assert val["categories"] == train["categories"]
    val_image_count, _ = _hand_counts(val)
    assert val_image_count.min() >= 8
    for data in (train, val):
        present = {}
        for ann in data["annotations"]:
            present.setdefault(ann["image_id"], set()).add(ann["category_id"])
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and ann["area"] > 0 and len(ann["segmentation"][0]) >= 6
            assert x >= 0 and y >= 0 and x + w <= TINY["image_size"]
        assert any(img["id"] not in present for img in data["images"]), "no empty image"
        for img in data["images"]:
            pos = present.get(img["id"], set())
            assert not pos & set(img["neg_category_ids"])
            assert set(img["not_exhaustive_category_ids"]) <= pos
            assert os.path.isfile(os.path.join(root, img["coco_url"]))


def test_registration_loads_dicts_with_contiguous_ids(tiny):
    root, paths = tiny
    name = _unique("tiny_train")
    register_lvis_format_dataset(name, paths["train"], root)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "lvis" and meta.json_file == paths["train"]
    dicts = DatasetCatalog.get(name)
    data = _load(paths["train"])
    assert len(dicts) == len(data["images"])
    assert meta.thing_classes == [c["name"] for c in data["categories"]]
    assert meta.class_frequency == [c["frequency"] for c in data["categories"]]
    by_id = {img["id"]: img for img in data["images"]}
    for record in dicts:
        img = by_id[record["image_id"]]
        assert os.path.isfile(record["file_name"])
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            assert record[key] == [k - 1 for k in img[key]]
        assert all(0 <= a["category_id"] < 9 for a in record["annotations"])
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB",
                           use_instance_mask=True)
    empty = next(r for r in dicts if not r["annotations"])
    full = next(r for r in dicts if len(r["annotations"]) >= 2)
    for record in (empty, full):
        out = mapper(record)
        assert out["image"].shape == (3, 64, 64)
        assert len(out["instances"]) == len(record["annotations"])
        assert out["neg_category_ids"] == record["neg_category_ids"]
    assert out["instances"].gt_masks.polygons


def test_lvis_evaluator_scores_ground_truth_dicts_one(tiny):
    root, paths = tiny
    name = _unique("tiny_val")
    register_lvis_format_dataset(name, paths["val"], root)
    evaluator = LVISEvaluator(name, tasks=("bbox",), distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record["annotations"]]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]],
                                              dtype=torch.long)
        evaluator.process([record], [{"instances": instances}])
    metrics = evaluator.evaluate()["bbox"]
    for key in ("AP", "APr", "APc", "APf"):
        assert metrics[key] == pytest.approx(100.0), key


def test_category_stats_from_json_and_from_dicts(tiny, tmp_path):
    root, paths = tiny
    data = _load(paths["train"])
    image_count, instance_count = _hand_counts(data)
    with_counts = _unique("tiny_counts")
    register_lvis_format_dataset(with_counts, paths["train"], root)
    stripped = copy.deepcopy(data)
    for category in stripped["categories"]:
        for key in ("image_count", "instance_count", "frequency"):
            del category[key]
    stripped_json = str(tmp_path / "train_without_counts.json")
    with open(stripped_json, "w") as f:
        json.dump(stripped, f)
    without_counts = _unique("tiny_nocounts")
    register_lvis_format_dataset(without_counts, stripped_json, root)

    expected_groups = [group_names.index({"r": "rare", "c": "common", "f": "frequent"}[
        c["frequency"]]) for c in data["categories"]]
    for name, source in ((with_counts, "json"), (without_counts, "dicts")):
        stats = get_category_stats(name)
        assert stats.source == source
        assert stats.image_count.tolist() == image_count.tolist()
        assert stats.instance_count.tolist() == instance_count.tolist()
        assert stats.num_images == len(data["images"]) and stats.num_classes == 9
        annotated = len({a["image_id"] for a in data["annotations"]})
        assert stats.num_annotated_images == annotated < 300, "the 1% empty images are not counted"
        # EQL's f_j: the official code divides by the images with annotations
        assert torch.allclose(stats.image_freq, torch.tensor(image_count / annotated).float())
        assert stats.groups.dtype == torch.long and stats.groups.tolist() == expected_groups
        assert stats.class_names == tuple(c["name"] for c in data["categories"])
        stats.image_count.zero_()
        assert get_category_stats(name).image_count.tolist() == image_count.tolist()
    assert get_category_stats(with_counts, rare_max=5).groups.tolist() != expected_groups


def test_synthetic_names_are_registered_at_import():
    for name, json_name in SYNTHETIC_SPLITS.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "lvis"
        assert meta.json_file.endswith(os.path.join("synthetic_lt", json_name))
