"""ROI heads that use :class:`LongTailFastRCNNOutputLayers` as their box predictor.

Both swap the predictor in ``_init_box_head``, the classmethod that
detectron2's ``StandardROIHeads.from_config`` calls (Detic's
``detic_roi_heads.py`` pattern); construction stays detectron2's
``@configurable`` ``__init__``/``from_config``, and the forward passes,
sampling, mask and keypoint branches are inherited unchanged.
"""
from typing import List

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Instances

from .fast_rcnn import LongTailFastRCNNOutputLayers, roi_loss_priors

__all__ = ["LongTailROIHeads", "LongTailCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class LongTailROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` (Faster / Mask R-CNN) with a long-tail classification loss.

    The loss is ``LTDET.CLS_LOSS.NAME``; see :class:`LongTailFastRCNNOutputLayers`.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret.update(box_predictor=LongTailFastRCNNOutputLayers(cfg, ret["box_head"].output_shape))
        return ret


@ROI_HEADS_REGISTRY.register()
class LongTailCascadeROIHeads(CascadeROIHeads):
    """:class:`CascadeROIHeads` with a long-tail classification loss in every stage.

    Each stage has its own loss module (own statistics, as each stage has its
    own classifier); the training set's category statistics are read once.
    Inference averages the stages' ``predict_probs``, i.e. the losses' own
    activations, as detectron2 does for softmax.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        priors = roi_loss_priors(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        ret.update(
            box_predictors=[
                LongTailFastRCNNOutputLayers(
                    cfg,
                    head.output_shape,
                    box2box_transform=plain.box2box_transform,
                    priors=priors,
                )
                for head, plain in zip(ret["box_heads"], ret["box_predictors"])
            ]
        )
        return ret

    def _match_and_label_boxes(self, proposals: List[Instances], stage: int, targets: List[Instances]):
        """The parent's matching, plus the image-level labels of stages after the first.

        Stage k > 0 proposals are new boxes that only get ``gt_classes`` and
        ``gt_boxes``; ``gt_image_labels`` (one row per image, see
        :mod:`.image_labels`) is copied from the image's ground truth.
        """
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            if targets_per_image.has("gt_image_labels") and len(targets_per_image) > 0:
                row = targets_per_image.gt_image_labels[:1]
                proposals_per_image.gt_image_labels = row.expand(len(proposals_per_image), -1)
        return proposals
