#!/usr/bin/env python
"""Foreground / background balance of the dense detector's anchors on a long-tail study profile.

Builds an ATSS config of ``configs/synthetic`` with a ``bench/long_tail_study.py`` profile's overrides, labels
the anchors of ``--batches`` training batches with the detector's own assigner (``LongTailATSS.label_anchors``)
and prints anchors, positives and the positive : negative anchor ratio per image, next to the number of anchors
the same anchor generator lays on an LVIS-sized image (``--lvis-size``, the EFL paper's 800 x 1333 test size).
Focal loss and EFL address the imbalance of these counts (EFL Sec. 3.1, Fig. 2); a profile whose images hold
few anchors per object has little of it.

Example:
    OMP_NUM_THREADS=1 python bench/dense_anchor_balance.py --profile lvis_like --batches 5
"""
import argparse
import importlib.util
import itertools
import math
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_study():
    spec = importlib.util.spec_from_file_location("long_tail_study", os.path.join(REPO, "bench", "long_tail_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchors_per_image(anchor_generator, height, width):
    """Anchors a detectron2 ``DefaultAnchorGenerator`` lays on a height x width input."""
    return sum(n * math.ceil(height / s) * math.ceil(width / s)
               for n, s in zip(anchor_generator.num_cell_anchors, anchor_generator.strides))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="lvis_like", help="bench/long_tail_study.py profile")
    parser.add_argument("--method", default="atss_focal", help="dense config of configs/synthetic")
    parser.add_argument("--batches", type=int, default=5, help="training batches labelled")
    parser.add_argument("--lvis-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    args = parser.parse_args(argv)

    from detectron2.modeling import build_model

    from ltdet.engine.trainer import LongTailTrainer

    study = load_study()
    profile = study.PROFILES[args.profile]
    num_classes = study.ensure_dataset(profile)
    cfg = study.load_method_config(args.method)
    cfg.merge_from_list(list(profile.opts.get(study.family_of(args.method), ())) + [
        "MODEL.LTDET_DENSE.NUM_CLASSES", str(num_classes), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"])
    model = build_model(cfg).train()
    anchors_total = positives = images = objects = 0
    with torch.no_grad():
        for batch in itertools.islice(LongTailTrainer.build_train_loader(cfg), args.batches):
            gt = [x["instances"] for x in batch]
            images = model.preprocess_image(batch).tensor
            features = model.backbone(images)
            anchors = model.anchor_generator([features[f] for f in model.head_in_features])
            labels, _ = model.label_anchors(anchors, gt)
            for label, instances in zip(labels, gt):
                anchors_total += label.numel()
                positives += int((label < num_classes).sum())
                images += 1
                objects += len(instances)
    assert anchors_per_image(model.anchor_generator, *images.shape[-2:]) == labels[0].numel()  # padded batch
    print(f"{args.profile} / {args.method}: {images} training images, input {cfg.INPUT.MAX_SIZE_TRAIN} px")
    print(f"  objects per image {objects / images:.2f}, anchors per image {anchors_total / images:.0f}, "
          f"ATSS positives per image {positives / images:.1f} ({positives / objects:.1f} per object)")
    print(f"  positive : negative anchors 1 : {(anchors_total - positives) / positives:.1f}")
    lvis = anchors_per_image(model.anchor_generator, *args.lvis_size)
    print(f"  the same generator on a {args.lvis_size[0]} x {args.lvis_size[1]} image: {lvis} anchors "
          f"({lvis / (anchors_total / images):.0f}x); with as many positives per object that is 1 : "
          f"{(lvis - positives / images) / (positives / images):.0f} at this profile's objects per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
