"""One-pass LVIS evaluation: the fast backend equals the lvis API, AP_fixed, AP_pool, the offline tool."""
import copy
import importlib.util
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

import ltdet  # noqa: F401
from detectron2.structures import Boxes, Instances

from ltdet.data.synthetic import generate
from ltdet.evaluation.lvis_eval import Detections, evaluate_lvis, pooled_average_precision
from ltdet.evaluation.lvis_evaluator import _TopPerCategory
from ltdet.modeling.postprocess import top_k_per_class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APr", "APc", "APf")


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lvis_eval"))
    paths = generate(root, seed=4, num_train=200, num_val=60, image_size=96, num_frequent=2, num_common=3,
                     num_rare=4, val_min_images=3, progress=False)
    return paths["val"]


def noisy_detections(gt_json, seed, jitter, false_per_image, with_masks):
    """Detections from the ground truth: jittered true boxes/masks, random false positives, random scores."""
    rng = np.random.default_rng(seed)
    with open(gt_json) as f:
        data = json.load(f)
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    cats = [c["id"] for c in data["categories"]]
    out = []

    def add(image_id, cat, box, score, poly=None):
        h, w = sizes[image_id]
        x, y, bw, bh = box
        d = {"image_id": image_id, "category_id": cat, "bbox": [float(x), float(y), float(bw), float(bh)],
             "score": float(score)}
        if with_masks:
            poly = poly or [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            rle = mask_util.merge(mask_util.frPyObjects(poly, h, w))
            rle["counts"] = rle["counts"].decode("utf-8")
            d["segmentation"] = rle
        out.append(d)

    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        dx, dy = rng.normal(0, jitter * w), rng.normal(0, jitter * h)
        cat = ann["category_id"] if rng.random() > 0.15 else int(rng.choice(cats))
        shifted = [[v + (dx if i % 2 == 0 else dy) for i, v in enumerate(p)] for p in ann["segmentation"]]
        add(ann["image_id"], cat, (x + dx, y + dy, w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)),
            rng.uniform(0.3, 1.0), shifted)
    for image in data["images"]:
        h, w = sizes[image["id"]]
        for _ in range(false_per_image):
            bw, bh = rng.uniform(8, 40, 2)
            add(image["id"], int(rng.choice(cats)), (rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh),
                rng.uniform(0.0, 0.6))
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed, jitter, false_per_image", [(0, 0.05, 3), (1, 0.15, 10), (2, 0.2, 1)])
def test_fast_backend_equals_the_lvis_api(gt, iou_type, seed, jitter, false_per_image):
    dets = Detections.from_dicts(noisy_detections(gt, seed, jitter, false_per_image, with_masks=iou_type == "segm"))
    groups = {"AP1": [1, 2, 3], "AP2": [4, 5, 6, 7, 8, 9]}
    official = evaluate_lvis(gt, dets, iou_type, backend="lvis", class_groups=groups, ap_fixed=True)
    fast = evaluate_lvis(gt, dets, iou_type, backend="fast", class_groups=groups, ap_fixed=True)
    assert set(official) == set(fast)
    for key, value in official.items():
        assert fast[key] == pytest.approx(value, abs=0.01), key
    assert 5 < official["AP"] < 95, "a file with both hits and misses"


def test_the_official_path_is_the_lvis_api_itself(gt):
    from lvis import LVIS, LVISEval, LVISResults

    results = noisy_detections(gt, 5, 0.1, 4, with_masks=False)
    api = LVIS(gt)
    lvis_eval = LVISEval(api, LVISResults(api, copy.deepcopy(results), max_dets=300), "bbox")
    lvis_eval.run()
    ours = evaluate_lvis(gt, Detections.from_dicts(results), backend="lvis")
    for key in METRICS:
        assert ours[key] == pytest.approx(lvis_eval.results[key] * 100, abs=1e-9), key


def test_per_image_cap_and_ap_fixed(gt):
    """An image with 400 detections: the standard AP keeps its 300 best, AP_fixed ranks all of them."""
    results = noisy_detections(gt, 6, 0.05, 0, with_masks=False)
    image_id = results[0]["image_id"]
    # 399 low-score false positives plus a true positive below them, all in one image
    true = dict(results[0], score=0.01)
    noise = [dict(results[0], bbox=[0.0, 0.0, 2.0, 2.0], score=0.5) for _ in range(399)]
    dets = Detections.from_dicts([r for r in results if r["image_id"] != image_id] + noise + [true])
    capped = dets.top_per_image(300)
    assert int((capped.image_id == image_id).sum()) == 300 and 0.01 not in capped.score[capped.image_id == image_id]
    fixed = dets.top_per_category(10000)
    assert len(fixed) == len(dets)
    assert len(dets.top_per_category(2)) == 2 * len(np.unique(dets.category_id))
    metrics = evaluate_lvis(gt, dets, ap_fixed=True)
    assert metrics["AP_fixed"] != metrics["AP"]


def _tiny_gt(tmp_path):
    data = {
        "images": [
            {"id": 1, "height": 100, "width": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
            {"id": 2, "height": 100, "width": 100, "neg_category_ids": [1], "not_exhaustive_category_ids": []},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
             "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [20, 20, 40, 40], "area": 1600,
             "segmentation": [[20, 20, 60, 20, 60, 60, 20, 60]]},
        ],
        "categories": [{"id": 1, "name": "a", "frequency": "f", "image_count": 1, "instance_count": 1},
                       {"id": 2, "name": "b", "frequency": "r", "image_count": 1, "instance_count": 1}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_pooled_ap_by_hand(tmp_path):
    """a@0.9 true, b@0.8 false (b verified absent in image 1), b@0.7 true.

    Per class: AP_a = 1, AP_b = 0.5 -> AP = 0.75. Pooled: ranks TP, FP, TP over 2 ground truths,
    precision 1, .5, 2/3 at recall .5, .5, 1 -> interpolated 1 up to recall .5 (51 of the 101
    recall points) and 2/3 above (50 points): (51 + 50 * 2/3) / 101 = 0.8350 at every IoU.
    """
    gt = _tiny_gt(tmp_path)
    dets = Detections.from_dicts([
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [20, 20, 40, 40], "score": 0.7},
    ])
    metrics = evaluate_lvis(gt, dets, backend="lvis", ap_pool=True, frequency_pools={"r": [2], "f": [1]})
    assert metrics["AP"] == pytest.approx(75.0)
    assert metrics["AP_pool"] == pytest.approx(100 * (51 + 50 * 2 / 3) / 101)
    assert metrics["APf_pool"] == pytest.approx(100.0) and metrics["APr_pool"] == pytest.approx(50.0)
    assert pooled_average_precision is not None


def test_bounded_per_category_store_is_exact():
    rng = np.random.default_rng(0)
    store, parts = _TopPerCategory(7), []
    for _ in range(40):
        n = int(rng.integers(0, 30))
        part = Detections(rng.integers(0, 9, n), rng.integers(1, 6, n), rng.random(n).astype(np.float32),
                          rng.random((n, 4)).astype(np.float32))
        store.add(part)
        parts.append(part)
    expected = Detections.concatenate(parts).top_per_category(7)
    got = store.result()
    key = lambda d: sorted(zip(d.category_id.tolist(), d.score.tolist()))  # noqa: E731
    assert key(got) == key(expected) and len(got) <= 5 * 7


def test_top_k_per_class():
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.rand(9, 4))
    inst.scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    inst.pred_classes = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2])
    kept = top_k_per_class(inst, 2)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5, 0.4, 0.1])
    assert torch.bincount(kept.pred_classes).tolist() == [2, 2, 2]


def test_offline_tool_reproduces_the_metrics(gt, tmp_path):
    spec = importlib.util.spec_from_file_location("evaluate_lvis_tool", os.path.join(REPO, "tools", "evaluate_lvis.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = noisy_detections(gt, 7, 0.1, 2, with_masks=False)
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    metrics = tool.main(["--gt", gt, "--results", str(res_path), "--out", str(out), "--ap-fixed"])
    saved = json.loads(out.read_text())
    assert saved == pytest.approx(metrics)
    assert {"AP", "APr", "APc", "APf", "AP1", "AP5", "AP_fixed"} <= set(saved)
    from ltdet.evaluation.group_ap import ground_truth_frequency_groups

    groups, _ = ground_truth_frequency_groups(gt)
    assert evaluate_lvis(gt, Detections.from_dicts(results), class_groups=groups, ap_fixed=True) == pytest.approx(saved)
