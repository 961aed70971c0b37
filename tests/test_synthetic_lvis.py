"""The LVIS-like synthetic profile (ltdet.data.synthetic_lvis): class proportions, imbalance, exact image
counts, confusable classes, determinism, registration."""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest

from ltdet.data.synthetic_lvis import (
    LVIS_V1_SHARES,
    generate_lvis_like,
    lvis_like_class_specs,
    lvis_like_targets,
)

SMALL = dict(num_classes=30, num_train=600, num_val=200, val_min_images=20, progress=False)


def test_default_profile_is_as_imbalanced_as_lvis():
    frequent, common, rare = 101, 115, 84
    assert (frequent, common, rare) == tuple(int(round(300 * s)) for s in LVIS_V1_SHARES[:2]) + (300 - 216,)
    targets = lvis_like_targets(20000, frequent, common, rare)
    groups = np.repeat([2, 1, 0], [frequent, common, rare])
    # LVIS's definition: rare <= 10 training images, common 11-100, frequent > 100
    assert targets[groups == 0].max() == 10 and targets[groups == 0].min() == 1
    assert targets[groups == 1].min() == 11 and targets[groups == 1].max() == 100
    assert targets[groups == 2].min() > 100
    # a rare class is in well under 0.1% of the training images (LVIS v1: 1-10 of 100k)
    assert targets[groups == 0].max() / 20000 < 0.001
    assert targets.max() / targets.min() >= 4000


def test_class_specs_are_distinct_and_a_share_is_confusable():
    specs = lvis_like_class_specs(101, 115, 84)
    assert len(specs) == len(set(specs)) == 300
    frequent = specs[:101]
    frequent_shapes_colours = {(shape, colour) for shape, colour, _ in frequent}
    tail = specs[101:]
    marked = [s for s in tail if s[2]]  # a frequent class's object with a mark
    shaded = [s for s in tail if not s[2] and s[0] in {f[0] for f in frequent} and (s[0], s[1]) not in frequent_shapes_colours]
    assert all((shape, colour) in frequent_shapes_colours for shape, colour, _ in marked)
    assert len(marked) > 30 and len(shaded) > 30
    assert lvis_like_class_specs(101, 115, 84) == specs  # the profile is fixed


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_lvis"))
    return root, generate_lvis_like(root, **SMALL)


def test_generated_counts_match_the_profile(small_profile):
    _, paths = small_profile
    with open(paths["train"]) as f:
        train = json.load(f)
    categories = sorted(train["categories"], key=lambda c: c["id"])
    targets = lvis_like_targets(600, 10, 11, 9)
    assert [c["image_count"] for c in categories] == targets.tolist()
    images_per_class = Counter()
    for image_id, category_id in {(a["image_id"], a["category_id"]) for a in train["annotations"]}:
        images_per_class[category_id] += 1
    assert [images_per_class[c["id"]] for c in categories] == targets.tolist()
    assert Counter(c["frequency"] for c in categories) == {"f": 10, "c": 11, "r": 9}
    per_image = Counter(a["image_id"] for a in train["annotations"])
    assert max(per_image.values()) <= 8 and np.mean(list(per_image.values())) > 2
    with open(paths["val"]) as f:
        val = json.load(f)
    val_images = Counter(c for _, c in {(a["image_id"], a["category_id"]) for a in val["annotations"]})
    assert min(val_images[c["id"]] for c in categories) >= SMALL["val_min_images"]
    assert all(os.path.isfile(os.path.join(os.path.dirname(paths["val"]), "val", im["file_name"]))
               for im in val["images"][:20])


def test_generation_is_deterministic_and_skipped_when_up_to_date(small_profile, tmp_path):
    root, paths = small_profile
    mtime = os.path.getmtime(paths["train"])
    assert generate_lvis_like(root, **SMALL) == paths and os.path.getmtime(paths["train"]) == mtime
    again = generate_lvis_like(str(tmp_path / "again"), **SMALL)
    for split in ("train", "val"):
        assert _digest(again[split]) == _digest(paths[split])
    other_seed = generate_lvis_like(str(tmp_path / "seed1"), seed=1, **SMALL)
    assert _digest(other_seed["train"]) != _digest(paths["train"])


def test_lvis_like_splits_are_registered():
    from detectron2.data import MetadataCatalog

    import ltdet  # noqa: F401

    for name, json_name in (("synthetic_lvis_train", "train.json"), ("synthetic_lvis_val", "val.json")):
        assert MetadataCatalog.get(name).json_file.endswith(os.path.join("synthetic_lvis", json_name))
