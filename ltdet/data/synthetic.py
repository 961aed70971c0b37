"""Deterministic synthetic long-tailed detection dataset in LVIS json format.

``python -m ltdet.data.synthetic [--root datasets/synthetic_lt] [--seed 0] [--force]``
writes ``train.json``, ``val.json``, ``train/*.png`` and ``val/*.png`` under the
root. The same seed and parameters give byte-identical files; a second run with
the same parameters is skipped unless ``--force``. No BLAS routine computes any
value: OpenBLAS picks its kernels by CPU and sums in their order (``np.dot`` made
the json's areas depend on the machine, see ``GENERATOR_VERSION``).

Images are 128x128 RGB with a textured, noisy background and 1-5 filled shapes
(12-50 px, overlapping a little), drawn from the same polygons that the
annotations store as ``segmentation``. Class profile of the default dataset
(1000 train / 300 val images, 40 classes), with LVIS's groups computed from the
generated train split (rare: 1-10 train images, common: 11-100, frequent: >100)
and geometric (Zipf-like) image counts within each group (``class_image_targets``):

========  =====  =======  ==================  ====================
group     ids    classes  train images/class  val images/class
========  =====  =======  ==================  ====================
frequent  1-6    6        420 ... 110         126 ... 33
common    7-22   16       95 ... 12           28 ... 8
rare      23-40  18       10 ... 2            8
========  =====  =======  ==================  ====================

Frequent classes: red_circle, blue_square, green_triangle, yellow_star,
purple_cross, orange_ring. Visually confusable tail classes share a frequent
class's shape and differ only in shade or by a small mark (ACSL's motivation):
maroon_circle, light_red_circle, red_circle_dot (red_circle); blue_square_dot,
navy_square, blue_square_bar (blue_square); lime_triangle, green_triangle_bar,
green_triangle_dot (green_triangle); gold_star, yellow_star_dot (yellow_star);
violet_cross, purple_cross_dot (purple_cross); dark_orange_ring, red_ring
(orange_ring). Other tail classes use other shapes or colours.

Images: ``neg_category_ids`` is a random subset (each absent class with a
per-image probability of 0.3-0.7) of the classes absent from the image;
about 3% of the images with objects also show an unannotated instance of a
present class, cut by the image border (``not_exhaustive_category_ids``).
1% of the train images and 20 val images have no objects. Every class has at
least 8 val images. The val json keeps the train-derived ``frequency``,
``image_count`` and ``instance_count``.
"""
import argparse
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

__all__ = ["CLASS_SPECS", "RenderStyle", "class_image_targets", "class_name", "generate", "summarize", "main"]

logger = logging.getLogger(__name__)

# LVIS's frequency groups: rare <= 10 training images, common <= 100, frequent above.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100
#: 2: the polygon's rotation and area without BLAS; the area in exact arithmetic (version 1's ``np.dot``
#: shoelace area differed by 0.01 in 173 of the 121,868 LVIS-like train annotations between OpenBLAS's
#: Haswell and SkylakeX kernels).
GENERATOR_VERSION = 2
_NOT_EXHAUSTIVE_PROB = 0.03
_IMAGE_NAME = re.compile(r"^\d{12}\.png$")

_COLOURS = {
    "red": (215, 40, 40), "maroon": (125, 20, 30), "light_red": (240, 115, 100),
    "blue": (40, 80, 215), "navy": (20, 30, 120), "sky": (120, 185, 245),
    "green": (40, 160, 60), "lime": (150, 220, 70), "yellow": (230, 205, 40),
    "gold": (200, 140, 25), "purple": (140, 55, 185), "violet": (200, 135, 235),
    "orange": (240, 130, 30), "dark_orange": (175, 85, 15), "brown": (125, 75, 35),
    "cyan": (40, 200, 215), "teal": (0, 120, 125), "pink": (240, 110, 180),
    "magenta": (210, 40, 160), "white": (240, 240, 240), "black": (25, 25, 25),
    "olive": (125, 125, 20), "salmon": (250, 150, 120),
}

# (shape, colour, mark) per class, in id order; mark is "" or "<dot|bar>:<colour>".
# The class name is "<colour>_<shape>[_<dot|bar>]" (``class_name``).
_FREQUENT = (
    ("circle", "red", ""), ("square", "blue", ""), ("triangle", "green", ""),
    ("star", "yellow", ""), ("cross", "purple", ""), ("ring", "orange", ""),
)
_COMMON = (
    ("circle", "maroon", ""), ("diamond", "cyan", ""), ("square", "blue", "dot:white"),
    ("hexagon", "pink", ""), ("triangle", "lime", ""), ("pentagon", "brown", ""),
    ("circle", "white", ""), ("star", "gold", ""), ("semicircle", "teal", ""),
    ("cross", "black", ""), ("trapezoid", "salmon", ""), ("arrow", "sky", ""),
    ("triangle", "green", "bar:black"), ("octagon", "olive", ""), ("diamond", "magenta", ""),
    ("ring", "dark_orange", ""),
)
_RARE = (
    ("circle", "red", "dot:white"), ("square", "navy", ""), ("star", "yellow", "dot:black"),
    ("cross", "violet", ""), ("cross", "purple", "dot:white"),
    ("triangle", "green", "dot:white"), ("ring", "red", ""), ("square", "blue", "bar:white"),
    ("star", "pink", ""), ("hexagon", "cyan", ""), ("triangle", "white", ""),
    ("circle", "black", ""), ("pentagon", "lime", ""), ("circle", "light_red", ""),
    ("semicircle", "magenta", ""), ("arrow", "olive", ""), ("octagon", "teal", ""),
    ("trapezoid", "gold", ""),
)
#: Class specs per group, in category-id order within the default dataset.
CLASS_SPECS = {"f": _FREQUENT, "c": _COMMON, "r": _RARE}


@dataclass(frozen=True)
class RenderStyle:
    """How a split's images are planned and drawn (the default is the embedded dataset's).

    Attributes:
        max_objects (int): most distinct classes (and instances) per image.
        colour_jitter (int): +- range of each RGB channel of an object's fill.
        rotate (bool): rotate every object by a random angle (intra-class variation).
        neg_fraction (tuple[float, float]): range of the per-image probability that an absent
            class is listed in ``neg_category_ids``.
        object_size (tuple[float, float]): object sides in pixels at 128 px (scaled with the image).
    """

    max_objects: int = 5
    colour_jitter: int = 8
    rotate: bool = False
    neg_fraction: Tuple[float, float] = (0.3, 0.7)
    object_size: Tuple[float, float] = (12.0, 50.0)


DEFAULT_STYLE = RenderStyle()


def _rgb(colour):
    """A named colour of ``_COLOURS``, or "rgb_R_G_B"."""
    if colour in _COLOURS:
        return _COLOURS[colour]
    _, r, g, b = colour.split("_")
    return int(r), int(g), int(b)


def class_name(spec):
    """Name of a class spec (shape, colour, mark), e.g. "blue_square_dot"."""
    shape, colour, mark = spec
    return f"{colour}_{shape}" + (f"_{mark.split(':')[0]}" if mark else "")


def _regular(n, radius=1.0, start_deg=-90.0):
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _unit_shapes():
    """Polygons (K x 2, inside [-1, 1]^2, y down) and the centre of each shape's mark."""
    w = 0.33
    star = _regular(10)
    star[1::2] *= 0.45
    ring_outer = _regular(32, 1.0, 0.0)
    ring_inner = _regular(32, 0.55, 0.0)
    # keyhole polygon: outer circle, a zero-width bridge at angle 0, the hole reversed
    ring = np.concatenate([ring_outer, ring_outer[:1], ring_inner[:1], ring_inner[:0:-1],
                           ring_inner[:1]])
    half = np.stack([np.cos(np.linspace(np.pi, 2 * np.pi, 17)),
                     np.sin(np.linspace(np.pi, 2 * np.pi, 17)) + 0.5], axis=1)
    polys = {
        "circle": _regular(32),
        "square": np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]]),
        "triangle": np.array([[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]]),
        "diamond": np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
        "pentagon": _regular(5),
        "hexagon": _regular(6, 1.0, 0.0),
        "octagon": _regular(8, 1.0, 22.5),
        "star": star,
        "cross": np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
                           [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=float),
        "ring": ring,
        "semicircle": half,
        "trapezoid": np.array([[-0.5, -0.7], [0.5, -0.7], [1.0, 0.7], [-1.0, 0.7]]),
        "arrow": np.array([[-1, -0.28], [0.15, -0.28], [0.15, -0.7], [1, 0], [0.15, 0.7],
                           [0.15, 0.28], [-1, 0.28]]),
    }
    centres = {"triangle": (0.0, 0.21), "semicircle": (0.0, 0.2)}
    return polys, centres


_SHAPES, _MARK_CENTRES = _unit_shapes()


def class_image_targets(num_train, num_frequent, num_common, num_rare):
    """Number of train images of each class: geometric within each LVIS group.

    Frequent classes go from ``0.42 * num_train`` (at least 110) down to 110,
    common from 95 to 12 and rare from 10 to 2 training images.

    Returns:
        np.ndarray: int64[C], C = num_frequent + num_common + num_rare, in id order.
    """
    top = max(110, int(round(0.42 * num_train)))
    parts = [np.geomspace(top, 110, num_frequent), np.geomspace(95, 12, num_common),
             np.geomspace(10, 2, num_rare)]
    return np.concatenate(parts).round().astype(np.int64)


def _plan_split(rng, targets, num_images, num_empty, max_objects=5):
    """Choose the object classes of every image of a split.

    Each class c lands in exactly ``targets[c]`` distinct images (so its image
    count is exact); images then get a few extra instances of their classes.

    Returns:
        list[list[int]]: 0-based class indices per image (empty for empty images).
    """
    rows = np.setdiff1d(np.arange(num_images), rng.choice(num_images, num_empty, replace=False))
    total = int(targets.sum())
    if len(rows) == 0 or targets.max() > len(rows) or total > max_objects * len(rows):
        raise ValueError(f"{num_images} images ({num_empty} empty) cannot hold the class "
                         f"profile ({total} class occurrences, at most {targets.max()} per class)")
    mean = min(float(max_objects), 1.3 * total / len(rows))
    remaining = 1 + rng.binomial(max_objects - 1, (mean - 1.0) / (max_objects - 1), size=len(rows))
    classes = [[] for _ in rows]
    for c in np.argsort(-targets, kind="stable"):
        avail = np.flatnonzero(remaining > 0)
        if len(avail) < targets[c]:
            raise ValueError(f"not enough room left for class {c} ({targets[c]} images)")
        weights = remaining[avail].astype(np.float64)
        for r in rng.choice(avail, int(targets[c]), replace=False, p=weights / weights.sum()):
            classes[r].append(int(c))
            remaining[r] -= 1
    for r in range(len(rows)):
        donors = [d for d, cs in enumerate(classes) if len(cs) >= 2] if not classes[r] else []
        if donors:
            d = donors[rng.integers(len(donors))]
            classes[r].append(classes[d].pop(rng.integers(len(classes[d]))))
    plan = [[] for _ in range(num_images)]
    for r, row_classes in zip(rows, classes):
        objs = list(row_classes)
        extra = min(rng.choice(3, p=[0.6, 0.3, 0.1]), max_objects - len(objs))
        if objs and extra > 0:
            w = targets[objs].astype(np.float64)
            objs += [objs[i] for i in rng.choice(len(objs), extra, p=w / w.sum())]
        plan[r] = [objs[i] for i in rng.permutation(len(objs))]
    return plan


def _background(rng, size):
    base = rng.uniform(85, 165) + rng.normal(0.0, 12.0, 3)
    coarse = np.clip(128 + rng.normal(0.0, 22.0, (5, 5, 3)), 0, 255).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    grid = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    phase = grid[:, None] * np.float32(np.sin(theta)) + grid[None, :] * np.float32(np.cos(theta))
    bg = (blotches + np.float32(base - 128.0)) + 8.0 * np.sin(phase)[..., None]
    return Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))


def _draw(draw, rng, spec, box, style=DEFAULT_STYLE):
    """Draw one object; returns its polygon (K x 2, pixel coordinates)."""
    shape, colour, mark = spec
    unit = _SHAPES[shape]
    if style.rotate:
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        unit = np.stack([unit[:, 0] * cos - unit[:, 1] * sin, unit[:, 0] * sin + unit[:, 1] * cos], axis=1)
    poly = np.round(unit * box[2:] + box[:2], 2)
    jitter = style.colour_jitter
    fill = tuple(int(v) for v in np.clip(np.add(_rgb(colour), rng.integers(-jitter, jitter + 1, 3)), 0, 255))
    draw.polygon([tuple(p) for p in poly], fill=fill)
    if mark:
        kind, mark_colour = mark.split(":")
        mx, my = np.add(box[:2], np.multiply(_MARK_CENTRES.get(shape, (0.0, 0.0)), box[2:]))
        rx, ry = np.multiply((0.3, 0.3) if kind == "dot" else (0.5, 0.14), box[2:])
        (draw.ellipse if kind == "dot" else draw.rectangle)(
            [mx - rx, my - ry, mx + rx, my + ry], fill=_rgb(mark_colour))
    return poly


def _max_iou(box, boxes):
    if not boxes:
        return 0.0
    b = np.array(boxes)
    wh = np.clip(np.minimum(box[2:], b[:, 2:]) - np.maximum(box[:2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return float((inter / ((box[2] - box[0]) * (box[3] - box[1]) + areas - inter)).max())


def _place(rng, size, boxes, num_objects, style=DEFAULT_STYLE):
    """Sample (cx, cy, hx, hy) inside the image, overlapping earlier boxes by IoU < 0.1."""
    scale = size / 128.0
    small, large = style.object_size
    lo, hi = small * scale, (large if num_objects <= 3 else 0.8 * large) * scale
    for attempt in range(40):
        s, aspect = rng.uniform(lo, hi), rng.uniform(0.85, 1.15)
        hx, hy = s / 2 * np.sqrt(aspect), s / 2 / np.sqrt(aspect)
        cx, cy = rng.uniform(hx + 1, size - hx - 1), rng.uniform(hy + 1, size - hy - 1)
        xyxy = np.array([cx - hx, cy - hy, cx + hx, cy + hy])
        if _max_iou(xyxy, boxes) < 0.1:
            break
        if attempt % 10 == 9:
            hi = max(lo, 0.75 * hi)
    boxes.append(xyxy)
    return np.array([cx, cy, hx, hy])


def _cropped_box(rng, size):
    """A box cut by a random image border, 35-60% of it visible."""
    s = rng.uniform(24, 44) * size / 128.0
    h, v = s / 2, rng.uniform(0.35, 0.6)
    along, across = rng.uniform(h, size - h), h * (2 * v - 1)
    edge = rng.integers(4)
    across = across if edge < 2 else size - across
    return np.array((across, along, h, h) if edge % 2 == 0 else (along, across, h, h))


def _render(rng, size, objs, specs, style=DEFAULT_STYLE):
    """Render one image; returns (image, [(class, polygon)], neg ids, not-exhaustive ids)."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    boxes, not_exhaustive = [], []
    if objs and rng.random() < _NOT_EXHAUSTIVE_PROB:
        c = objs[rng.integers(len(objs))]
        box = _cropped_box(rng, size)
        _draw(draw, rng, specs[c], box, style)
        boxes.append(np.concatenate([box[:2] - box[2:], box[:2] + box[2:]]))
        not_exhaustive = [c]
    anns = [(c, _draw(draw, rng, specs[c], _place(rng, size, boxes, len(objs), style), style)) for c in objs]
    pixels = np.asarray(image, np.float32) + 5.0 * rng.standard_normal((size, size, 3), np.float32)
    absent = np.array(sorted(set(range(len(specs))) - set(objs)), np.int64)
    neg = absent[rng.random(len(absent)) < rng.uniform(*style.neg_fraction)].tolist()
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return image, anns, neg, not_exhaustive


def _polygon_area(poly):
    """Area of a polygon with 2-decimal coordinates, rounded to 2 decimals (half to even), in exact
    integer arithmetic: the shoelace sum of the coordinates in hundredths, so no summation order (a
    BLAS kernel's, a SIMD width's) can move a value that lies on a rounding tie, as 0.5% of them do."""
    q = np.rint(np.asarray(poly, np.float64) * 100).astype(np.int64)
    twice = int((q[:, 0] * np.roll(q[:, 1], -1) - q[:, 1] * np.roll(q[:, 0], -1)).sum())
    return float(round(Fraction(abs(twice), 20000), 2))


def _annotation(ann_id, image_id, category_id, poly):
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
        "area": _polygon_area(poly), "segmentation": [[float(v) for v in poly.reshape(-1)]],
    }


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _is_complete(root, params):
    try:
        datasets = [_read_json(os.path.join(root, f"{s}.json")) for s in ("train", "val")]
    except (OSError, ValueError):
        return False
    return all(d.get("info", {}).get("generator") == params and all(
        os.path.isfile(os.path.join(root, img["coco_url"])) for img in d["images"]
    ) for d in datasets)


def _categories(specs, train_annotations):
    """LVIS categories with frequency and counts computed from the train annotations."""
    image_sets = [set() for _ in specs]
    instance_count = np.zeros(len(specs), np.int64)
    for ann in train_annotations:
        image_sets[ann["category_id"] - 1].add(ann["image_id"])
        instance_count[ann["category_id"] - 1] += 1
    categories = []
    for c, (shape, colour, mark) in enumerate(specs):
        name, count = class_name(specs[c]), len(image_sets[c])
        marked = f" with a {mark.replace(':', ' of colour ')}" if mark else ""
        frequency = "r" if count <= RARE_MAX_IMAGES else "c" if count <= COMMON_MAX_IMAGES else "f"
        categories.append({
            "id": c + 1, "name": name, "synonyms": [name], "synset": f"{name}.n.01",
            "def": f"a filled {colour.replace('_', ' ')} {shape}{marked}",
            "frequency": frequency, "image_count": count,
            "instance_count": int(instance_count[c]),
        })
    return categories


def _make_image(root, seed, image_size, specs, style, split, code, index, objs):
    """Render and save one image (its own random stream); returns (image dict, anns)."""
    image_id = index + 1 + code * 1_000_000
    image, anns, neg, not_exhaustive = _render(
        np.random.default_rng([seed, code, index]), image_size, objs, specs, style)
    file_name = f"{image_id:012d}.png"
    image.save(os.path.join(root, split, file_name), format="PNG", compress_level=1)
    return {
        "id": image_id, "file_name": file_name, "coco_url": f"{split}/{file_name}",
        "height": image_size, "width": image_size,
        "neg_category_ids": [c + 1 for c in neg],
        "not_exhaustive_category_ids": [c + 1 for c in not_exhaustive],
    }, anns


def generate(root, seed=0, num_train=1000, num_val=300, image_size=128, num_frequent=6,
             num_common=16, num_rare=18, val_min_images=8, force=False, progress=True):
    """Generate the dataset under ``root`` (skipped if already there with these parameters).

    Args:
        root (str): output directory (``train.json``, ``val.json``, ``train/``, ``val/``).
        seed (int): everything (plan, shapes, noise) derives from it.
        num_train, num_val (int): number of images per split; 1% of the train
            images (at least 1) and ``num_val // 15`` val images are empty.
        image_size (int): side of the square images; object sizes scale with it.
        num_frequent, num_common, num_rare (int): classes taken from the front of
            each group of ``CLASS_SPECS`` (at most 6, 16 and 18).
        val_min_images (int): smallest number of val images of any class.
        force (bool): regenerate even if the same parameters were generated.
        progress (bool): show a tqdm progress bar.

    Returns:
        dict: ``{"train": path of train.json, "val": path of val.json}``.
    """
    params = dict(version=GENERATOR_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                  image_size=image_size, num_frequent=num_frequent, num_common=num_common,
                  num_rare=num_rare, val_min_images=val_min_images)
    specs = _FREQUENT[:num_frequent] + _COMMON[:num_common] + _RARE[:num_rare]
    train_targets = class_image_targets(num_train, num_frequent, num_common, num_rare)
    val_targets = np.maximum(val_min_images, np.round(train_targets * num_val / num_train))
    return generate_from_specs(root, params, specs, train_targets, val_targets.astype(np.int64), force=force,
                               progress=progress)


def generate_from_specs(root, params, specs, train_targets, val_targets, style=DEFAULT_STYLE, force=False,
                        progress=True, description="ltdet synthetic long-tailed dataset"):
    """Plan, render and write both splits for class ``specs`` and their per-split image counts.

    Args:
        root (str): output directory.
        params (dict): the generator parameters (``seed``, ``num_train``, ``num_val``,
            ``image_size``, ...), stored in the jsons; an existing dataset with the same
            parameters is kept unless ``force``.
        specs (list): (shape, colour, mark) per class, in id order.
        train_targets, val_targets (int64[C]): images of each class per split.
        style (RenderStyle): how images are planned and drawn.
    Returns:
        dict: ``{"train": path of train.json, "val": path of val.json}``.
    """
    if style != DEFAULT_STYLE:
        params = dict(params, style=asdict(style))
    params = json.loads(json.dumps(params))  # as stored in the json (tuples become lists)
    seed, num_train, num_val, image_size = (params[k] for k in ("seed", "num_train", "num_val", "image_size"))
    paths = {s: os.path.join(root, f"{s}.json") for s in ("train", "val")}
    if not force and _is_complete(root, params):
        logger.info("Synthetic dataset already generated in %s (use --force to redo)", root)
        return paths
    plans = {
        "train": _plan_split(np.random.default_rng([seed, 0]), train_targets, num_train,
                             max(1, num_train // 100), style.max_objects),
        "val": _plan_split(np.random.default_rng([seed, 1]), val_targets, num_val, num_val // 15,
                           style.max_objects),
    }
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        stale = [os.path.join(folder, n) for n in os.listdir(folder) if _IMAGE_NAME.match(n)]
        for path in [paths[split]] + stale:
            if os.path.exists(path):
                os.remove(path)
    tasks = [(split, code, index, objs) for code, split in enumerate(("train", "val"))
             for index, objs in enumerate(plans[split])]
    splits = {"train": ([], []), "val": ([], [])}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda t: _make_image(root, seed, image_size, specs, style, *t), tasks)
        for (split, _, _, _), (image, anns) in tqdm(
                zip(tasks, results), total=len(tasks), desc=os.path.basename(root) or "synthetic",
                disable=not progress):
            images, annotations = splits[split]
            images.append(image)
            for c, poly in anns:
                annotations.append(_annotation(len(annotations) + 1, image["id"], c + 1, poly))
    categories = _categories(specs, splits["train"][1])
    for split in ("val", "train"):
        images, annotations = splits[split]
        data = {"info": {"description": f"{description}, {split} split", "generator": params},
                "licenses": [], "categories": categories, "images": images,
                "annotations": annotations}
        with open(paths[split] + ".tmp", "w") as f:
            f.write(json.dumps(data, separators=(",", ":")))
        os.replace(paths[split] + ".tmp", paths[split])
    return paths


def summarize(json_file):
    """Count images, empty images, instances and r/c/f classes of an LVIS json."""
    data = _read_json(json_file)
    non_empty = {a["image_id"] for a in data["annotations"]}
    groups = {g: sum(c["frequency"] == g for c in data["categories"]) for g in "rcf"}
    return {"images": len(data["images"]), "empty_images": len(data["images"]) - len(non_empty),
            "instances": len(data["annotations"]), "classes": groups}


def main(argv=None):
    """Command line entry point (see the module docstring)."""
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic_lt")
    parser = argparse.ArgumentParser(description="Generate ltdet's synthetic LVIS-format dataset.")
    parser.add_argument("--root", default=default_root, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    paths = generate(os.path.expanduser(args.root), seed=args.seed, num_train=args.num_train,
                     num_val=args.num_val, force=args.force)
    logger.info("Done in %.1f s", time.perf_counter() - start)
    for split, path in paths.items():
        logger.info("%s: %s", split, json.dumps(summarize(path)))


if __name__ == "__main__":
    main()
