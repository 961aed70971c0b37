"""Fast R-CNN box predictor whose classification loss is one of ltdet's long-tail losses.

Shape shorthand: N sampled proposals (all images of the batch), C foreground
classes, K = C + 1 classifier columns (column C: background for softmax CE,
the category-agnostic objectness task for the sigmoid family and Seesaw, see
``ltdet/losses/base.py``).

Only the classification term and the class probabilities change with respect
to detectron2's :class:`FastRCNNOutputLayers`; box regression
(``box_reg_loss``), inference (``fast_rcnn_inference`` drops column C) and the
logging of classification statistics are detectron2's.
"""
import logging
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances

from ltdet.data.category_stats import CategoryStatsError, train_category_stats
from ltdet.losses import build_classification_loss
from ltdet.losses.build import loss_class

from ..postprocess import top_k_per_class
from .classifier import NormalizedLinear
from .image_labels import ImageLabelRCNN
from .norcal import NorCal, check_gamma

__all__ = ["LongTailFastRCNNOutputLayers", "build_norcal", "build_roi_classification_loss", "roi_loss_priors"]

logger = logging.getLogger(__name__)


def roi_loss_priors(cfg, num_classes: int):
    """The class priors of the training set if the configured loss needs them, else None.

    Raises:
        CategoryStatsError: the loss needs them and they cannot be read.
        ValueError: the training set does not have ``num_classes`` categories.
    """
    cls = loss_class(cfg, "two_stage")
    if not cls.priors:
        return None
    stats = train_category_stats(cfg, purpose=f"loss {cls.name!r}")
    if stats.num_classes != num_classes:
        raise ValueError(
            f"dataset {cfg.DATASETS.TRAIN[0]!r} has {stats.num_classes} categories but "
            f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}"
        )
    return stats.priors()


def build_roi_classification_loss(cfg, num_classes: int, priors=None) -> nn.Module:
    """Build the two-stage classification loss named by ``cfg.LTDET.CLS_LOSS.NAME``.

    Class-frequency priors are read only for the losses that declare them
    (``ClassificationLoss.priors``), so the other losses build without the
    training set on disk.

    Args:
        cfg: config with ltdet's keys.
        num_classes: C.
        priors: result of :func:`roi_loss_priors`; read from
            ``cfg.DATASETS.TRAIN[0]`` when None and needed.
    Returns:
        ``ClassificationLoss`` called as ``loss(logits[N, C+1], labels[N])``.
    """
    if priors is None:
        priors = lambda: roi_loss_priors(cfg, num_classes)  # noqa: E731  (read only if needed)
    loss = build_classification_loss(cfg, num_classes, family="two_stage", priors=priors)
    if "image_label_mask" in loss.extra_inputs:
        _check_image_label_architecture(cfg, loss)
    return loss


def build_norcal(cfg, cls_loss) -> "NorCal | None":
    """NorCal of ``LTDET.TEST.NORCAL`` (None when GAMMA is 0 and no GAMMAS sweep is asked for).

    Raises:
        ValueError: the loss is not a (C+1)-way softmax with a background column (NorCal calibrates
            the foreground classes against an untouched background), or COUNT is unknown.
        CategoryStatsError: the training set's class counts cannot be read.
    """
    norcal = cfg.LTDET.TEST.NORCAL
    if norcal.GAMMA == 0.0 and not len(norcal.GAMMAS):
        if norcal.COUNT != "image":
            raise ValueError(
                f"LTDET.TEST.NORCAL.COUNT = {norcal.COUNT!r} is not used: NorCal is off (GAMMA 0, no GAMMAS); "
                "leave COUNT at 'image' or set GAMMA / GAMMAS"
            )
        return None
    if cls_loss.activation != "softmax" or cls_loss.objectness:
        raise ValueError(
            f"LTDET.TEST.NORCAL calibrates a softmax classifier with a background class (NorCal, Pan et "
            f"al. 2021); loss {cls_loss.name!r} is not one (its last column is "
            f"{'an objectness task' if cls_loss.objectness else 'not a softmax background'}): use loss "
            "'softmax', or leave LTDET.TEST.NORCAL.GAMMA at 0 and GAMMAS empty"
        )
    for key, values in (("GAMMA", [norcal.GAMMA]), ("GAMMAS", list(norcal.GAMMAS))):
        for value in values:
            try:
                check_gamma(value)
            except ValueError as e:
                raise ValueError(f"LTDET.TEST.NORCAL.{key}: {e}") from None
    if norcal.COUNT not in ("instance", "image"):
        raise ValueError(f"LTDET.TEST.NORCAL.COUNT must be 'instance' or 'image', got {norcal.COUNT!r}")
    try:
        stats = train_category_stats(cfg, purpose="LTDET.TEST.NORCAL")
    except CategoryStatsError as e:
        raise CategoryStatsError(f"{e}; NorCal divides by the training class counts") from e
    counts = stats.instance_count if norcal.COUNT == "instance" else stats.image_count
    if counts.numel() != cls_loss.num_classes:
        raise ValueError(f"NorCal: the training set has {counts.numel()} classes, the model {cls_loss.num_classes}")
    return NorCal(counts, norcal.GAMMA)


def _check_image_label_architecture(cfg, loss) -> None:
    """A loss that takes image-level labels needs a meta-architecture that provides them."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if not issubclass(META_ARCH_REGISTRY.get(arch), ImageLabelRCNN):
        switch = loss.config_keys.get("use_image_labels")
        hint = f", or set {switch} False" if switch else ""
        raise ValueError(
            f"loss {loss.name!r} takes LVIS image-level labels (image_label_mask), which only "
            f"MODEL.META_ARCHITECTURE 'ImageLabelRCNN' hands to the ROI heads; got {arch!r}. "
            f"Use 'ImageLabelRCNN'{hint}."
        )


class LongTailFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` with a pluggable long-tail classification loss.

    The classifier keeps its K = C + 1 columns for every loss (detectron2's
    inference drops the last one). The loss module is a child of the
    predictor, so its statistics buffers (EQLv2's accumulated gradients,
    Seesaw's class counts) are saved and restored by detectron2's Checkpointer.
    Columns trained as sigmoid tasks start from the prior probability
    ``prior_prob`` (EQLv2 Sec. 4.2, Focal Loss Sec. 3.3): every column of a
    sigmoid loss. The objectness column of a softmax loss (Seesaw) is the
    logit difference of a 2-way softmax and starts at 0 (p_obj = 0.5), as the
    2-way objectness softmax of the reference implementation.
    What the loss needs besides logits and labels comes from its contract
    (``cls_loss.extra_inputs``).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        cls_loss: nn.Module,
        prior_prob: float = 0.001,
        classifier: str = "linear",
        classifier_scale: float = 20.0,
        topk_per_class: int = 0,
        norcal: "NorCal | None" = None,
        **kwargs,
    ):
        """
        Args:
            input_shape (ShapeSpec): shape of the box-head features.
            cls_loss (ClassificationLoss): a two-stage loss, called as
                ``cls_loss(logits[N, C+1], labels[N], **extra_inputs)``.
            prior_prob (float): initial probability of the sigmoid columns.
            classifier (str): "linear" (detectron2's) or "cosine" (:class:`NormalizedLinear`).
            classifier_scale (float): τ of the cosine classifier.
            topk_per_class (int): when > 0, inference keeps up to this many detections of
                each class per image instead of the per-image top ``test_topk_per_image``.
            norcal (NorCal): test-time calibration of a softmax loss's probabilities, or None.
            kwargs: arguments of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        self.topk_per_class = int(topk_per_class)
        if self.topk_per_class > 0:
            self.test_topk_per_image = -1  # no per-image cap; ``inference`` caps per class
        if classifier == "cosine":
            self.cls_score = NormalizedLinear(self.cls_score.in_features, self.cls_score.out_features, classifier_scale)
        elif classifier != "linear":
            raise ValueError(f"LTDET.CLASSIFIER.NAME must be 'linear' or 'cosine', got {classifier!r}")
        # detectron2 after 0.6 has its own sigmoid CE / federated loss switches, which this
        # predictor's classification loss would silently replace
        for attr, key in (("use_sigmoid_ce", "USE_SIGMOID_CE"), ("use_fed_loss", "USE_FED_LOSS")):
            if getattr(self, attr, False):
                raise ValueError(
                    f"MODEL.ROI_BOX_HEAD.{key} selects detectron2's own classification loss, which "
                    "LongTailFastRCNNOutputLayers replaces by LTDET.CLS_LOSS.NAME; leave it False and "
                    "choose the loss there"
                )
        if cls_loss.family != "two_stage":
            raise ValueError(f"{type(cls_loss).__name__} is a {cls_loss.family} loss, not a two-stage one")
        if cls_loss.num_classes != self.num_classes:
            raise ValueError(f"cls_loss has {cls_loss.num_classes} classes, the predictor {self.num_classes}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob (LTDET.CLS_LOSS.PRIOR_PROB) must be in (0, 1), got {prior_prob}")
        self.cls_loss = cls_loss
        if norcal is not None and norcal.num_classes != self.num_classes:
            raise ValueError(f"norcal has {norcal.num_classes} classes, the predictor {self.num_classes}")
        self.norcal = norcal
        self.prior_prob = float(prior_prob)
        self._init_prior_bias()

    @classmethod
    def from_config(cls, cfg, input_shape, priors=None):
        ret = super().from_config(cfg, input_shape)
        cls_loss = build_roi_classification_loss(cfg, ret["num_classes"], priors)
        ret.update(
            {
                "cls_loss": cls_loss,
                "norcal": build_norcal(cfg, cls_loss),
                "prior_prob": cfg.LTDET.CLS_LOSS.PRIOR_PROB,
                "classifier": cfg.LTDET.CLASSIFIER.NAME,
                "classifier_scale": cfg.LTDET.CLASSIFIER.SCALE,
                "topk_per_class": cfg.LTDET.TEST.TOPK_PER_CLASS,
            }
        )
        return ret

    @torch.no_grad()
    def _init_prior_bias(self):
        """Set the bias of the sigmoid columns to -log((1 - π) / π), π = ``prior_prob``."""
        if self.cls_loss.activation == "sigmoid":
            self.cls_score.bias.fill_(-math.log((1.0 - self.prior_prob) / self.prior_prob))

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """``loss_cls`` from ``self.cls_loss`` and detectron2's ``loss_box_reg``.

        Args:
            predictions: (scores Tensor[N, K], deltas Tensor[N, C*4 or 4]).
            proposals: per-image sampled proposals with ``gt_classes`` (and
                ``gt_boxes``; ``gt_image_labels`` BoolTensor[R_i, C] for a loss
                that takes image-level labels).
        Returns:
            dict with ``loss_cls`` and ``loss_box_reg``, times ``loss_weight``.
        """
        scores, deltas = predictions
        if proposals:
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            # proposals without gt_boxes are all background: their boxes get no loss
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
        else:
            gt_classes = torch.zeros(0, dtype=torch.long, device=scores.device)
            proposal_boxes = gt_boxes = torch.zeros((0, 4), device=deltas.device)
        _log_classification_stats(self.cls_loss.get_probs(scores.detach()), gt_classes)
        losses = {
            "loss_cls": self.classification_loss(scores, gt_classes, proposals),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def classification_loss(
        self, scores: torch.Tensor, gt_classes: torch.Tensor, proposals: List[Instances]
    ) -> torch.Tensor:
        """``self.cls_loss`` over the sampled proposals, with the inputs its contract asks for.

        Args:
            scores: Tensor[N, K] classification logits.
            gt_classes: LongTensor[N] in 0..C.
            proposals: as in :meth:`losses`.
        Returns:
            scalar Tensor; 0 (connected to ``scores``) when N = 0.
        """
        kwargs = {}
        if "image_label_mask" in self.cls_loss.extra_inputs:
            kwargs["image_label_mask"] = self._image_label_mask(proposals, gt_classes)
        return self.cls_loss(scores, gt_classes, **kwargs)

    def _image_label_mask(self, proposals: List[Instances], gt_classes: torch.Tensor) -> torch.Tensor:
        """BoolTensor[N, C]: the image-level labels of each proposal's image.

        Images without ground truth carry no ``gt_image_labels``: all their
        proposals are background, where EQL ignores nothing (E(r) = 0), so an
        all-False row is exact for them.
        """
        if proposals and not any(p.has("gt_image_labels") for p in proposals):
            if bool((gt_classes < self.num_classes).any()):
                raise RuntimeError(
                    "the loss takes image-level labels but the proposals carry no gt_image_labels; "
                    "use MODEL.META_ARCHITECTURE 'ImageLabelRCNN'"
                )
        rows = [
            p.gt_image_labels
            if p.has("gt_image_labels")
            else torch.zeros(len(p), self.num_classes, dtype=torch.bool, device=gt_classes.device)
            for p in proposals
        ]
        if not rows:
            return torch.zeros(0, self.num_classes, dtype=torch.bool, device=gt_classes.device)
        return cat(rows, dim=0)

    def inference(self, predictions, proposals: List[Instances]):
        """detectron2's inference; with ``topk_per_class`` the top K of each class per image."""
        instances, kept = super().inference(predictions, proposals)
        if self.topk_per_class > 0:
            instances = [top_k_per_class(i, self.topk_per_class) for i in instances]
        return instances, kept

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per-image class probabilities from the loss's own activation.

        Returns:
            list of Tensor[R_i, K]: softmax for CE (NorCal-calibrated when ``norcal`` is set);
            sigmoid scores, times (1 - p_bg) with the objectness branch (EQLv2 eq. 10), for the
            sigmoid family; Seesaw's softmax over C times p_obj. Column C is the background
            score, dropped by ``fast_rcnn_inference``.
        """
        scores, _ = predictions
        probs = self.norcal(scores) if self.norcal is not None else self.cls_loss.get_probs(scores)
        return probs.split([len(p) for p in proposals], dim=0)
