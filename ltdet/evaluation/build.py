"""Choose the evaluator from the dataset's ``evaluator_type``."""
from detectron2.data import MetadataCatalog

from ltdet.compat.detectron2_ops import has_compiled_ops

from .group_ap import COCOGroupEvaluator
from .lvis_eval import fast_backend_available
from .lvis_evaluator import LongTailLVISEvaluator

__all__ = ["build_ltdet_evaluator"]


def build_ltdet_evaluator(cfg, dataset_name, output_folder=None):
    """Build the evaluator for ``dataset_name``.

    LVIS-format datasets (``evaluator_type="lvis"``, e.g. the synthetic dataset)
    use ``LongTailLVISEvaluator``: one pass of the ``LTDET.EVAL.BACKEND``
    ("fast": faster-coco-eval, "lvis": the official API) gives AP, APr, APc,
    APf, APs/m/l with ``TEST.DETECTIONS_PER_IMAGE`` detections per image, the
    group APs, and with ``LTDET.EVAL.AP_FIXED`` / ``AP_POOL`` Dave et al.'s
    metrics; COCO-format datasets use
    pycocotools (the fast C++ COCOeval only when detectron2's ops are compiled)
    and gain APr/APc/APf from the training image counts. Both add the
    frequency-group APs AP1..AP5 (``group_ap.py``), with groups from
    ``get_category_stats(cfg.DATASETS.TRAIN[0], LTDET.DATA.RARE_MAX_IMAGES,
    LTDET.DATA.COMMON_MAX_IMAGES)``; they are skipped (logged) when those
    statistics are unavailable, e.g. ``--eval-only`` without the training json.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    groups = dict(
        train_dataset=cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None,
        rare_max=cfg.LTDET.DATA.RARE_MAX_IMAGES,
        common_max=cfg.LTDET.DATA.COMMON_MAX_IMAGES,
        groups_by=cfg.LTDET.EVAL.FREQUENCY_GROUPS_BY,
    )
    if evaluator_type == "lvis":
        e = cfg.LTDET.EVAL
        if e.BACKEND == "fast" and not fast_backend_available():
            raise ImportError("LTDET.EVAL.BACKEND 'fast' needs faster-coco-eval (pip install 'faster-coco-eval==1.8.0', "
                              "a dependency of ltdet); or set LTDET.EVAL.BACKEND 'lvis'")
        return LongTailLVISEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            backend=e.BACKEND,
            ap_fixed=e.AP_FIXED,
            ap_pool=e.AP_POOL,
            dets_per_class=e.DETECTIONS_PER_CLASS,
            **groups,
        )
    if evaluator_type == "coco":
        return COCOGroupEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=has_compiled_ops(),
            **groups,
        )
    raise NotImplementedError(
        f"no evaluator for dataset '{dataset_name}' with evaluator_type={evaluator_type!r}"
    )
