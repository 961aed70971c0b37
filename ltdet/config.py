"""ltdet's config keys. ``add_ltdet_config`` only adds nodes; detectron2's
defaults are never mutated.

Every key is honoured or rejected: the classification-loss keys are checked
against the chosen loss when it is built (``ltdet.losses.build``).
"""
import functools

from detectron2.config import CfgNode as CN

__all__ = ["add_ltdet_config", "ltdet_default"]


def add_ltdet_config(cfg):
    """Add every ltdet key (with its default) to a detectron2 config."""
    _C = cfg
    _C.LTDET = CN()

    # ------------------------------------------------------------------ losses
    _C.LTDET.CLS_LOSS = CN()
    # Classification loss. Two-stage: softmax | sigmoid | eql | eqlv2 | acsl | seesaw | federated |
    # federated_eqlv2 | ecm. Dense: focal | efl | eqfl | eqlv2_focal.
    _C.LTDET.CLS_LOSS.NAME = "softmax"
    # Objectness (category-agnostic) branch for sigmoid losses (EQLv2 Sec. 3.3):
    # "auto" = the loss's paper default (on for EQLv2 only), "on" or "off".
    _C.LTDET.CLS_LOSS.OBJECTNESS = "auto"
    # Prior probability used to initialise the bias of sigmoid classifiers (EQLv2 Sec. 4.2, EFL Sec. 4.1).
    _C.LTDET.CLS_LOSS.PRIOR_PROB = 0.001

    _C.LTDET.CLASSIFIER = CN()
    # Classifier of the box predictor: "linear" (detectron2's) or "cosine" (tau * cosine similarity + b,
    # mmdetection's NormedLinear; Seesaw's and ECM's official configs).
    _C.LTDET.CLASSIFIER.NAME = "linear"
    # tau: temperature (scale) of the cosine classifier (Seesaw's configs: 20).
    _C.LTDET.CLASSIFIER.SCALE = 20.0

    _C.LTDET.EQL = CN()
    # λ: frequency threshold of T_λ(f_j); 1.76e-3 on LVIS v0.5, 1.1e-3 on LVIS v1 (EQL Sec. 4).
    _C.LTDET.EQL.LAMBDA = 1.76e-3
    # Threshold function T_λ: "step" (eq. 7), "exp" (exponential decay) or "gompertz" (EQL Sec. 5).
    _C.LTDET.EQL.THRESHOLD_FN = "step"
    # a, n of the exponential-decay threshold T(f) = 1 - (a f)^n, clipped to [0, 1] (EQL Fig. 3).
    _C.LTDET.EQL.EXP_A = 400.0
    _C.LTDET.EQL.EXP_N = 2.0
    # a, b, c of the Gompertz-decay threshold T(f) = 1 - a exp(-b exp(-c f)) (EQL Fig. 3).
    _C.LTDET.EQL.GOMPERTZ_A = 1.0
    _C.LTDET.EQL.GOMPERTZ_B = 80.0
    _C.LTDET.EQL.GOMPERTZ_C = 3000.0
    # Never ignore an image's pos_category_ids / neg_category_ids (LVIS image-level labels, EQL Sec. 4.1).
    _C.LTDET.EQL.USE_IMAGE_LABELS = True

    _C.LTDET.EQLV2 = CN()
    # α: weight of the negative down-/positive up-weighting, q_j = 1 + α(1 - f(g_j)) (EQLv2 eq. 7).
    _C.LTDET.EQLV2.ALPHA = 4.0
    # γ: steepness of the mapping f(x) = 1 / (1 + exp(-γ(x - μ))) (EQLv2 eq. 8).
    _C.LTDET.EQLV2.GAMMA = 12.0
    # μ: centre of the mapping function (EQLv2 eq. 8).
    _C.LTDET.EQLV2.MU = 0.8
    # Table 2 ablation switches: re-weight negatives by r_j / positives by q_j.
    _C.LTDET.EQLV2.NEG_REWEIGHT = True
    _C.LTDET.EQLV2.POS_REWEIGHT = True

    _C.LTDET.ACSL = CN()
    # ξ: probability threshold above which a negative class is suppressed (ACSL eq. 6).
    _C.LTDET.ACSL.XI = 0.7
    # Seed of the torch generator sampling background rows (official ACSL sampling).
    _C.LTDET.ACSL.SEED = 0

    _C.LTDET.SEESAW = CN()
    # p: exponent of the mitigation factor M_ij = (N_j / N_i)^p (Seesaw eq. 3).
    _C.LTDET.SEESAW.P = 0.8
    # q: exponent of the compensation factor C_ij = (σ_j / σ_i)^q (Seesaw eq. 4).
    _C.LTDET.SEESAW.Q = 2.0

    _C.LTDET.FED_LOSS = CN()
    # Size of the class set of the federated loss per iteration: the classes present in the batch plus
    # classes sampled without replacement (CenterNet2 / detectron2 main FED_LOSS_NUM_CLASSES: 50).
    _C.LTDET.FED_LOSS.NUM_CLASSES = 50
    # Sampling probability of a class ∝ image_count^power (detectron2 main FED_LOSS_FREQ_WEIGHT_POWER: 0.5).
    _C.LTDET.FED_LOSS.FREQ_WEIGHT_POWER = 0.5

    _C.LTDET.ECM = CN()
    # Background count / sum of the foreground image counts of the ECM margins (official ECM-Loss
    # EffectiveClassMarginLoss(fg_bg_ratio=6.3313), "empirical fg-bg ratio from Mask-RCNN").
    _C.LTDET.ECM.FG_BG_RATIO = 6.3313

    _C.LTDET.FOCAL = CN()
    # α of focal loss (balances positives and negatives).
    _C.LTDET.FOCAL.ALPHA = 0.25
    # γ of focal loss; γ_b, the base focusing factor, for EFL/EQFL (EFL eq. 4).
    _C.LTDET.FOCAL.GAMMA = 2.0

    _C.LTDET.EFL = CN()
    # s: scale of the variable focusing factor γ_v^j = s (1 - g^j) (EFL eq. 4); 8, or 4 for YOLOX-like heads.
    _C.LTDET.EFL.SCALE = 8.0
    # Table 3 ablation switches: the focusing factor γ_b + γ_v^j and the weighting factor (γ_b + γ_v^j) / γ_b.
    _C.LTDET.EFL.FOCUSING_FACTOR = True
    _C.LTDET.EFL.WEIGHTING_FACTOR = True

    # --------------------------------------------------------- gradient stats
    _C.LTDET.GRAD_STATS = CN()
    # Collect per-class pos/neg gradient statistics for every loss (EQLv2/EFL always collect).
    _C.LTDET.GRAD_STATS.ENABLED = True
    # Iterations between two GradientRatioHook writes to EventStorage.
    _C.LTDET.GRAD_STATS.PERIOD = 20
    # Reset the statistics after loading MODEL.WEIGHTS for a new run (never on --resume).
    _C.LTDET.GRAD_STATS.RESET_ON_LOAD = False

    # ------------------------------------------------------- decoupled training
    # Regular expressions over model.named_parameters() names: when non-empty, only the matching
    # parameters train; all others are frozen and frozen BatchNorm/Dropout leaves run in eval mode
    # (ACSL Sec. 4.2: fine-tune the classifier of a trained baseline; cRT, EQLv2 Table 1 (f)).
    _C.LTDET.TRAIN_ONLY = ()
    # Regular expressions of parameters that a new run from MODEL.WEIGHTS keeps at their fresh
    # initialisation instead of loading them (cRT re-trains a re-initialised classifier).
    _C.LTDET.REINIT = ()

    # ------------------------------------------------------------- checkpoints
    _C.LTDET.CHECKPOINT = CN()
    # Evaluate (--eval-only) or resume a checkpoint whose meta-architecture or classification
    # loss differs from the config's; refused by default (the scores would silently be wrong).
    _C.LTDET.CHECKPOINT.ALLOW_MISMATCH = False

    # -------------------------------------------------------------- data
    _C.LTDET.DATA = CN()
    # Largest training image count of a rare class and of a common class (LVIS: 10, 100).
    _C.LTDET.DATA.RARE_MAX_IMAGES = 10
    _C.LTDET.DATA.COMMON_MAX_IMAGES = 100

    # ------------------------------------------------- your own datasets
    _C.LTDET.DATASETS = CN()
    # Datasets to register at setup, one [name, format ("coco" | "lvis"), json_file, image_root] per entry.
    _C.LTDET.DATASETS.REGISTER = []

    # -------------------------------------------------------------- evaluation
    _C.LTDET.EVAL = CN()
    # AP1..AP5 split the classes into five equal groups sorted by their training "image" count (EQL,
    # Sec. 4.5) or "instance" count (EQLv2 Sec. 4.9 and EFL Sec. 4.5 on Open Images).
    _C.LTDET.EVAL.FREQUENCY_GROUPS_BY = "image"
    # LVIS evaluation backend: "fast" (faster-coco-eval's C++ COCOeval with LVIS rules, the same metrics)
    # or "lvis" (the official lvis API).
    _C.LTDET.EVAL.BACKEND = "fast"
    # Also report AP_fixed (Dave et al. 2021: top DETECTIONS_PER_CLASS detections per class over the
    # whole set, no per-image cap) and its r/c/f parts; use with LTDET.TEST.TOPK_PER_CLASS.
    _C.LTDET.EVAL.AP_FIXED = False
    # Also report AP_pool (Dave et al. 2021: detections of all classes pooled into one PR curve; slow, lvis API).
    _C.LTDET.EVAL.AP_POOL = False
    # K of AP_fixed / AP_pool: detections kept per class over the whole dataset (LVIS: 10,000).
    _C.LTDET.EVAL.DETECTIONS_PER_CLASS = 10000

    _C.LTDET.TEST = CN()
    # When > 0, inference keeps up to this many detections per class and image (after class-wise NMS)
    # instead of the top TEST.DETECTIONS_PER_IMAGE of the image, so that every class can reach its
    # 10,000 detections for AP_fixed; the evaluator still caps the standard AP at TEST.DETECTIONS_PER_IMAGE.
    _C.LTDET.TEST.TOPK_PER_CLASS = 0
    _C.LTDET.TEST.NORCAL = CN()
    # NorCal (Pan et al., NeurIPS 2021) post-hoc calibration of a softmax detector's scores: exp(z_c) of each
    # foreground class divided by N_c^gamma, background untouched, renormalised. 0 = off.
    _C.LTDET.TEST.NORCAL.GAMMA = 0.0
    # --eval-only: evaluate once per gamma in this list (a sweep; results in OUTPUT_DIR/norcal_sweep.json).
    _C.LTDET.TEST.NORCAL.GAMMAS = []
    # N_c: the training set's "image" or "instance" count of each class (official tydpan/NorCal
    # roi_heads.py: _get_frequencies(cfg, by="image")).
    _C.LTDET.TEST.NORCAL.COUNT = "image"

    # ------------------------------------------------------------ backbone
    _C.MODEL.TINY_RESNET = CN()
    # Output channels of the stem and of stages res2..res5 of ltdet's small CPU backbone.
    _C.MODEL.TINY_RESNET.CHANNELS = [16, 24, 48, 96, 160]
    # Residual blocks per stage res2..res5.
    _C.MODEL.TINY_RESNET.DEPTHS = [1, 1, 1, 1]

    # ------------------------------------------------- dense detector (ATSS/FCOS)
    # Defaults are the original ATSS (Zhang et al., CVPR 2020); EFL's improved baseline
    # (Li et al., CVPR 2022, Sec. 4.1) is set in configs/lvis_v1/atss_*.yaml.
    _C.MODEL.LTDET_DENSE = CN()
    # C: number of foreground classes (1203 on LVIS v1).
    _C.MODEL.LTDET_DENSE.NUM_CLASSES = 1203
    # Backbone features the head runs on, highest resolution first (P3-P7 in ATSS).
    _C.MODEL.LTDET_DENSE.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 convs in each of the classification and regression towers (ATSS: 4).
    _C.MODEL.LTDET_DENSE.NUM_CONVS = 4
    # Normalization of the tower convs: "GN" (ATSS), "BN" (per-level BN) or "" (none).
    _C.MODEL.LTDET_DENSE.NORM = "GN"
    # Square anchor sizes in units of the level's stride, one anchor per entry and location
    # (ATSS octave base scale {8}; EFL Sec. 4.1 improved baseline {6, 8}).
    _C.MODEL.LTDET_DENSE.ANCHOR_SCALES = [8.0]
    # Label assignment: "atss" (ATSS Alg. 1) or "fcos" (FCOS with centre sampling).
    _C.MODEL.LTDET_DENSE.ASSIGNER = "atss"
    # k: candidate anchors per level and ground truth, closest centres first (ATSS: 9; EFL: 18).
    _C.MODEL.LTDET_DENSE.ATSS_TOPK = 9
    # r: centre-sampling radius in strides for the "fcos" assigner (FCOS / ATSS Sec. 3: 1.5).
    _C.MODEL.LTDET_DENSE.CENTER_SAMPLING_RADIUS = 1.5
    # Localisation-quality branch: "centerness" (ATSS) or "iou" (predicted IoU, EFL Sec. 4.1).
    _C.MODEL.LTDET_DENSE.QUALITY = "centerness"
    # (w_x, w_y, w_w, w_h) of the anchor box deltas, i.e. 1 / target std (0.1, 0.1, 0.2, 0.2).
    _C.MODEL.LTDET_DENSE.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Weight of the GIoU box loss (ATSS: 2.0; EOD's EFL configs: 1.0).
    _C.MODEL.LTDET_DENSE.REG_LOSS_WEIGHT = 2.0
    # "none": sum of GIoU losses / normaliser (ATSS); "iou": each positive's GIoU loss weighted by its
    # IoU target and divided by the sum of IoU targets (EOD's EFL configs, iou_loss with weights).
    _C.MODEL.LTDET_DENSE.BOX_LOSS_WEIGHTING = "none"
    # EMA momentum of the positives count dividing the losses (detectron2 RetinaNet: 0.9; 0 = the
    # batch's own count, as EOD and mmdetection).
    _C.MODEL.LTDET_DENSE.NORMALIZER_MOMENTUM = 0.9
    # Minimum score kept before NMS; 0 keeps every box (EFL Sec. 4.1: one-stage scores are low).
    _C.MODEL.LTDET_DENSE.SCORE_THRESH_TEST = 0.0
    # Highest-scoring (anchor, class) pairs kept per level before NMS.
    _C.MODEL.LTDET_DENSE.TOPK_CANDIDATES_TEST = 1000
    # IoU threshold of the class-wise NMS (ATSS: 0.6).
    _C.MODEL.LTDET_DENSE.NMS_THRESH_TEST = 0.6
    return cfg


@functools.lru_cache(maxsize=None)
def _default_config():
    from detectron2.config import get_cfg

    cfg = add_ltdet_config(get_cfg())
    cfg.freeze()
    return cfg


def ltdet_default(key: str):
    """The default value of a config key, e.g. ``ltdet_default("LTDET.FOCAL.ALPHA")`` -> 0.25."""
    node = _default_config()
    for part in key.split("."):
        node = node[part]
    return node
