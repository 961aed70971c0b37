"""Two-stage long-tail ROI heads: a Fast R-CNN predictor with a pluggable classification loss."""
from .fast_rcnn import LongTailFastRCNNOutputLayers, build_roi_classification_loss, roi_loss_priors
from .image_labels import ImageLabelRCNN  # registers the ImageLabelRCNN meta-architecture
from .roi_heads import LongTailCascadeROIHeads, LongTailROIHeads  # register the ROI heads

__all__ = [
    "LongTailFastRCNNOutputLayers",
    "LongTailROIHeads",
    "LongTailCascadeROIHeads",
    "ImageLabelRCNN",
    "build_roi_classification_loss",
    "roi_loss_priors",
]
