"""Test-time selection of detections per class (for AP_fixed, Dave et al. 2021).

detectron2 keeps the ``TEST.DETECTIONS_PER_IMAGE`` best detections of an image over
all classes, which starves the rare classes of the 10,000 detections per class
that AP_fixed ranks; with ``LTDET.TEST.TOPK_PER_CLASS = K > 0`` the heads keep up to
K detections of every class in each image instead (after the class-wise NMS).
"""
import torch

from detectron2.structures import Instances

__all__ = ["top_k_per_class"]


def top_k_per_class(instances: Instances, k: int) -> Instances:
    """The ``k`` highest-scoring detections of each class of ``instances``, ordered by score."""
    if len(instances) == 0:
        return instances
    scores, classes = instances.scores, instances.pred_classes
    by_score = torch.argsort(scores, descending=True, stable=True)
    by_class = by_score[torch.argsort(classes[by_score], stable=True)]
    sorted_classes = classes[by_class]
    first = torch.searchsorted(sorted_classes, sorted_classes, right=False)
    rank = torch.arange(len(by_class), device=scores.device) - first
    kept = by_class[rank < k]
    return instances[kept[torch.argsort(scores[kept], descending=True, stable=True)]]
