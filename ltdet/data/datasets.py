"""Register LVIS-format datasets through detectron2's LVIS loader.

``register_lvis_format_dataset`` works for any LVIS-format json whose category
ids are 1..C (the synthetic dataset, LVIS v0.5/v1 under another name). It
wraps detectron2's ``load_lvis_json(json_file, image_root, None)``, which maps
``category_id`` k of an annotation to the contiguous id k - 1 but copies the
image-level ``neg_category_ids`` / ``not_exhaustive_category_ids`` unchanged
(1-based). ltdet's loader converts those lists the same way (k -> k - 1), so
every id in a dataset dict is a contiguous 0..C-1 id that a head can compare
with ``gt_classes``. Note: detectron2's builtin ``lvis_v1_*`` / ``lvis_v0.5_*``
datasets keep the 1-based image-level ids in their own loader, so importing
``ltdet.data`` points those names at ltdet's loader (same json, same images,
same metadata; only the image-level ids become 0-based).

Importing ``ltdet.data`` registers ``synthetic_lt_train`` and
``synthetic_lt_val`` under ``$DETECTRON2_DATASETS/synthetic_lt`` (default
``datasets/``); only paths are registered, nothing is generated or read.
"""
import functools
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json

__all__ = [
    "SYNTHETIC_SPLITS",
    "drop_invalid_boxes",
    "invalid_box_annotations",
    "load_lvis_format_json",
    "read_json_summary",
    "read_lvis_categories",
    "register_lvis_format_dataset",
    "register_synthetic",
    "use_ltdet_loader_for_builtin_lvis",
]

#: Registered name -> json file name under the synthetic dataset's root.
SYNTHETIC_SPLITS = {"synthetic_lt_train": "train.json", "synthetic_lt_val": "val.json"}
#: The same for the LVIS-like profile (``ltdet.data.synthetic_lvis``) under ``synthetic_lvis``.
SYNTHETIC_LVIS_SPLITS = {"synthetic_lvis_train": "train.json", "synthetic_lvis_val": "val.json"}
_IMAGE_LEVEL_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


@functools.lru_cache(maxsize=16)
def _read_summary(path, mtime_ns, size):
    with open(path) as f:
        data = json.load(f)
    images = data["images"]
    ids = sorted(c["id"] for c in data["categories"])
    lvis_images = bool(images) and all("coco_url" in im and "neg_category_ids" in im for im in images)
    return {
        "categories": tuple(sorted(data["categories"], key=lambda c: c["id"])),
        "num_images": len(images),
        "num_annotated_images": len({a["image_id"] for a in data.get("annotations", [])}),
        # annotations whose [x, y, w, h] has w <= 0 or h <= 0
        "invalid_box_ids": tuple(a.get("id") for a in invalid_box_annotations(data.get("annotations", []))),
        # LVIS style: images with coco_url and image-level labels, category ids 1..C
        "lvis_format": lvis_images and ids == list(range(1, len(ids) + 1)),
    }


def read_json_summary(json_file):
    """Categories (sorted by id), number of images and whether a COCO/LVIS json is LVIS-style.

    Cached while the file is unchanged, so the loader, ``get_category_stats``
    and the tools parse a large json once for this purpose.

    Args:
        json_file (str): path to the json.

    Returns:
        dict: ``categories`` (tuple[dict]), ``num_images`` (int), ``num_annotated_images``
        (int, images with at least one annotation), ``invalid_box_ids`` (ids of annotations
        with a non-positive box size), ``lvis_format`` (bool).
    """
    path = os.path.realpath(json_file)
    stat = os.stat(path)
    return _read_summary(path, stat.st_mtime_ns, stat.st_size)


def read_lvis_categories(json_file):
    """(categories sorted by id, number of images) of a json (see ``read_json_summary``)."""
    summary = read_json_summary(json_file)
    return summary["categories"], summary["num_images"]


def invalid_box_annotations(annotations):
    """Annotations whose ``[x, y, w, h]`` box has w <= 0 or h <= 0 (or is not finite).

    Args:
        annotations (iterable[dict]): COCO/LVIS annotations or detectron2
            dataset-dict annotations in ``BoxMode.XYWH_ABS``.
    Returns:
        list[dict]: the invalid ones.
    """
    bad = []
    for a in annotations:
        box = a.get("bbox")
        if box is None:
            continue
        w, h = float(box[2]), float(box[3])
        if not (w > 0 and h > 0 and all(abs(float(v)) < float("inf") for v in box)):
            bad.append(a)
    return bad


def drop_invalid_boxes(dataset_dicts, json_file):
    """Remove annotations with a non-positive width or height from loaded dataset dicts (logged).

    detectron2 expects ``[x, y, w, h]`` with w, h > 0; a negative size would be
    mirrored into a valid-looking box by the augmentations. Images keep their
    other annotations.

    Args:
        dataset_dicts (list[dict]): detectron2 records (modified in place).
        json_file (str): their json, named in the warning.
    Returns:
        list[dict]: ``dataset_dicts``.
    """
    dropped = []
    for record in dataset_dicts:
        annotations = record.get("annotations", [])
        bad = invalid_box_annotations(annotations)
        if bad:
            ids = {id(a) for a in bad}
            record["annotations"] = [a for a in annotations if id(a) not in ids]
            dropped.extend((record.get("image_id"), a["bbox"]) for a in bad)
    if dropped:
        logging.getLogger(__name__).warning(
            f"{json_file}: dropped {len(dropped)} annotations whose box [x, y, w, h] has w <= 0 or h <= 0 "
            f"(first: image {dropped[0][0]}, bbox {dropped[0][1]})"
        )
    return dataset_dicts


def _check_contiguous(categories, json_file):
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            f"{json_file}: category ids must be 1..{len(ids)} for detectron2's LVIS loader "
            f"(it maps id k to k - 1), got {ids[:5]}..."
        )


def load_lvis_format_json(json_file, image_root, dataset_name=None):
    """Load an LVIS-format json with detectron2's ``load_lvis_json``.

    Args:
        json_file (str): LVIS-format json with category ids 1..C.
        image_root (str): directory holding the split folder named in each
            image's ``coco_url`` (``<image_root>/<split>/<file>``).
        dataset_name (str): if given, set ``thing_classes`` (the categories'
            ``name``) and, when every category has them, ``class_frequency``
            ("r"/"c"/"f"), ``class_image_count`` and ``class_instance_count``
            in its metadata.

    Returns:
        list[dict]: detectron2 dataset dicts; ``category_id``,
        ``neg_category_ids`` and ``not_exhaustive_category_ids`` are 0-based.
    """
    categories, _ = read_lvis_categories(json_file)
    _check_contiguous(categories, json_file)
    dicts = drop_invalid_boxes(load_lvis_json(json_file, os.path.join(image_root, ""), None), json_file)
    for record in dicts:
        for key in _IMAGE_LEVEL_KEYS:
            record[key] = [k - 1 for k in record[key]]
    if dataset_name is not None:
        meta = {"thing_classes": [c["name"] for c in categories]}
        for key, field in (("class_frequency", "frequency"), ("class_image_count", "image_count"),
                           ("class_instance_count", "instance_count")):
            if all(field in c for c in categories):
                meta[key] = [c[field] for c in categories]
        MetadataCatalog.get(dataset_name).set(**meta)
    return dicts


def register_lvis_format_dataset(name, json_file, image_root, metadata=None):
    """Register an LVIS-format dataset (evaluated with ``LVISEvaluator``).

    Unlike detectron2's ``register_lvis_instances``, this needs no builtin
    metadata for ``name``: ``thing_classes`` and the frequency information come
    from the json's categories when the dataset is first loaded.

    Args:
        name (str): dataset name, e.g. "synthetic_lt_train".
        json_file (str): LVIS-format json (category ids 1..C).
        image_root (str): directory holding the split folder named in each
            image's ``coco_url``; e.g. ``datasets/coco`` for real LVIS.
        metadata (dict): extra metadata to set now.
    """
    image_root = os.path.join(image_root, "")
    DatasetCatalog.register(
        name, functools.partial(load_lvis_format_json, json_file, image_root, name)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="lvis", **(metadata or {})
    )


def register_synthetic(root=None, splits=None, folder="synthetic_lt"):
    """Register ``synthetic_lt_train`` / ``synthetic_lt_val`` (or ``splits``; paths only).

    Calling it again points the names at the new root.

    Args:
        root (str): the generator's output directory; default
            ``$DETECTRON2_DATASETS/<folder>`` (``datasets/synthetic_lt``).
        splits (dict): registered name -> json file name; default ``SYNTHETIC_SPLITS``.
        folder (str): the default root's folder under ``$DETECTRON2_DATASETS``.
    """
    if root is None:
        root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), folder)
    for name, json_name in (splits or SYNTHETIC_SPLITS).items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_lvis_format_dataset(name, os.path.join(root, json_name), root)


def use_ltdet_loader_for_builtin_lvis():
    """Load detectron2's builtin LVIS datasets with ``load_lvis_format_json``.

    detectron2 registers ``lvis_v1_*`` / ``lvis_v0.5_*`` (paths under
    ``$DETECTRON2_DATASETS``) with a loader that leaves ``neg_category_ids`` and
    ``not_exhaustive_category_ids`` 1-based; ltdet's heads expect every id in a
    dataset dict to be 0-based, so the loader (only) is swapped. The builtin
    metadata (``thing_classes``, ``json_file``, ``image_root``) is kept.
    """
    from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_LVIS

    for version in ("lvis_v1", "lvis_v0.5"):
        for name in _PREDEFINED_SPLITS_LVIS[version]:
            if name not in DatasetCatalog.list():
                continue
            meta = MetadataCatalog.get(name)
            DatasetCatalog.remove(name)
            DatasetCatalog.register(
                name, functools.partial(load_lvis_format_json, meta.json_file, meta.image_root, None)
            )


register_synthetic()
register_synthetic(splits=SYNTHETIC_LVIS_SPLITS, folder="synthetic_lvis")
use_ltdet_loader_for_builtin_lvis()
