"""``LongTailLVISEvaluator``: detectron2 evaluator for LVIS-format datasets, one evaluation pass.

Replaces detectron2's ``LVISEvaluator`` (which ltdet ran a second time for the
group APs). Per image it keeps a compact column store (``Detections``) of at most
``max_dets_per_image`` detections, and, for AP_fixed, a bounded per-category
store of the best ``dets_per_class`` detections over the images seen so far;
so memory grows with the number of kept detections, not with Python dicts, and
the detections are never held twice. On the main process it writes
``lvis_instances_results.json`` (streamed; ``tools/evaluate_lvis.py`` evaluates it
offline with the same code) and calls ``evaluate_lvis``.

Metrics (percent, under ``bbox`` / ``segm``): AP, AP50, AP75, APs, APm, APl, APr,
APc, APf, AP1..AP5 (groups of training classes, ``group_ap.py``), and with
``ap_fixed`` AP_fixed / APr_fixed / APc_fixed / APf_fixed, with ``ap_pool`` AP_pool
and its r/c/f pools.
"""
import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from tabulate import tabulate

from ltdet.data.datasets import read_json_summary

from .group_ap import check_ground_truth_boxes, load_class_groups
from .lvis_eval import Detections, evaluate_lvis

__all__ = ["LongTailLVISEvaluator", "instances_to_detections"]

logger = logging.getLogger(__name__)


def instances_to_detections(instances, image_id: int, dataset_ids: np.ndarray) -> Detections:
    """Detections of one image (``Instances`` on the CPU) with dataset category ids.

    Args:
        instances: ``pred_boxes`` (XYXY), ``scores``, ``pred_classes`` (contiguous), optional ``pred_masks``.
        image_id: the dataset image id.
        dataset_ids: int64[C], dataset category id of each contiguous id.
    """
    n = len(instances)
    boxes = instances.pred_boxes.tensor.numpy() if n else np.zeros((0, 4), np.float32)
    masks = None
    if instances.has("pred_masks"):
        masks = []
        for mask in instances.pred_masks:
            rle = mask_util.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            masks.append(rle)
    return Detections(
        np.full(n, image_id, np.int64),
        dataset_ids[instances.pred_classes.numpy()].astype(np.int64),
        instances.scores.numpy().astype(np.float32),
        BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).astype(np.float32).reshape(-1, 4),
        masks,
    )


class _TopPerCategory:
    """The best ``k`` detections of every category among those added (bounded memory)."""

    def __init__(self, k: int):
        self.k = int(k)
        self._parts: List[Detections] = []
        self._size = 0
        self._kept = 0

    def add(self, dets: Detections) -> None:
        self._parts.append(dets)
        self._size += len(dets)
        if self._size > 2 * max(self._kept, self.k):
            self._compact()

    def _compact(self) -> None:
        merged = Detections.concatenate(self._parts).top_per_category(self.k)
        self._parts, self._size, self._kept = [merged], len(merged), len(merged)

    def result(self) -> Detections:
        self._compact()
        return self._parts[0] if self._parts else Detections.empty()


class LongTailLVISEvaluator(DatasetEvaluator):
    """LVIS evaluation of a registered LVIS-format dataset (see the module docstring).

    Args:
        dataset_name (str): registered dataset with ``json_file``.
        tasks (tuple[str]): "bbox" and/or "segm"; default: "segm" too when predictions have masks.
        distributed (bool): gather the detections of all processes.
        output_dir (str): where ``lvis_instances_results.json`` is written (None: not written).
        max_dets_per_image (int): detections kept per image (LVIS: 300).
        backend (str): "fast" (faster-coco-eval) or "lvis" (the official API).
        train_dataset (str), rare_max, common_max (int), groups_by (str): AP1..AP5 of the training classes.
        ap_fixed (bool), ap_pool (bool), dets_per_class (int): Dave et al.'s metrics.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: int = 300,
        backend: str = "fast",
        train_dataset: Optional[str] = None,
        rare_max: int = 10,
        common_max: int = 100,
        groups_by: str = "image",
        ap_fixed: bool = False,
        ap_pool: bool = False,
        dets_per_class: int = 10000,
    ):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._json_file = self._metadata.json_file
        check_ground_truth_boxes(self._json_file)
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = int(max_dets_per_image) if max_dets_per_image is not None else 300
        self._backend = backend
        self._group_spec = (train_dataset, rare_max, common_max, False, groups_by)
        self._ap_fixed, self._ap_pool, self._dets_per_class = bool(ap_fixed), bool(ap_pool), int(dets_per_class)
        categories = read_json_summary(self._json_file)["categories"]
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if id_map:
            reverse = {v: k for k, v in id_map.items()}
            self._dataset_ids = np.array([reverse[i] for i in range(len(reverse))], np.int64)
        else:  # detectron2's LVIS loader maps dataset id k to k - 1
            self._dataset_ids = np.array([c["id"] for c in categories], np.int64)
        self._frequency = {f: [c["id"] for c in categories if c.get("frequency") == f] for f in "rcf"}
        self.reset()

    def reset(self):
        self._per_image: List[Detections] = []
        self._per_category = _TopPerCategory(self._dets_per_class) if (self._ap_fixed or self._ap_pool) else None

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            dets = instances_to_detections(out["instances"].to("cpu"), inp["image_id"], self._dataset_ids)
            if self._per_category is not None:
                self._per_category.add(dets)
            self._per_image.append(dets.top_per_image(self._max_dets))

    def _gathered(self, parts: List[Detections]) -> Optional[Detections]:
        if self._distributed:
            comm.synchronize()
            parts = list(itertools.chain(*comm.gather(parts, dst=0)))
            if not comm.is_main_process():
                return None
        return Detections.concatenate(parts)

    def _class_groups(self) -> Dict[str, List[int]]:
        groups = load_class_groups(*self._group_spec)
        if groups is None:
            return {}
        if groups.num_classes != len(self._dataset_ids):
            logger.warning(f"The {len(self._dataset_ids)} evaluated categories are not the {groups.num_classes} "
                           f"classes of '{groups.train_dataset}': frequency-group APs are skipped.")
            return {}
        return {name: self._dataset_ids[members].tolist() for name, members in zip(groups.names, groups.members)}

    def evaluate(self):
        per_image = self._gathered(self._per_image)
        per_category = None
        if self._per_category is not None:
            per_category = self._gathered([self._per_category.result()])
            if per_category is not None:
                per_category = per_category.top_per_category(self._dets_per_class)
        if per_image is None:
            return {}
        if len(per_image) == 0:
            logger.warning("[LongTailLVISEvaluator] Did not receive valid predictions.")
            return {}
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            # with AP_fixed: both stores, so that tools/evaluate_lvis.py --ap-fixed gives the same numbers
            saved = per_image if per_category is None else _unique(Detections.concatenate([per_image, per_category]))
            saved.write_json(os.path.join(self._output_dir, "lvis_instances_results.json"))
        tasks = self._tasks or (("bbox", "segm") if per_image.segmentation is not None else ("bbox",))
        groups = self._class_groups()
        results = OrderedDict()
        for task in tasks:
            results[task] = evaluate_lvis(
                self._json_file, per_image, task, backend=self._backend, max_dets=self._max_dets,
                class_groups=groups, ap_fixed=self._ap_fixed, ap_pool=self._ap_pool,
                dets_per_class=self._dets_per_class, frequency_pools=self._frequency, fixed_dets=per_category,
            )
            logger.info(f"Evaluation results for {task}:\n" + _table(results[task]))
        return results


def _unique(dets: Detections) -> Detections:
    """Drop exact duplicates (a detection kept in both the per-image and the per-category store)."""
    key = np.stack([dets.image_id.astype(np.float64), dets.category_id.astype(np.float64),
                    dets.score.astype(np.float64), *dets.bbox.astype(np.float64).T], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    return dets.take(np.sort(first))


def _table(metrics: Dict[str, float]) -> str:
    return tabulate([list(metrics.values())], headers=list(metrics), tablefmt="pipe", floatfmt=".3f")
