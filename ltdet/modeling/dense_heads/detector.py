"""``LongTailATSS``: a one-stage dense detector with a pluggable long-tail loss.

ATSS (Zhang et al., CVPR 2020) as used by Equalized Focal Loss (Li et al.,
CVPR 2022, Sec. 4.1): anchor boxes of scales {8} or {6, 8} strides, ATSS or
FCOS centre-sampling assignment, GIoU box loss, a centerness or IoU quality
branch, and ltdet's dense classification loss (focal, EFL, EQFL, EQLv2-focal).

Shape shorthand: N images, L levels, R anchors per image over all levels,
C classes, P positive anchors in the batch.

Training and inference reuse detectron2's ``FCOS`` (``forward_training``,
``forward_inference``: score sqrt(p_cls * p_quality), FCOS-v2 eq. 4, with
p_cls the sigmoid, which is every dense loss's ``get_probs``; then
``inference_single_image``: per-level top-k above the score threshold, box
decoding, class-wise NMS, at most ``TEST.DETECTIONS_PER_IMAGE``). This class
overrides the assignment (``label_anchors``, which also handles images without
boxes, on which v0.6's FCOS crashes) and ``losses``.
"""
import sys
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fvcore.nn import giou_loss
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ltdet.losses import build_classification_loss

from ..postprocess import top_k_per_class
from .assigner import ATSSAssigner, CenterSamplingAssigner, centerness_targets
from .head import ATSSHead

__all__ = ["LongTailATSS"]


@META_ARCH_REGISTRY.register()
class LongTailATSS(FCOS):
    """ATSS with a long-tailed dense classification loss (EFL Sec. 4.1).

    The classification loss is a submodule (``cls_loss``), so its statistics
    buffers are checkpointed with the model. It receives the flattened
    ``logits[N x R, C]`` and ``labels[N x R]`` (C = background) and returns a
    sum; a loss whose ``extra_inputs`` name "scores" (EQFL) also receives
    ``scores[N x R]``: the IoU of each positive's decoded box with its ground
    truth (0 for negatives). Every loss term is
    divided by the number of positives, averaged over processes and smoothed
    by detectron2's EMA (``_ema_update``, as RetinaNet).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        assigner,
        cls_loss: nn.Module,
        num_classes: int,
        quality: str = "iou",
        reg_loss_weight: float = 2.0,
        box_loss_weighting: str = "none",
        normalizer_momentum: float = 0.9,
        test_score_thresh: float = 0.0,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 300,
        topk_per_class: int = 0,
        pixel_mean,
        pixel_std,
    ):
        """
        Args:
            backbone: backbone with the features named in ``head_in_features``.
            head: returns per-level (logits, box deltas, quality logits), e.g. :class:`ATSSHead`.
            head_in_features: L feature names, highest resolution first.
            anchor_generator: anchors per level, ordered as the head's outputs.
            box2box_transform: anchor box deltas <-> boxes.
            assigner: callable (anchors: List[Boxes], gt_boxes: Boxes) -> LongTensor[R]
                of matched ground-truth indices (-1 = background), e.g. :class:`ATSSAssigner`.
            cls_loss: dense classification loss, ``loss(logits[M, C], labels[M]) -> sum``.
            num_classes: C.
            quality: target of the quality branch, "iou" or "centerness".
            reg_loss_weight: weight of the GIoU loss.
            box_loss_weighting: "none" (ATSS: sum of GIoU losses / normaliser) or "iou"
                (EOD's EFL configs: each positive's GIoU loss weighted by its IoU
                target, divided by the sum of IoU targets over all processes).
            normalizer_momentum: EMA momentum of the number of positives that
                divides the losses (detectron2's RetinaNet: 0.9; 0: the batch's own
                count, as EOD and mmdetection).
            test_score_thresh: minimum score kept before NMS.
            test_topk_candidates: top-scoring (anchor, class) pairs kept per level.
            test_nms_thresh: IoU threshold of the class-wise NMS.
            max_detections_per_image: detections kept per image.
            topk_per_class: when > 0, keep up to this many detections of each class per
                image instead (``LTDET.TEST.TOPK_PER_CLASS``, for AP_fixed).
            pixel_mean, pixel_std: see :class:`DenseDetector`.
        """
        if quality not in ("iou", "centerness"):
            raise ValueError(f"quality must be 'iou' or 'centerness', got {quality!r}")
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            box2box_transform=box2box_transform,
            num_classes=num_classes,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image if topk_per_class <= 0 else sys.maxsize,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        # FCOS builds one point-sized anchor per location; ATSS uses scaled anchor boxes.
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.cls_loss = cls_loss
        self.quality = quality
        self.reg_loss_weight = float(reg_loss_weight)
        self.topk_per_class = int(topk_per_class)
        if box_loss_weighting not in ("none", "iou"):
            raise ValueError(f"MODEL.LTDET_DENSE.BOX_LOSS_WEIGHTING must be 'none' or 'iou', got {box_loss_weighting!r}")
        if not 0.0 <= normalizer_momentum < 1.0:
            raise ValueError(f"MODEL.LTDET_DENSE.NORMALIZER_MOMENTUM must be in [0, 1), got {normalizer_momentum}")
        self.box_loss_weighting = box_loss_weighting
        self.normalizer_momentum = float(normalizer_momentum)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.LTDET_DENSE
        cls_loss = build_classification_loss(cfg, d.NUM_CLASSES, family="dense")
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        feature_shapes = [backbone_shape[f] for f in d.IN_FEATURES]
        strides = [s.stride for s in feature_shapes]
        anchor_generator = DefaultAnchorGenerator(
            sizes=[[scale * stride for scale in d.ANCHOR_SCALES] for stride in strides],
            aspect_ratios=[1.0],
            strides=strides,
            offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        )
        if d.ASSIGNER == "atss":
            assigner = ATSSAssigner(topk=d.ATSS_TOPK)
        elif d.ASSIGNER == "fcos":
            assigner = CenterSamplingAssigner(strides=strides, radius=d.CENTER_SAMPLING_RADIUS)
        else:
            raise ValueError(
                f"MODEL.LTDET_DENSE.ASSIGNER must be 'atss' or 'fcos', got {d.ASSIGNER!r}"
            )
        return {
            "backbone": backbone,
            "head": ATSSHead(cfg, feature_shapes),
            "head_in_features": list(d.IN_FEATURES),
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=d.BBOX_REG_WEIGHTS),
            "assigner": assigner,
            "cls_loss": cls_loss,
            "num_classes": d.NUM_CLASSES,
            "quality": d.QUALITY,
            "reg_loss_weight": d.REG_LOSS_WEIGHT,
            "box_loss_weighting": d.BOX_LOSS_WEIGHTING,
            "normalizer_momentum": d.NORMALIZER_MOMENTUM,
            "test_score_thresh": d.SCORE_THRESH_TEST,
            "test_topk_candidates": d.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": d.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "topk_per_class": cfg.LTDET.TEST.TOPK_PER_CLASS,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """detectron2's (class-wise NMS, per-image cap); with ``topk_per_class`` the top K of each class."""
        result = super().inference_single_image(anchors, box_cls, box_delta, image_size)
        return top_k_per_class(result, self.topk_per_class) if self.topk_per_class > 0 else result

    def get_extra_state(self) -> Tensor:
        """The EMA of the number of positives (``_ema_update``), so that resume is exact.

        detectron2 keeps it as a plain attribute, which no checkpoint saves;
        NaN before the first training step.
        """
        return torch.tensor(float(getattr(self, "loss_normalizer", float("nan"))), dtype=torch.float64)

    def set_extra_state(self, state) -> None:
        value = float(torch.as_tensor(state))
        if value == value:  # not NaN
            self.loss_normalizer = value
        elif hasattr(self, "loss_normalizer"):
            del self.loss_normalizer

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Assign every anchor a class (C = background) and a ground-truth box.

        Args:
            anchors: L Boxes, level i of shape (R_i, 4).
            gt_instances: N Instances with ``gt_boxes`` and ``gt_classes``; may be empty.

        Returns:
            labels: N LongTensor[R] in 0..C.
            boxes: N Tensor[R, 4], the matched box (zeros for background).
        """
        num_anchors = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        labels, boxes = [], []
        for gt_per_image in gt_instances:
            if len(gt_per_image) == 0:
                labels.append(torch.full((num_anchors,), self.num_classes, device=device))
                boxes.append(torch.zeros(num_anchors, 4, device=device))
                continue
            matched = self.assigner(anchors, gt_per_image.gt_boxes)
            index = matched.clamp(min=0)
            label = gt_per_image.gt_classes[index]
            label[matched < 0] = self.num_classes
            labels.append(label)
            boxes.append(gt_per_image.gt_boxes.tensor[index])
        return labels, boxes

    @staticmethod
    def _num_positives(pos_mask: Tensor) -> float:
        """Positives per process, averaged over all processes (an all-reduce)."""
        return LongTailATSS._process_mean(pos_mask.sum())

    @staticmethod
    def _process_mean(value: Tensor) -> float:
        """``value`` averaged over all processes (an all-reduce)."""
        value = value.detach().to(torch.float32).clone()
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(value)
            value = value / world_size
        return value.item()

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        pred_quality: List[Tensor],
    ) -> Dict[str, Tensor]:
        """Classification, GIoU and quality losses, each divided by the normaliser.

        Args:
            anchors: L Boxes, level i of shape (R_i, 4).
            pred_logits: L tensors (N, R_i, C).
            gt_labels: N LongTensor[R] from :meth:`label_anchors`.
            pred_anchor_deltas: L tensors (N, R_i, 4).
            gt_boxes: N Tensor[R, 4] from :meth:`label_anchors`.
            pred_quality: L tensors (N, R_i, 1).

        Returns:
            dict with scalar ``loss_cls``, ``loss_box_reg``, ``loss_quality``.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = labels != self.num_classes
        num_pos = self._num_positives(pos_mask)
        get_event_storage().put_scalar("num_pos_anchors", num_pos / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos, 1.0), 100, momentum=self.normalizer_momentum)

        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        anchor_index = pos_mask.nonzero()[:, 1]  # (P,)
        pred_boxes = self.box2box_transform.apply_deltas(
            cat(pred_anchor_deltas, dim=1)[pos_mask], all_anchors[anchor_index]
        )  # (P, 4)
        target_boxes = torch.stack(gt_boxes)[pos_mask]  # (P, 4)
        ious = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(target_boxes))  # (P,)
        if self.box_loss_weighting == "iou":
            # EOD's get_weights_normalizer: max(sum of IoU targets over processes, 1) / processes
            world = comm.get_world_size()
            iou_normalizer = max(self._process_mean(ious.sum()) * world, 1.0) / world
            per_box = giou_loss(pred_boxes, target_boxes, reduction="none")
            loss_box_reg = (per_box * ious).sum() * (normalizer / iou_normalizer)
        else:
            loss_box_reg = giou_loss(pred_boxes, target_boxes, reduction="sum")

        if self.quality == "iou":
            quality_targets = ious
        else:
            centers = (all_anchors[anchor_index, :2] + all_anchors[anchor_index, 2:]) / 2
            quality_targets = centerness_targets(centers, target_boxes)
        pred_quality = cat(pred_quality, dim=1).squeeze(dim=2)[pos_mask]  # (P,)
        loss_quality = F.binary_cross_entropy_with_logits(
            pred_quality, quality_targets.to(pred_quality.dtype), reduction="sum"
        )

        logits = cat(pred_logits, dim=1).flatten(0, 1)  # (N x R, C)
        extra = {}
        if "scores" in self.cls_loss.extra_inputs:  # IoU targets of the positives (EQFL)
            scores = torch.zeros(labels.shape, dtype=logits.dtype, device=logits.device)
            scores[pos_mask] = ious.to(scores.dtype)
            extra["scores"] = scores.flatten()
        loss_cls = self.cls_loss(logits, labels.flatten(), **extra)

        return {
            "loss_cls": loss_cls / normalizer,
            "loss_box_reg": self.reg_loss_weight * loss_box_reg / normalizer,
            "loss_quality": loss_quality / normalizer,
        }
