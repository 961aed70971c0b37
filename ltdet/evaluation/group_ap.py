"""Frequency-group APs: AP1 (the rarest fifth of the classes) ... AP5 (the most frequent).

EQL, EQLv2 and EFL report AP on Open Images in five groups of classes of equal
size, sorted by their number of training images (or instances).
``COCOGroupEvaluator`` is detectron2's COCO evaluator plus these metrics:
``results[task]["AP1"]`` ... ``["AP5"]`` (so ``bbox/AP1`` in metrics.json and
TensorBoard, through detectron2's ``EvalHook``) and a table in the log, and
APr/APc/APf with LVIS's rules applied to the training image counts
(``LTDET.DATA.RARE_MAX_IMAGES`` / ``COMMON_MAX_IMAGES``). LVIS-format datasets
use ``LongTailLVISEvaluator`` (``lvis_evaluator.py``), which takes the same
groups from this module.

Groups: classes sorted by training image (or instance) count
(``get_category_stats`` of the training split; ties keep class-id order),
``np.array_split`` into five. A
group's AP is computed as the ``lvis`` API computes APr: the mean of the
precision entries of the group's classes over IoU thresholds and recall points
(area "all", the largest detections-per-image limit), entries of classes
without ground truth (-1) excluded; NaN for a group without such entries.

Per-category precision: ``COCOEvaluator`` hands its ``COCOeval`` to
``_derive_coco_results``, which the subclass extends (one pass).

Shape shorthand: T IoU thresholds, R recall points, K evaluated categories,
A area ranges, C training classes.
"""
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from detectron2.evaluation import COCOEvaluator
from tabulate import tabulate

from ltdet.data.category_stats import CategoryStatsError, get_category_stats, group_names
from ltdet.data.datasets import read_json_summary

__all__ = [
    "COCOGroupEvaluator",
    "ClassGroups",
    "NUM_FREQUENCY_GROUPS",
    "class_groups_from_stats",
    "group_average_precision",
    "load_class_groups",
    "split_frequency_groups",
]

logger = logging.getLogger(__name__)

#: Number of equal-size frequency groups (AP1 .. AP5).
NUM_FREQUENCY_GROUPS = 5
_LVIS_GROUP_METRICS = {"rare": "APr", "common": "APc", "frequent": "APf"}


def split_frequency_groups(image_count, num_groups=NUM_FREQUENCY_GROUPS):
    """Split classes into ``num_groups`` equal groups by training image count.

    Args:
        image_count (array-like[C]): training images per class.
        num_groups (int): number of groups.

    Returns:
        ndarray[C] int64: 0 for the rarest group ... ``num_groups - 1``; classes
        are sorted by count (stable: ties keep id order) and ``np.array_split``.
    """
    count = np.asarray(image_count)
    groups = np.empty(len(count), np.int64)
    for g, members in enumerate(np.array_split(np.argsort(count, kind="stable"), num_groups)):
        groups[members] = g
    return groups


@dataclass(frozen=True)
class ClassGroups:
    """Named groups of training classes, each reported as one AP.

    Attributes:
        names (tuple[str]): metric names, e.g. ("AP1", ..., "AP5").
        members (tuple[ndarray]): contiguous class ids of each group.
        counts (ndarray[C]): training images (or instances, see ``by``) per class.
        train_dataset (str): the dataset the counts come from.
        by (str): "image" or "instance", what ``counts`` counts.
    """

    names: Tuple[str, ...]
    members: Tuple[np.ndarray, ...]
    counts: np.ndarray
    train_dataset: str
    by: str = "image"

    @property
    def num_classes(self):
        return len(self.counts)

    def table(self, aps):
        """A text table: group, number of classes, training count range, AP.

        Args:
            aps (dict[str, float]): AP per group name.
        """
        rows = []
        for name, members in zip(self.names, self.members):
            counts = self.counts[members]
            span = f"{counts.min()}-{counts.max()}" if len(counts) else "-"
            rows.append((name, len(members), span, aps.get(name, float("nan"))))
        return tabulate(rows, headers=["group", "classes", f"train {self.by}s", "AP"], tablefmt="pipe",
                        floatfmt=".3f", numalign="left")


#: What AP1..AP5 group classes by (``LTDET.EVAL.FREQUENCY_GROUPS_BY``).
GROUP_COUNTS = ("image", "instance")


def class_groups_from_stats(stats, num_groups=NUM_FREQUENCY_GROUPS, lvis_groups=False, train_dataset="", by="image"):
    """``ClassGroups`` from ``CategoryStats``.

    Args:
        stats (CategoryStats): statistics of the training split.
        num_groups (int): number of equal-size groups (AP1 .. AP<num_groups>).
        lvis_groups (bool): also APr/APc/APf from ``stats.groups``.
        train_dataset (str): name of the training split (for the log).
        by (str): sort classes by training "image" count (EQL) or "instance"
            count (EQLv2 Sec. 4.9, EFL Sec. 4.5 on Open Images).
    """
    if by not in GROUP_COUNTS:
        raise ValueError(f"LTDET.EVAL.FREQUENCY_GROUPS_BY must be one of {GROUP_COUNTS}, got {by!r}")
    counts = (stats.image_count if by == "image" else stats.instance_count).numpy()
    five = split_frequency_groups(counts, num_groups)
    names = [f"AP{g + 1}" for g in range(num_groups)]
    members = [np.flatnonzero(five == g) for g in range(num_groups)]
    if lvis_groups:
        rcf = stats.groups.numpy()
        names += [_LVIS_GROUP_METRICS[n] for n in group_names]
        members += [np.flatnonzero(rcf == g) for g in range(len(group_names))]
    return ClassGroups(tuple(names), tuple(members), counts, train_dataset, by)


def load_class_groups(train_dataset, rare_max=10, common_max=100, lvis_groups=False, by="image"):
    """``ClassGroups`` of a registered training split, or None (logged) if unavailable.

    Args:
        train_dataset (str or None): e.g. ``cfg.DATASETS.TRAIN[0]``.
        rare_max, common_max (int): r/c/f thresholds (``LTDET.DATA``).
        lvis_groups (bool): also APr/APc/APf.
    """
    if not train_dataset:
        logger.warning("No training dataset given: frequency-group APs are skipped.")
        return None
    try:
        stats = get_category_stats(train_dataset, rare_max, common_max)
    except CategoryStatsError as e:
        logger.warning(f"{e}: frequency-group APs are skipped.")
        return None
    return class_groups_from_stats(stats, lvis_groups=lvis_groups, train_dataset=train_dataset, by=by)


def group_average_precision(precision, indices):
    """AP (0-100) of a group of categories, as the ``lvis`` API's APr.

    Args:
        precision (ndarray[T, R, K, A]): ``LVISEval.eval["precision"]``, or
            ``COCOeval.eval["precision"][..., -1]``; -1 = no ground truth.
        indices (array-like[int]): category positions k of the group.

    Returns:
        float: mean of the group's valid entries (area "all") x 100, NaN if none.
    """
    values = precision[:, :, np.asarray(indices, dtype=np.int64), 0]
    values = values[values > -1]
    return float(values.mean() * 100) if values.size else float("nan")


def ground_truth_frequency_groups(json_file, by="image"):
    """AP1..AP5 and r/c/f groups of dataset category ids from an LVIS json's own categories.

    Args:
        json_file (str): LVIS-format json whose categories carry ``image_count`` /
            ``instance_count`` (of the training split, as LVIS's val json) and ``frequency``.
        by (str): "image" or "instance" count.
    Returns:
        (dict name -> ids for AP1..AP5 (empty without counts), dict "r"/"c"/"f" -> ids).
    """
    categories = read_json_summary(json_file)["categories"]
    pools = {f: [c["id"] for c in categories if c.get("frequency") == f] for f in "rcf"}
    field = f"{by}_count"
    if not categories or not all(field in c for c in categories):
        return {}, pools
    ids = np.array([c["id"] for c in categories])
    five = split_frequency_groups([c[field] for c in categories])
    return {f"AP{g + 1}": ids[five == g].tolist() for g in range(NUM_FREQUENCY_GROUPS)}, pools


def check_ground_truth_boxes(json_file):
    """Refuse ground truth with boxes of non-positive width or height.

    The ``lvis`` / COCO APIs evaluate against the json itself, so such boxes
    cannot be dropped the way the training loader drops them; they would
    silently ruin the AP (every IoU with them is wrong).

    Raises:
        ValueError: naming the json, the count and the first annotation ids.
    """
    bad = read_json_summary(json_file)["invalid_box_ids"]
    if bad:
        raise ValueError(
            f"{json_file}: {len(bad)} ground-truth annotations have a box [x, y, w, h] with w <= 0 or "
            f"h <= 0 (annotation ids {list(bad[:5])}{'...' if len(bad) > 5 else ''}); fix the json before "
            "evaluating on it"
        )


class _GroupAPMixin:
    """Shared part of the group-AP evaluators (groups loaded lazily, on the main process)."""

    def _init_groups(self, train_dataset, rare_max, common_max, lvis_groups, by="image"):
        self._group_spec = (train_dataset, rare_max, common_max, lvis_groups, by)
        self._class_groups = None
        self._groups_loaded = False

    def _get_class_groups(self) -> Optional[ClassGroups]:
        if not self._groups_loaded:
            self._class_groups = load_class_groups(*self._group_spec)
            self._groups_loaded = True
        return self._class_groups

    def _group_aps(self, precision, cat_ids, iou_type):
        """Group APs from per-category precision.

        Args:
            precision (ndarray[T, R, K, A]): precision with categories in ``cat_ids`` order.
            cat_ids (list[int]): dataset category id of each position k.
            iou_type (str): "bbox" or "segm" (for the log).

        Returns:
            dict[str, float]: AP per group name; empty if the evaluated
            categories are not the training classes.
        """
        groups = self._get_class_groups()
        if groups is None:
            return {}
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        contiguous = [id_map.get(c, -1) if id_map else k for k, c in enumerate(cat_ids)]
        if sorted(contiguous) != list(range(groups.num_classes)):
            self._logger.warning(
                f"The {len(cat_ids)} evaluated categories are not the {groups.num_classes} classes of "
                f"'{groups.train_dataset}': frequency-group APs are skipped."
            )
            return {}
        position = np.empty(groups.num_classes, np.int64)
        position[contiguous] = np.arange(len(cat_ids))
        aps = {name: group_average_precision(precision, position[members])
               for name, members in zip(groups.names, groups.members)}
        self._logger.info(
            f"Frequency-group {iou_type} AP (groups by {groups.by} count in '{groups.train_dataset}'):\n"
            + groups.table(aps)
        )
        return aps


class COCOGroupEvaluator(_GroupAPMixin, COCOEvaluator):
    """``COCOEvaluator`` plus AP1..AP5 and APr/APc/APf from the training split's image counts."""

    def __init__(self, dataset_name, *args, train_dataset=None, rare_max=10, common_max=100, groups_by="image",
                 **kwargs):
        """
        Args:
            dataset_name, *args, **kwargs: as ``COCOEvaluator``.
            train_dataset (str): registered training split the groups come from.
            rare_max, common_max (int): r/c/f thresholds (APr: at most ``rare_max`` images).
            groups_by (str): AP1..AP5 by training "image" or "instance" counts.
        """
        super().__init__(dataset_name, *args, **kwargs)
        if self._do_evaluation:
            check_ground_truth_boxes(self._metadata.json_file)
        self._init_groups(train_dataset, rare_max, common_max, lvis_groups=True, by=groups_by)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is not None and iou_type in ("bbox", "segm"):
            # precision[T, R, K, A, M]: the last M is the detections-per-image limit
            precision = coco_eval.eval["precision"][..., -1]
            results.update(self._group_aps(precision, coco_eval.params.catIds, iou_type))
        return results
