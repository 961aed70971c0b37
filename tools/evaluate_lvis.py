#!/usr/bin/env python
"""Evaluate an LVIS-format results file offline; write a flat JSON of metrics in percent.

Metrics: AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AP1..AP5 (classes split
into five equal groups by the ground truth categories' ``image_count``, or
``instance_count`` with ``--groups-by instance``), and with ``--ap-fixed``
AP_fixed (+ APr/APc/APf_fixed), with ``--ap-pool`` AP_pool (+ r/c/f pools).
The training evaluator (``LongTailLVISEvaluator``) runs the same code
(``ltdet.evaluation.lvis_eval.evaluate_lvis``) on the same detections, so this
reproduces its numbers from its ``lvis_instances_results.json``.

Examples:
    python tools/evaluate_lvis.py --gt datasets/synthetic_lt/val.json \\
        --results output/demo/inference/lvis_instances_results.json --out metrics.json
    python tools/evaluate_lvis.py --gt lvis_v1_val.json --results results.json --out m.json \\
        --iou-type segm --backend lvis --ap-fixed
"""
import argparse
import json
import logging
import os
import sys

from ltdet.evaluation.group_ap import check_ground_truth_boxes, ground_truth_frequency_groups
from ltdet.evaluation.lvis_eval import BACKENDS, Detections, evaluate_lvis, fast_backend_available


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--gt", required=True, help="LVIS-format ground-truth json")
    parser.add_argument("--results", required=True, help="LVIS-format results json (a list of detections)")
    parser.add_argument("--out", required=True, help="output json of metrics")
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="fast (faster-coco-eval, default when installed) or lvis (the official API)")
    parser.add_argument("--ap-fixed", action="store_true", help="also AP_fixed (Dave et al. 2021)")
    parser.add_argument("--ap-pool", action="store_true", help="also AP_pool (Dave et al. 2021; lvis API matching)")
    parser.add_argument("--dets-per-class", type=int, default=10000, help="K of AP_fixed / AP_pool")
    parser.add_argument("--max-dets", type=int, default=300, help="detections per image of the standard metrics")
    parser.add_argument("--groups-by", choices=("image", "instance"), default="image",
                        help="count that sorts the classes into AP1..AP5")
    args = parser.parse_args(argv)
    if args.backend is None:
        args.backend = "fast" if fast_backend_available() else "lvis"
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_ground_truth_boxes(args.gt)
    groups, pools = ground_truth_frequency_groups(args.gt, args.groups_by)
    metrics = evaluate_lvis(
        args.gt, Detections.load(args.results), args.iou_type, backend=args.backend, max_dets=args.max_dets,
        class_groups=groups, ap_fixed=args.ap_fixed, ap_pool=args.ap_pool, dets_per_class=args.dets_per_class,
        frequency_pools=pools,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(metrics, f, indent=1)
    print(" ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
