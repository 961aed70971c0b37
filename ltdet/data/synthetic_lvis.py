"""An LVIS-like synthetic profile: hundreds of classes, LVIS's r/c/f proportions, rare classes in < 0.1%.

``python -m ltdet.data.synthetic_lvis [--root datasets/synthetic_lvis] [--seed 0]`` writes an
LVIS-format dataset with the machinery of ``ltdet.data.synthetic`` (same json layout, image-level
labels, ``neg_category_ids``), registered as ``synthetic_lvis_train`` / ``synthetic_lvis_val``.

Compared with the embedded demo dataset (40 classes, 1,000 images, a rare class in 0.2-1% of them),
the default profile is about 100x more imbalanced, closer to LVIS v1:

========  =======  ====================  =====================================
group     classes  train images / class  share of the 20,000 training images
========  =======  ====================  =====================================
frequent  101      4,000 ... 101         20% ... 0.5%
common    115      100 ... 11            0.5% ... 0.055%
rare      84       10 ... 1              0.05% ... 0.005%
========  =======  ====================  =====================================

(LVIS v1: 405 / 461 / 337 classes; a rare class in 1-10 of 100k images.) Images are 64 x 64 with
up to 8 objects (5.6 classes per image on average), objects rotated at random with a stronger
colour jitter (intra-class variation). Rare and common classes are to a large part *confusable*
variants of frequent ones: the same shape with a slightly shifted shade, or the same object with a
small mark. Every class has at least ``val_min_images`` (20) validation images, so that APr is an
average over 84 x >= 20 images.

Class profile: generated from a fixed seed (the same for every ``--seed``, which only changes the
images).
"""
import argparse
import colorsys
import logging
import os
import time

import numpy as np

from .synthetic import _SHAPES, RenderStyle, generate_from_specs, summarize

__all__ = ["LVIS_LIKE_STYLE", "generate_lvis_like", "lvis_like_class_specs", "lvis_like_targets", "main"]

logger = logging.getLogger(__name__)

#: 2: the synthetic generator's polygons and areas without BLAS (ltdet.data.synthetic.GENERATOR_VERSION).
GENERATOR_VERSION = 2
#: LVIS v1's frequent / common / rare shares of its 1,203 classes (405 / 461 / 337).
LVIS_V1_SHARES = (405 / 1203, 461 / 1203, 337 / 1203)
LVIS_LIKE_STYLE = RenderStyle(max_objects=8, colour_jitter=16, rotate=True, neg_fraction=(0.05, 0.15),
                              object_size=(16.0, 44.0))
_PROFILE_SEED = 20221202


def _rgb_name(hue, saturation, value):
    r, g, b = (int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))
    return f"rgb_{r}_{g}_{b}"


def lvis_like_class_specs(num_frequent, num_common, num_rare, confusable=0.6):
    """(shape, colour, mark) per class: frequent classes distinct, a ``confusable`` share of the
    common and rare ones a shade shift or a mark away from a frequent class."""
    rng = np.random.default_rng(_PROFILE_SEED)
    shapes = sorted(_SHAPES)
    palette = [(h / 12, s, v) for h in range(12) for s, v in ((0.85, 0.9), (0.55, 0.95), (0.9, 0.55))]
    combos = [(shape, colour) for shape in shapes for colour in range(len(palette))]
    order = rng.permutation(len(combos))
    frequent = [combos[i] for i in order[:num_frequent]]
    unused = [combos[i] for i in order[num_frequent:]]
    specs = [(shape, _rgb_name(*palette[c]), "") for shape, c in frequent]
    while len(specs) < num_frequent + num_common + num_rare:
        if rng.random() < confusable or not unused:
            shape, c = frequent[rng.integers(len(frequent))]
            h, s, v = palette[c]
            if rng.random() < 0.5:  # a slightly different shade
                spec = (shape, _rgb_name(h + rng.choice([-1, 1]) * 0.035, s, min(1.0, v * 0.85)), "")
            else:  # the same object with a small mark
                spec = (shape, _rgb_name(h, s, v), f"{rng.choice(['dot', 'bar'])}:{rng.choice(['white', 'black'])}")
        else:
            shape, c = unused.pop(0)
            spec = (shape, _rgb_name(*palette[c]), "")
        if spec not in specs:
            specs.append(spec)
    return specs


def lvis_like_targets(num_train, num_frequent, num_common, num_rare, top_share=0.2):
    """Train images per class: geometric within LVIS's groups (frequent ``top_share`` x N ... 101,
    common 100 ... 11, rare 10 ... 1)."""
    parts = [np.geomspace(max(102, top_share * num_train), 101, num_frequent), np.geomspace(100, 11, num_common),
             np.geomspace(10, 1, num_rare)]
    return np.concatenate(parts).round().astype(np.int64)


def generate_lvis_like(root, seed=0, num_classes=300, num_train=20000, num_val=4000, image_size=64,
                       val_min_images=20, force=False, progress=True):
    """Generate the LVIS-like profile under ``root`` (skipped if already there with these parameters).

    Returns:
        dict: ``{"train": path of train.json, "val": path of val.json}``.
    """
    frequent, common = (int(round(num_classes * share)) for share in LVIS_V1_SHARES[:2])
    rare = num_classes - frequent - common
    params = dict(profile="lvis_like", version=GENERATOR_VERSION, seed=seed, num_train=num_train,
                  num_val=num_val, image_size=image_size, num_classes=num_classes, val_min_images=val_min_images)
    specs = lvis_like_class_specs(frequent, common, rare)
    train = lvis_like_targets(num_train, frequent, common, rare)
    val = np.maximum(val_min_images, np.round(train * num_val / num_train)).astype(np.int64)
    return generate_from_specs(root, params, specs, train, val, style=LVIS_LIKE_STYLE, force=force,
                               progress=progress, description="ltdet synthetic LVIS-like dataset")


def main(argv=None):
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic_lvis")
    parser = argparse.ArgumentParser(description="Generate ltdet's LVIS-like synthetic dataset.")
    parser.add_argument("--root", default=default_root, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    paths = generate_lvis_like(os.path.expanduser(args.root), seed=args.seed, force=args.force)
    logger.info("Done in %.1f s", time.perf_counter() - start)
    for split, path in paths.items():
        logger.info("%s: %s", split, summarize(path))


if __name__ == "__main__":
    main()
