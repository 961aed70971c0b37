#!/usr/bin/env python
"""LVIS evaluation time and peak memory: ltdet's fast backend vs the official ``lvis`` API, same files.

Builds an LVIS-scale evaluation (not a timed test): 1,203 categories with LVIS v1's
names, frequencies and instance counts (``../shared/data/lvis_v1_train_cat_info.json``),
``--images`` images (1,500) with about 12 ground-truth boxes each (classes drawn by
instance count) and 8 verified-absent categories each, and ``--dets`` (300)
detections per image: every ground-truth box jittered, plus false positives
of random (frequency-weighted) categories. Then, each in a fresh subprocess,
from the files on disk (loading included):

* ``lvis``: the official API as detectron2 runs it (``LVIS``, ``LVISResults(max_dets=300)``,
  ``LVISEval.run``) -- AP, APr, APc, APf;
* ``fast``: ``tools/evaluate_lvis.py``'s path (``Detections.load`` + ``evaluate_lvis`` with
  ``backend="fast"``) -- the same metrics plus AP1..AP5 from the same pass.

Prints wall time (after the imports: loading both files and evaluating), peak RSS increase, the metrics (they agree within 0.01), and the
ratios fast / lvis.

    python bench/lvis_eval_speed.py [--images 1500] [--dets 300] [--workdir /tmp/lvis_eval_bench]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAT_INFO = os.path.join(os.path.dirname(REPO), "shared", "data", "lvis_v1_train_cat_info.json")


def make_files(workdir, num_images, dets_per_image, seed=0):
    """Write gt.json and results.json; return their paths."""
    rng = np.random.default_rng(seed)
    with open(CAT_INFO) as f:
        cats = json.load(f)
    ids = np.array([c["id"] for c in cats])
    weights = np.array([c["instance_count"] for c in cats], np.float64)
    weights /= weights.sum()
    images, annotations, results = [], [], []
    for i in range(1, num_images + 1):
        h, w = 480, 640
        n = int(rng.integers(4, 21))
        classes = rng.choice(ids, n, p=weights)
        absent = np.setdiff1d(rng.choice(ids, 8, replace=False), classes)
        images.append({"id": i, "height": h, "width": w, "neg_category_ids": absent.tolist(),
                       "not_exhaustive_category_ids": [], "coco_url": f"val/{i:012d}.jpg"})
        boxes = []
        for c in classes:
            bw, bh = rng.uniform(10, 200, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [x, y, bw, bh], "area": bw * bh})
            boxes.append((c, x, y, bw, bh))
        for c, x, y, bw, bh in boxes:
            j = rng.normal(0, 0.1, 4)
            results.append({"image_id": i, "category_id": int(c), "score": float(rng.uniform(0.2, 1.0)),
                            "bbox": [x + j[0] * bw, y + j[1] * bh, bw * (1 + j[2]), bh * (1 + j[3])]})
        for _ in range(dets_per_image - len(boxes)):
            bw, bh = rng.uniform(10, 200, 2)
            results.append({"image_id": i, "category_id": int(rng.choice(ids, p=weights)),
                            "score": float(rng.uniform(0.0, 0.6)),
                            "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]})
    categories = [{k: c[k] for k in ("id", "name", "frequency", "image_count", "instance_count")} for c in cats]
    os.makedirs(workdir, exist_ok=True)
    gt_path, res_path = os.path.join(workdir, "gt.json"), os.path.join(workdir, "results.json")
    with open(gt_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    with open(res_path, "w") as f:
        json.dump(results, f)
    return gt_path, res_path, len(annotations), len(results)


def run_backend(backend, gt_path, res_path):
    """In this process: evaluate from the files; print one JSON line (seconds, peak RSS MiB, metrics)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rss_peak import peak_rss_kib, reset_peak_rss, trim_heap

    if backend == "lvis":
        from lvis import LVIS, LVISEval, LVISResults
    else:
        from ltdet.evaluation.group_ap import ground_truth_frequency_groups
        from ltdet.evaluation.lvis_eval import Detections, evaluate_lvis
    trim_heap()
    level = reset_peak_rss()
    start = time.perf_counter()  # after the imports: loading the files and evaluating
    if backend == "lvis":
        gt = LVIS(gt_path)
        lvis_eval = LVISEval(gt, LVISResults(gt, res_path, max_dets=300), "bbox")
        lvis_eval.run()
        metrics = {k: lvis_eval.results[k] * 100 for k in ("AP", "AP50", "APr", "APc", "APf")}
    else:
        groups, _ = ground_truth_frequency_groups(gt_path)
        metrics = evaluate_lvis(gt_path, Detections.load(res_path), "bbox", backend="fast", class_groups=groups)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": (peak_rss_kib() - level) / 1024, "metrics": metrics}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--dets", type=int, default=300)
    parser.add_argument("--workdir", default="/tmp/lvis_eval_bench")
    parser.add_argument("--run", choices=("lvis", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gt_path, res_path = os.path.join(args.workdir, "gt.json"), os.path.join(args.workdir, "results.json")
    if args.run:
        return run_backend(args.run, gt_path, res_path)
    start = time.perf_counter()
    _, _, num_gt, num_dets = make_files(args.workdir, args.images, args.dets)
    print(f"{args.images} images, 1203 categories, {num_gt} ground-truth boxes, {num_dets} detections "
          f"({time.perf_counter() - start:.1f} s to write)")
    out = {}
    for backend in ("lvis", "fast"):
        proc = subprocess.run([sys.executable, __file__, "--workdir", args.workdir, "--run", backend],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = out[backend]
        print(f"{backend:>4}: {r['seconds']:6.1f} s, peak RSS +{r['peak_mib']:.0f} MiB, "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()))
    ratio = out["fast"]["seconds"] / out["lvis"]["seconds"]
    print(f"fast / lvis: time {ratio:.3f} (1 / {1 / ratio:.1f}), peak memory "
          f"{out['fast']['peak_mib'] / out['lvis']['peak_mib']:.2f}")
    worst = max(abs(out["fast"]["metrics"][k] - v) for k, v in out["lvis"]["metrics"].items())
    print(f"largest metric difference: {worst:.4f} AP")


if __name__ == "__main__":
    main()
