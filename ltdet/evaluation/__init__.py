"""Evaluation: LVIS/COCO evaluators chosen by the dataset's ``evaluator_type``,
with frequency-group APs (AP1..AP5), AP_fixed and AP_pool."""
from .build import build_ltdet_evaluator
from .group_ap import COCOGroupEvaluator, class_groups_from_stats, split_frequency_groups
from .lvis_eval import Detections, evaluate_lvis
from .lvis_evaluator import LongTailLVISEvaluator

__all__ = [
    "COCOGroupEvaluator",
    "Detections",
    "LongTailLVISEvaluator",
    "build_ltdet_evaluator",
    "class_groups_from_stats",
    "evaluate_lvis",
    "split_frequency_groups",
]
