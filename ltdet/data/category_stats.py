"""Per-category training statistics of any registered dataset.

The class-frequency priors of ltdet (EQL's f_j and λ threshold, r/c/f groups,
group APs) all come from ``get_category_stats`` (shape shorthand: C classes):

- datasets with an LVIS-format ``json_file`` in their metadata whose categories
  carry ``image_count`` and ``instance_count``: those counts (LVIS computes
  them on the train split, so a val json gives the train counts too);
- any other dataset: counts computed from ``DatasetCatalog.get(name)``
  (crowd annotations excluded).

Call it on the training dataset: ``image_freq`` divides by that dataset's
number of images; ``train_category_stats(cfg)`` does for a config. One error
policy: any failure to read the statistics raises ``CategoryStatsError``
naming the dataset; code that can do without them (the gradient-ratio hook's
class metadata, the evaluators' group APs) catches exactly that error and
logs it, code that needs them (EQL's f_j, ACSL's groups) lets it propagate.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import read_json_summary

__all__ = ["CategoryStats", "CategoryStatsError", "assign_groups", "clear_category_stats_cache",
           "get_category_stats", "group_names", "train_category_stats"]

#: Names of the frequency groups, indexed by the values of ``CategoryStats.groups``.
group_names = ("rare", "common", "frequent")

_CACHE = {}


@dataclass(frozen=True)
class CategoryStats:
    """Per-category counts of a dataset.

    Attributes:
        image_count (LongTensor[C]): images with at least one instance of the class.
        instance_count (LongTensor[C]): annotated instances of the class.
        num_images (int): images in the dataset (including images without objects).
        num_annotated_images (int): images with at least one (non-crowd) annotation.
        image_freq (FloatTensor[C]): image_count / num_annotated_images (EQL's f_j; the
            official EQL code divides by the images that have annotations:
            ``len(set(a["image_id"] for a in annotations))``).
        groups (LongTensor[C]): 0 rare, 1 common, 2 frequent (see ``group_names``).
        class_names (tuple[str]): names in contiguous-id order.
        source (str): "json" (the json's counts) or "dicts" (computed).
    """

    image_count: torch.Tensor
    instance_count: torch.Tensor
    num_images: int
    num_annotated_images: int
    image_freq: torch.Tensor
    groups: torch.Tensor
    class_names: Tuple[str, ...]
    source: str

    @property
    def num_classes(self):
        return len(self.class_names)

    def priors(self):
        """The class priors a loss may declare (``ClassificationLoss.priors``)."""
        return {"image_freq": self.image_freq, "class_groups": self.groups}


class CategoryStatsError(RuntimeError):
    """The per-class statistics of a dataset cannot be read (the message says why and how to fix it)."""


def assign_groups(image_count, rare_max=10, common_max=100):
    """LVIS frequency groups from training image counts.

    Args:
        image_count (Tensor or array[C]): training images per class.
        rare_max (int): largest image count of a rare class (LVIS: 10).
        common_max (int): largest image count of a common class (LVIS: 100).

    Returns:
        LongTensor[C]: 0 for count <= rare_max, 1 for <= common_max, 2 above.
    """
    count = torch.as_tensor(np.asarray(image_count), dtype=torch.long)
    return (count > rare_max).long() + (count > common_max).long()


def _counts_from_json(meta):
    json_file = meta.get("json_file", None)
    if json_file is None:
        return None
    summary = read_json_summary(json_file)
    categories = summary["categories"]
    if not all("image_count" in c and "instance_count" in c for c in categories):
        return None
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is None:
        id_map = {c["id"]: i for i, c in enumerate(categories)}
    image_count = np.zeros(len(categories), np.int64)
    instance_count = np.zeros(len(categories), np.int64)
    for c in categories:
        image_count[id_map[c["id"]]] = c["image_count"]
        instance_count[id_map[c["id"]]] = c["instance_count"]
    names = [None] * len(categories)
    for c in categories:
        names[id_map[c["id"]]] = c["name"]
    return dict(image_count=image_count, instance_count=instance_count, num_images=summary["num_images"],
                num_annotated_images=summary["num_annotated_images"], names=names, source="json")


def _counts_from_dicts(name, meta):
    dicts = DatasetCatalog.get(name)
    num_classes = len(meta.get("thing_classes", []))
    per_image = [
        [a["category_id"] for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        for d in dicts
    ]
    if num_classes == 0:
        num_classes = 1 + max((max(ids) for ids in per_image if ids), default=-1)
    image_count = np.zeros(num_classes, np.int64)
    instance_count = np.zeros(num_classes, np.int64)
    for ids in per_image:
        if ids and (min(ids) < 0 or max(ids) >= num_classes):
            raise ValueError(f"dataset '{name}' has category ids outside 0..{num_classes - 1}")
        np.add.at(instance_count, ids, 1)
        image_count[sorted(set(ids))] += 1
    names = [str(i) for i in range(num_classes)]
    return dict(image_count=image_count, instance_count=instance_count, num_images=len(dicts),
                num_annotated_images=sum(1 for ids in per_image if ids), names=names, source="dicts")


def get_category_stats(dataset_name, rare_max=10, common_max=100):
    """Category statistics of a registered dataset (cached per name).

    Args:
        dataset_name (str): a name registered in ``DatasetCatalog``; use the
            training set (``cfg.DATASETS.TRAIN[0]``).
        rare_max (int): ``LTDET.DATA.RARE_MAX_IMAGES``.
        common_max (int): ``LTDET.DATA.COMMON_MAX_IMAGES``.

    Returns:
        CategoryStats: fresh tensors (callers may modify them).

    Raises:
        CategoryStatsError: the dataset is not registered, its files cannot be
            read or its annotations are invalid.
    """
    if dataset_name not in _CACHE:
        if dataset_name not in DatasetCatalog.list():
            raise CategoryStatsError(
                f"dataset {dataset_name!r} is not registered (see datasets/README.md)"
            )
        try:
            meta = MetadataCatalog.get(dataset_name)
            counts = _counts_from_json(meta) or _counts_from_dicts(dataset_name, meta)
        except Exception as e:
            raise CategoryStatsError(
                f"the per-class image counts of dataset {dataset_name!r} could not be read: "
                f"{type(e).__name__}: {e}. Set the dataset up as in datasets/README.md."
            ) from e
        thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if thing_classes is not None and len(thing_classes) == len(counts["image_count"]):
            counts["names"] = list(thing_classes)
        _CACHE[dataset_name] = counts
    counts = _CACHE[dataset_name]
    image_count = torch.as_tensor(counts["image_count"].copy())
    return CategoryStats(
        image_count=image_count,
        instance_count=torch.as_tensor(counts["instance_count"].copy()),
        num_images=int(counts["num_images"]),
        num_annotated_images=int(counts["num_annotated_images"]),
        image_freq=image_count.float() / max(int(counts["num_annotated_images"]), 1),
        groups=assign_groups(image_count, rare_max, common_max),
        class_names=tuple(counts["names"]),
        source=counts["source"],
    )


def train_category_stats(cfg, purpose=""):
    """``get_category_stats`` of ``cfg.DATASETS.TRAIN[0]`` with the groups of ``cfg.LTDET.DATA``.

    Args:
        cfg: a config with ltdet's keys.
        purpose (str): what needs the statistics, e.g. "loss 'eql'", for the error message.

    Raises:
        CategoryStatsError: naming the dataset (and ``purpose``).
    """
    needed = f" ({purpose} needs them)" if purpose else ""
    if not cfg.DATASETS.TRAIN:
        raise CategoryStatsError(f"DATASETS.TRAIN is empty: no training-set class statistics{needed}")
    try:
        return get_category_stats(
            cfg.DATASETS.TRAIN[0], cfg.LTDET.DATA.RARE_MAX_IMAGES, cfg.LTDET.DATA.COMMON_MAX_IMAGES
        )
    except CategoryStatsError as e:
        raise CategoryStatsError(f"{e} [DATASETS.TRAIN[0]{needed}]") from e.__cause__


def clear_category_stats_cache():
    """Forget cached statistics (e.g. after re-registering a dataset name)."""
    _CACHE.clear()
