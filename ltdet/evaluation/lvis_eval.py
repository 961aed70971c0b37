"""LVIS evaluation in one pass: AP, APr/c/f, AP1..AP5, and optionally AP_fixed and AP_pool.

Shape shorthand: N detections, C categories, T IoU thresholds, R recall points,
K evaluated categories, A area ranges.

Two backends compute the same metrics (``tests/test_lvis_eval.py`` checks they
agree within 0.01 AP):

* ``"lvis"``: the official ``lvis`` API (``LVISResults`` keeps the top
  ``max_dets`` detections of each image, ``LVISEval``);
* ``"fast"``: ``faster-coco-eval``'s C++ COCOeval with ``lvis_style=True`` (the
  LVIS rules: ``neg_category_ids`` / ``not_exhaustive_category_ids``), fed the
  same per-image top-``max_dets`` detections (boxes as a numpy array), and run
  on chunks of categories, each over only the images where its categories are
  annotated or verified absent (``_category_chunks``): the same per-category
  precision as one run over every image x category, with a fraction of the
  cells; the summary metrics are then LVIS's means over that precision.

AP1..AP5 come from the per-category precision of the same pass (no second
evaluation). ``AP_fixed`` (Dave et al., "Evaluating Large-Vocabulary Object
Detectors: The Devil is in the Details", 2021): the top ``dets_per_class``
(10,000) detections of every category over the whole set, no per-image cap.
``AP_pool``: the same detections, true/false positives pooled over all
categories (and over each of r/c/f) before computing one precision-recall curve
(the paper's pooled AP), from the ``lvis`` API's per-image matches.

Detections travel as :class:`Detections`, a column store (image id, category
id, score, XYWH box, optional RLE mask): a few tens of bytes per detection
instead of a dict each.
"""
import json
import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["BACKENDS", "Detections", "evaluate_lvis", "fast_backend_available", "pooled_average_precision"]

logger = logging.getLogger(__name__)

BACKENDS = ("fast", "lvis")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def fast_backend_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Detections:
    """A column store of LVIS-format detections.

    Attributes:
        image_id (int64[N]), category_id (int64[N]): dataset ids.
        score (float32[N]).
        bbox (float32[N, 4]): XYWH in image pixels.
        segmentation (list[dict] or None): COCO RLE per detection (``counts`` a str).
    """

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    bbox: np.ndarray
    segmentation: Optional[List[dict]] = None

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def empty(with_masks: bool = False) -> "Detections":
        return Detections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                          np.zeros((0, 4), np.float32), [] if with_masks else None)

    @staticmethod
    def concatenate(parts: Sequence["Detections"]) -> "Detections":
        parts = [p for p in parts if p is not None]
        if not parts:
            return Detections.empty()
        masks = None
        if parts[0].segmentation is not None:
            masks = [m for p in parts for m in p.segmentation]
        return Detections(
            np.concatenate([p.image_id for p in parts]), np.concatenate([p.category_id for p in parts]),
            np.concatenate([p.score for p in parts]), np.concatenate([p.bbox for p in parts]).reshape(-1, 4), masks)

    @staticmethod
    def from_dicts(results: Sequence[dict]) -> "Detections":
        """From LVIS-format result dicts (``image_id``, ``category_id``, ``score``, ``bbox``, ``segmentation``)."""
        if not results:
            return Detections.empty()
        has_masks = "segmentation" in results[0]
        return Detections(
            np.array([r["image_id"] for r in results], np.int64),
            np.array([r["category_id"] for r in results], np.int64),
            np.array([r["score"] for r in results], np.float32),
            np.array([r.get("bbox", (0, 0, 0, 0)) for r in results], np.float32).reshape(-1, 4),
            [r["segmentation"] for r in results] if has_masks else None,
        )

    @staticmethod
    def load(path: str) -> "Detections":
        """Read an LVIS results json (a list of detection dicts; parsed with orjson when installed)."""
        with open(path, "rb") as f:
            data = f.read()
        try:
            import orjson

            results = orjson.loads(data)
        except ImportError:
            results = json.loads(data)
        del data
        return Detections.from_dicts(results)

    def take(self, index: np.ndarray) -> "Detections":
        masks = None if self.segmentation is None else [self.segmentation[i] for i in index]
        return Detections(self.image_id[index], self.category_id[index], self.score[index], self.bbox[index], masks)

    def _top_per_group(self, key: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` highest scores of every ``key`` value (stable: ties keep file order)."""
        order = np.lexsort((-self.score.astype(np.float64), key))  # by key, then score descending
        sorted_key = key[order]
        starts = np.searchsorted(sorted_key, sorted_key, side="left")
        rank = np.arange(len(order)) - starts
        return np.sort(order[rank < k])

    def top_per_image(self, k: int) -> "Detections":
        """The ``k`` best detections of each image (``LVISResults``' ``max_dets``); k < 0 keeps all."""
        return self if k < 0 else self.take(self._top_per_group(self.image_id, k))

    def top_per_category(self, k: int) -> "Detections":
        """The ``k`` best detections of each category over the whole set (AP_fixed)."""
        return self.take(self._top_per_group(self.category_id, k))

    def to_dicts(self, iou_type: str = "bbox") -> List[dict]:
        """LVIS result dicts; for "segm" without ``bbox`` (as detectron2: mask areas then define APs/m/l)."""
        out = []
        for i in range(len(self)):
            d = {"image_id": int(self.image_id[i]), "category_id": int(self.category_id[i]),
                 "score": float(self.score[i])}
            if iou_type == "segm":
                d["segmentation"] = self.segmentation[i]
            else:
                d["bbox"] = [float(v) for v in self.bbox[i]]
            out.append(d)
        return out

    def write_json(self, path: str) -> None:
        """Stream the detections to an LVIS results json (boxes and masks), one dict at a time."""
        from ltdet.engine.atomic_io import atomic_open

        with atomic_open(path, "w") as f:
            f.write("[")
            for i in range(len(self)):
                d = {"image_id": int(self.image_id[i]), "category_id": int(self.category_id[i]),
                     "bbox": [round(float(v), 3) for v in self.bbox[i]], "score": float(self.score[i])}
                if self.segmentation is not None:
                    d["segmentation"] = self.segmentation[i]
                f.write(("," if i else "") + json.dumps(d))
            f.write("]")


# ------------------------------------------------------------------ backends
def _percent(value: float) -> float:
    """x 100, as detectron2 reports (-1, "no ground truth in this area", becomes -100)."""
    return float(value) * 100.0


def _group_aps(precision: np.ndarray, cat_ids: Sequence[int], class_groups: Optional[Dict[str, Sequence[int]]]):
    """AP (percent) of each named group of dataset category ids, from precision[T, R, K, A] (area "all" = 0)."""
    if not class_groups:
        return {}
    position = {c: k for k, c in enumerate(cat_ids)}
    out = {}
    for name, ids in class_groups.items():
        cols = [position[c] for c in ids if c in position]
        values = precision[:, :, cols, 0] if cols else np.zeros(0)
        values = values[values > -1]
        out[name] = float(values.mean() * 100) if values.size else float("nan")
    return out


def _run_lvis(gt, dets: Detections, iou_type: str, max_dets: int, keep_eval: bool = False):
    from lvis import LVISEval, LVISResults

    results = LVISResults(gt, dets.to_dicts(iou_type), max_dets=max_dets)
    lvis_eval = LVISEval(gt, results, iou_type)
    lvis_eval.params.max_dets = max_dets
    lvis_eval.evaluate()
    lvis_eval.accumulate()
    lvis_eval.summarize()
    metrics = {k: _percent(lvis_eval.results[k]) for k in METRICS}
    return metrics, lvis_eval.eval["precision"], list(lvis_eval.params.cat_ids), (lvis_eval if keep_eval else None)


def _evaluated_pairs(gt) -> np.ndarray:
    """Sorted int64 keys image_id * 2^32 + category_id of the (image, category) pairs LVIS evaluates:
    the image's annotated categories and its ``neg_category_ids`` (cached on ``gt``)."""
    keys = getattr(gt, "_ltdet_evaluated_pairs", None)
    if keys is None:
        pairs = {(a["image_id"], a["category_id"]) for a in gt.dataset["annotations"]}
        pairs |= {(im["id"], c) for im in gt.dataset["images"] for c in im.get("neg_category_ids", [])}
        keys = np.sort(np.array([i * (1 << 32) + c for i, c in pairs], np.int64))
        gt._ltdet_evaluated_pairs = keys
    return keys


def _category_chunks(gt, cells: int = 2000):
    """Chunks of category ids with the images each chunk is evaluated in, ~``cells`` image x category cells each.

    COCOeval loops over every (image, category) cell of its parameters; LVIS evaluates a category
    only in the images where it is annotated or verified absent, so evaluating categories in
    chunks, each over the union of its categories' images, gives the same per-category results
    with a small fraction of the cells (1,203 x 20k on LVIS v1 val otherwise).
    """
    keys = _evaluated_pairs(gt)
    images, cats = keys >> 32, keys & ((1 << 32) - 1)
    all_cats = sorted(gt.getCatIds())
    by_cat = {c: images[cats == c] for c in np.unique(cats)}
    order = sorted(all_cats, key=lambda c: len(by_cat.get(c, ())))
    chunks, chunk, union = [], [], set()
    for c in order:
        cat_images = by_cat.get(c, np.zeros(0, np.int64))
        grown = union | set(cat_images.tolist())
        if chunk and len(grown) * (len(chunk) + 1) > cells:
            chunks.append((chunk, sorted(union)))
            chunk, grown = [], set(cat_images.tolist())
        chunk.append(c)
        union = grown
    if chunk:
        chunks.append((chunk, sorted(union)))
    return all_cats, chunks


def _metrics_from_precision(precision, iou_thrs, cat_ids, frequency) -> Dict[str, float]:
    """LVIS's summary metrics (percent) from precision[T, R, K, A] (areas all, small, medium, large)."""

    def mean(values):
        values = values[values > -1]
        return float(values.mean() * 100) if values.size else -100.0

    t50, t75 = (int(np.argmin(np.abs(np.asarray(iou_thrs) - v))) for v in (0.5, 0.75))
    out = {"AP": mean(precision[..., 0]), "AP50": mean(precision[t50, ..., 0]), "AP75": mean(precision[t75, ..., 0]),
           "APs": mean(precision[..., 1]), "APm": mean(precision[..., 2]), "APl": mean(precision[..., 3])}
    for f in "rcf":
        cols = [k for k, c in enumerate(cat_ids) if frequency.get(c) == f]
        out[f"AP{f}"] = mean(precision[:, :, cols, 0]) if cols else -100.0
    return out


def _run_fast(gt, dets: Detections, iou_type: str, max_dets_per_cat: int):
    from faster_coco_eval import COCOeval_faster

    # LVIS ignores detections of categories neither annotated nor verified absent in their image;
    # drop them here (faster-coco-eval 1.8.0 also fails on segm images whose detections are all dropped)
    keys = dets.image_id * (1 << 32) + dets.category_id
    dets = dets.take(np.flatnonzero(np.isin(keys, _evaluated_pairs(gt))))
    if iou_type == "bbox":
        array = np.concatenate(
            [dets.image_id[:, None], dets.bbox, dets.score[:, None], dets.category_id[:, None]], axis=1
        ).astype(np.float64)
        results = gt.loadRes(array) if len(dets) else gt.loadRes([])
    else:
        results = gt.loadRes(dets.to_dicts("segm"))
    cat_ids, chunks = _category_chunks(gt)
    position = {c: k for k, c in enumerate(cat_ids)}
    precision = None
    for chunk, images in chunks:
        if not images:
            continue
        evaluator = COCOeval_faster(gt, results, iou_type, lvis_style=True, print_function=lambda *a, **k: None)
        evaluator.params.catIds, evaluator.params.imgIds = list(chunk), list(images)
        evaluator.params.maxDets = [max_dets_per_cat]
        evaluator.evaluate()
        evaluator.accumulate()
        part = evaluator.eval["precision"][..., -1]  # [T, R, K_chunk, A] at the only maxDets
        if precision is None:
            precision = -np.ones(part.shape[:2] + (len(cat_ids),) + part.shape[3:])
            iou_thrs = evaluator.params.iouThrs
        precision[:, :, [position[c] for c in evaluator.params.catIds], :] = part
    if precision is None:
        raise ValueError("the ground truth has no evaluated (image, category) pair")
    frequency = {c["id"]: c.get("frequency") for c in gt.dataset["categories"]}
    return _metrics_from_precision(precision, iou_thrs, cat_ids, frequency), precision, cat_ids


def _load_gt(gt, backend: str):
    """An evaluation API object for ``gt`` (a json path or an already loaded object of the backend)."""
    if not isinstance(gt, str):
        return gt
    if backend == "lvis":
        from lvis import LVIS

        return LVIS(gt)
    from faster_coco_eval import COCO

    return COCO(gt, print_function=lambda *a, **k: None)


def pooled_average_precision(lvis_eval, pools: Dict[str, Sequence[int]]) -> Dict[str, float]:
    """AP_pool (percent) of each pool of category ids from an evaluated ``LVISEval``.

    Per-image matches are the standard ones (``LVISEval.evaluate``); the
    detections of all categories in a pool are then ranked together by score
    and one precision-recall curve is computed over the pool's ground truth,
    with LVIS's interpolation at the 101 recall points, averaged over IoU
    thresholds (area "all").
    """
    p = lvis_eval.params
    num_imgs, num_areas = len(p.img_ids), len(p.area_rng)
    cat_index = {c: k for k, c in enumerate(p.cat_ids)}
    rec_thrs, iou_thrs = np.asarray(p.rec_thrs), np.asarray(p.iou_thrs)
    out = {}
    for name, ids in pools.items():
        entries = []
        for cat in ids:
            if cat not in cat_index:
                continue
            base = cat_index[cat] * num_areas * num_imgs  # area "all" is index 0
            entries += [e for e in lvis_eval.eval_imgs[base:base + num_imgs] if e is not None]
        if not entries:
            out[name] = float("nan")
            continue
        scores = np.concatenate([e["dt_scores"] for e in entries])
        order = np.argsort(-scores, kind="mergesort")
        dt_m = np.concatenate([e["dt_matches"] for e in entries], axis=1)[:, order]
        dt_ig = np.concatenate([e["dt_ignore"] for e in entries], axis=1)[:, order]
        gt_ig = np.concatenate([e["gt_ignore"] for e in entries])
        num_gt = int(np.count_nonzero(gt_ig == 0))
        if num_gt == 0:
            out[name] = float("nan")
            continue
        tps = np.logical_and(dt_m, np.logical_not(dt_ig)).cumsum(axis=1, dtype=np.float64)
        fps = np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig)).cumsum(axis=1, dtype=np.float64)
        ap = np.zeros(len(iou_thrs))
        for t, (tp, fp) in enumerate(zip(tps, fps)):
            recall = tp / num_gt
            precision = tp / (fp + tp + np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
            at = np.searchsorted(recall, rec_thrs, side="left")
            values = np.zeros(len(rec_thrs))
            valid = at < len(precision)
            values[valid] = precision[at[valid]]
            ap[t] = values.mean()
        out[name] = float(ap.mean() * 100)
    return out


def evaluate_lvis(
    gt,
    dets: Detections,
    iou_type: str = "bbox",
    *,
    backend: str = "fast",
    max_dets: int = 300,
    class_groups: Optional[Dict[str, Sequence[int]]] = None,
    ap_fixed: bool = False,
    ap_pool: bool = False,
    dets_per_class: int = 10000,
    frequency_pools: Optional[Dict[str, Sequence[int]]] = None,
    fixed_dets: Optional[Detections] = None,
) -> Dict[str, float]:
    """LVIS metrics in percent: AP, AP50, AP75, APs, APm, APl, APr, APc, APf, the ``class_groups`` APs,
    and, if asked, ``AP_fixed`` (+ ``APr_fixed`` ...) and ``AP_pool`` (+ ``APr_pool`` ...).

    Args:
        gt: path of the LVIS ground-truth json, or an object of the backend (``lvis.LVIS`` /
            ``faster_coco_eval.COCO``) to reuse.
        dets: the detections (dataset ids).
        iou_type: "bbox" or "segm".
        backend: "fast" or "lvis" (see the module docstring).
        max_dets: detections kept per image for the standard metrics (LVIS: 300).
        class_groups: metric name -> dataset category ids (e.g. AP1..AP5), from the same pass.
        ap_fixed: also AP_fixed (top ``dets_per_class`` per category, no per-image cap).
        ap_pool: also AP_pool over all categories and ``frequency_pools`` (lvis backend matching).
        frequency_pools: "r"/"c"/"f" -> category ids for APr_pool etc.
        fixed_dets: detections for AP_fixed / AP_pool when ``dets`` is already capped per image
            (the evaluator keeps both stores); default ``dets``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if iou_type == "segm" and dets.segmentation is None:
        raise ValueError("segm evaluation needs detections with masks ('segmentation')")
    start = time.perf_counter()
    api = _load_gt(gt, backend)
    standard = dets.top_per_image(max_dets)
    if backend == "lvis":
        metrics, precision, cat_ids, _ = _run_lvis(api, standard, iou_type, max_dets)
    else:
        metrics, precision, cat_ids = _run_fast(api, standard, iou_type, max_dets)
    metrics.update(_group_aps(precision, cat_ids, class_groups))
    if ap_fixed or ap_pool:
        fixed = (dets if fixed_dets is None else fixed_dets).top_per_category(dets_per_class)
        if ap_fixed:
            if backend == "lvis":
                fixed_metrics, precision, cat_ids, _ = _run_lvis(api, fixed, iou_type, -1)
            else:
                fixed_metrics, precision, cat_ids = _run_fast(api, fixed, iou_type, dets_per_class)
            metrics["AP_fixed"] = fixed_metrics["AP"]
            for group in ("APr", "APc", "APf"):
                metrics[f"{group}_fixed"] = fixed_metrics[group]
        if ap_pool:
            if backend == "fast" and not isinstance(gt, str):
                raise ValueError("AP_pool uses the lvis API's matching: pass the ground truth as a json path")
            lvis_api = api if backend == "lvis" else _load_gt(gt, "lvis")
            _, _, _, lvis_eval = _run_lvis(lvis_api, fixed, iou_type, -1, keep_eval=True)
            pools = {"AP_pool": list(lvis_eval.params.cat_ids)}
            pools.update({f"AP{k}_pool": v for k, v in (frequency_pools or {}).items()})
            metrics.update(pooled_average_precision(lvis_eval, pools))
    logger.info(f"LVIS {iou_type} evaluation ({backend} backend, {len(dets)} detections): "
                f"{time.perf_counter() - start:.1f} s")
    return metrics

