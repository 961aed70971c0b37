#!/usr/bin/env python
"""Per-category training statistics of a dataset: r/c/f groups, five frequency groups, per-class table.

Counts come from ``ltdet.data.get_category_stats``: the json's ``image_count`` /
``instance_count`` when its categories carry them (LVIS), else computed from
the annotations (crowd excluded). The five groups are the AP1 (rarest) ..
AP5 groups of ltdet's evaluators: classes sorted by image count, split into
five equal parts.

Examples:
    python tools/category_stats.py synthetic_lt_train --out stats.json
    python tools/category_stats.py lvis_v1_train --rare-max 10 --common-max 100
    python tools/category_stats.py --json /data/my/train.json --out my_stats.json
    python tools/category_stats.py my_train --config-file my_config.yaml   # LTDET.DATASETS.REGISTER
"""
import ltdet  # noqa: F401  (first: registers ltdet's datasets and the detectron2 ops stand-in)

import argparse
import json
import os

import numpy as np
from detectron2.config import get_cfg
from tabulate import tabulate

from ltdet import add_ltdet_config
from ltdet.data import get_category_stats, group_names
from ltdet.data.custom import register_dataset
from ltdet.data.datasets import read_json_summary
from ltdet.evaluation import split_frequency_groups

_CLI_NAME = "category_stats_cli"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", nargs="?", help="registered dataset name (e.g. lvis_v1_train)")
    parser.add_argument("--json", help="a COCO- or LVIS-format json instead of a registered name")
    parser.add_argument("--format", choices=("auto", "coco", "lvis"), default="auto",
                        help="format of --json (default: %(default)s: lvis for LVIS-style jsons, else coco)")
    parser.add_argument("--config-file", help="config whose LTDET.DATASETS.REGISTER entries to register first")
    parser.add_argument("--out", help="write the statistics to this json file")
    parser.add_argument("--rare-max", type=int, default=None,
                        help="largest image count of a rare class (default: the config's, else 10)")
    parser.add_argument("--common-max", type=int, default=None,
                        help="largest image count of a common class (default: the config's, else 100)")
    parser.add_argument("--no-table", action="store_true", help="do not print the per-class table")
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.json is None):
        parser.error("give either a dataset name or --json FILE")
    return args


def category_report(dataset_name, rare_max=10, common_max=100):
    """Statistics of a registered dataset as a json-serialisable dict.

    Args:
        dataset_name (str): registered name.
        rare_max, common_max (int): r/c/f thresholds.

    Returns:
        dict: class names, image/instance counts, r/c/f groups and counts, and
        the five frequency groups with their image-count boundaries.
    """
    stats = get_category_stats(dataset_name, rare_max, common_max)
    image_count = stats.image_count.numpy()
    instance_count = stats.instance_count.numpy()
    groups = stats.groups.numpy()
    five = split_frequency_groups(image_count)
    boundaries = []
    for g in range(five.max() + 1 if len(five) else 0):
        members = np.flatnonzero(five == g)
        counts = image_count[members]
        boundaries.append({
            "name": f"AP{g + 1}", "num_classes": int(len(members)),
            "min_images": int(counts.min()) if len(members) else None,
            "max_images": int(counts.max()) if len(members) else None,
        })
    return {
        "dataset": dataset_name,
        "source": stats.source,
        "num_images": stats.num_images,
        "num_classes": stats.num_classes,
        "rare_max": rare_max,
        "common_max": common_max,
        "class_names": list(stats.class_names),
        "image_count": image_count.tolist(),
        "instance_count": instance_count.tolist(),
        "groups": [group_names[g] for g in groups],
        "group_counts": {name: int((groups == g).sum()) for g, name in enumerate(group_names)},
        "frequency_groups": five.tolist(),
        "frequency_group_boundaries": boundaries,
    }


def format_report(report, per_class=True):
    """Text tables of ``category_report``'s result."""
    image_count = np.asarray(report["image_count"])
    instance_count = np.asarray(report["instance_count"])
    groups = np.asarray(report["groups"])
    lines = [
        f"{report['dataset']}: {report['num_classes']} classes, {report['num_images']} images, "
        f"{int(instance_count.sum())} instances (counts from {report['source']}; "
        f"rare <= {report['rare_max']} images < common <= {report['common_max']} < frequent)",
    ]
    rows = []
    for name in group_names:
        mask = groups == name
        span = f"{image_count[mask].min()}-{image_count[mask].max()}" if mask.any() else "-"
        rows.append((name, int(mask.sum()), span, int(instance_count[mask].sum())))
    lines.append(tabulate(rows, headers=["group", "classes", "images per class", "instances"], tablefmt="pipe"))
    rows = [(b["name"], b["num_classes"], f"{b['min_images']}-{b['max_images']}")
            for b in report["frequency_group_boundaries"]]
    lines.append(tabulate(rows, headers=["frequency group", "classes", "images per class"], tablefmt="pipe"))
    if per_class:
        rows = [(i, name, image_count[i], instance_count[i], groups[i], f"AP{report['frequency_groups'][i] + 1}")
                for i, name in enumerate(report["class_names"])]
        lines.append(tabulate(rows, headers=["id (0-based)", "class", "images", "instances", "group", "frequency group"],
                              tablefmt="pipe"))
    return "\n\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    rare_max, common_max = 10, 100
    if args.config_file:
        cfg = get_cfg()
        add_ltdet_config(cfg)
        cfg.merge_from_file(args.config_file)
        rare_max, common_max = cfg.LTDET.DATA.RARE_MAX_IMAGES, cfg.LTDET.DATA.COMMON_MAX_IMAGES
        for entry in cfg.LTDET.DATASETS.REGISTER:
            register_dataset(*entry)
    rare_max = rare_max if args.rare_max is None else args.rare_max
    common_max = common_max if args.common_max is None else args.common_max
    name = args.dataset
    if args.json:
        if not os.path.isfile(args.json):
            raise FileNotFoundError(f"json file not found: {args.json}")
        fmt = ("lvis" if read_json_summary(args.json)["lvis_format"] else "coco") if args.format == "auto" else args.format
        name = _CLI_NAME
        register_dataset(name, fmt, args.json, os.path.dirname(os.path.abspath(args.json)))
    report = category_report(name, rare_max, common_max)
    if args.json:
        report["dataset"] = args.json
    print(format_report(report, per_class=not args.no_table))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
