"""Long-tail ROI heads: predictor, ROI heads, image-level labels, configs, short real trainings.

Shape shorthand: N proposals, C foreground classes, K = C + 1 classifier columns.
"""
import math
import os

import pytest
import torch

import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)
import ltdet.modeling  # noqa: F401  (registers the ROI heads and ImageLabelRCNN)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet import add_ltdet_config
from ltdet.losses import (
    LOSS_REGISTRY,
    ACSLLoss,
    EffectiveClassMarginLoss,
    EQLLoss,
    EQLv2Loss,
    FederatedEQLv2Loss,
    FederatedLoss,
    SeesawLoss,
    SigmoidBCELoss,
    SoftmaxCELoss,
)
from ltdet.modeling.roi_heads import (
    ImageLabelRCNN,
    LongTailCascadeROIHeads,
    LongTailFastRCNNOutputLayers,
    LongTailROIHeads,
    build_roi_classification_loss,
)
from ltdet.modeling.roi_heads.image_labels import with_image_labels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = LOSS_REGISTRY.names("two_stage")
C = 5
# Training image counts of the C classes of the in-memory dataset: 2 rare, 2 common, 1 frequent.
IMAGE_COUNTS = (2, 8, 15, 40, 150)
TINY = "ltdet_test_roi_tiny"
PRIOR_BIAS = -math.log((1 - 0.001) / 0.001)
# EQL's f_j = image_count / images with annotations (150 of the 200 images of the in-memory dataset)
FREQ = torch.tensor(IMAGE_COUNTS, dtype=torch.float64) / 150
GROUPS = torch.tensor([0, 0, 1, 1, 2])

KWARG_LOSSES = {
    "softmax": lambda: SoftmaxCELoss(C),
    "sigmoid": lambda: SigmoidBCELoss(C),
    "eql": lambda: EQLLoss(C, FREQ, lambda_=0.05),
    "eqlv2": lambda: EQLv2Loss(C),
    "acsl": lambda: ACSLLoss(C, class_groups=GROUPS),
    "seesaw": lambda: SeesawLoss(C),
    "federated": lambda: FederatedLoss(C, FREQ, num_fed_classes=3),
    "federated_eqlv2": lambda: FederatedEQLv2Loss(C, FREQ, num_fed_classes=3),
    "ecm": lambda: EffectiveClassMarginLoss(C, FREQ),
}


def _tiny_dicts():
    """200 images; class j appears in IMAGE_COUNTS[j] of them (one 10x10 box each)."""
    dicts = [
        {"file_name": f"{i}.png", "image_id": i, "height": 64, "width": 64, "annotations": []}
        for i in range(200)
    ]
    for c, count in enumerate(IMAGE_COUNTS):
        for i in range(count):
            dicts[i]["annotations"].append({"bbox": [c, c, 10, 10], "bbox_mode": 1, "category_id": c})
    return dicts


if TINY not in DatasetCatalog.list():
    DatasetCatalog.register(TINY, _tiny_dicts)
    MetadataCatalog.get(TINY).set(thing_classes=[f"class{c}" for c in range(C)])


def base_cfg(loss="softmax", num_classes=C):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NAME = "LongTailROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.DATASETS.TRAIN = (TINY,)
    cfg.LTDET.CLS_LOSS.NAME = loss
    if loss == "eql":  # EQL takes LVIS image-level labels, which ImageLabelRCNN provides
        cfg.MODEL.META_ARCHITECTURE = "ImageLabelRCNN"
    return cfg


def predictor(loss_name, **kwargs):
    return LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=C,
        cls_loss=KWARG_LOSSES[loss_name](),
        **kwargs,
    )


def proposals_with_labels(labels_per_image, size=(64, 64), seed=0):
    """Sampled proposals as the ROI heads give them to the predictor."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for labels in labels_per_image:
        n = len(labels)
        xy = torch.rand(n, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 15], dim=1)
        inst = Instances(size)
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_boxes = Boxes(boxes + 1)
        inst.gt_classes = torch.as_tensor(labels, dtype=torch.long)
        out.append(inst)
    return out


# ----------------------------------------------------------------- predictor
@pytest.mark.parametrize("loss", LOSSES)
def test_predictor_from_kwargs_shapes_and_prior_bias(loss):
    box_predictor = predictor(loss)
    scores, deltas = box_predictor(torch.randn(7, 8))
    assert scores.shape == (7, C + 1) and deltas.shape == (7, 4 * C)
    bias = box_predictor.cls_score.bias.detach()
    if box_predictor.cls_loss.activation == "sigmoid":  # sigmoid, EQL, EQLv2, ACSL, federated, ECM
        assert torch.allclose(bias, torch.full((C + 1,), PRIOR_BIAS))
        assert torch.allclose(torch.sigmoid(bias), torch.full((C + 1,), 1e-3))
    else:  # softmax CE; Seesaw's objectness column is a 2-way softmax starting at p_obj = 0.5
        assert torch.all(bias == 0)


@pytest.mark.parametrize("loss", LOSSES)
def test_predictor_from_config_holds_loss_as_submodule(loss):
    cfg = base_cfg(loss)
    box_predictor = LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    expected = {"softmax": SoftmaxCELoss, "sigmoid": SigmoidBCELoss, "eql": EQLLoss, "eqlv2": EQLv2Loss,
                "acsl": ACSLLoss, "seesaw": SeesawLoss, "federated": FederatedLoss,
                "federated_eqlv2": FederatedEQLv2Loss, "ecm": EffectiveClassMarginLoss}.get(loss, LOSS_REGISTRY.get(loss))
    assert type(box_predictor.cls_loss) is expected
    assert box_predictor(torch.randn(3, 8))[0].shape == (3, C + 1)
    assert ("image_label_mask" in box_predictor.cls_loss.extra_inputs) == (loss == "eql")
    state = box_predictor.state_dict()
    if loss == "eqlv2":
        assert "cls_loss.grad_stats.pos_grad" in state and "cls_loss.grad_stats.neg_grad" in state
    if loss == "seesaw":
        assert "cls_loss.cum_samples" in state


def test_priors_come_from_the_training_set():
    eql = build_roi_classification_loss(base_cfg("eql"), C)
    assert torch.allclose(eql.image_freq, FREQ)
    acsl = build_roi_classification_loss(base_cfg("acsl"), C)
    assert torch.equal(acsl.group_masks[0], GROUPS == 0) and torch.equal(acsl.group_masks[2], GROUPS == 2)
    with pytest.raises(ValueError, match="categories"):
        build_roi_classification_loss(base_cfg("eql"), C + 1)


def test_eql_logs_tail_ratio(caplog):
    cfg = base_cfg("eql")
    cfg.LTDET.EQL.LAMBDA = 0.06
    with caplog.at_level("INFO", logger="ltdet.losses.eql"):
        loss = build_roi_classification_loss(cfg, C)
    expected = (2 + 8) / sum(IMAGE_COUNTS)  # image-weighted share of the classes with f < λ
    assert math.isclose(loss.tail_ratio(), expected, rel_tol=1e-6)
    assert f"TR(lambda)={100 * expected:.2f}%" in caplog.text


def test_missing_dataset_only_matters_for_losses_with_priors():
    for loss in ("softmax", "sigmoid", "eqlv2", "seesaw"):
        cfg = base_cfg(loss)
        cfg.DATASETS.TRAIN = ("no_such_dataset_xyz",)
        build_roi_classification_loss(cfg, C)
    for loss in ("eql", "acsl"):
        cfg = base_cfg(loss)
        cfg.DATASETS.TRAIN = ("no_such_dataset_xyz",)
        with pytest.raises(RuntimeError, match="no_such_dataset_xyz"):
            build_roi_classification_loss(cfg, C)


@pytest.mark.parametrize("loss", LOSSES)
def test_empty_batch_losses_and_inference(loss):
    box_predictor = predictor(loss)
    before = {k: v.clone() for k, v in box_predictor.state_dict().items()}
    proposals = proposals_with_labels([[], []])  # two images without any proposal
    predictions = box_predictor(torch.randn(0, 8))
    with EventStorage():
        losses = box_predictor.losses(predictions, proposals)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() == 0.0
    total.backward()
    box_predictor.zero_grad()
    instances, _ = box_predictor.inference(predictions, proposals)
    assert [len(i) for i in instances] == [0, 0]
    box_predictor.cls_loss(torch.zeros(0, C + 1), torch.zeros(0, dtype=torch.long))
    for k, v in box_predictor.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on an empty batch"
    # Zero losses: a background-only batch (no positive anywhere) and a zero-weighted
    # backward keep the losses, their statistics and the next step finite.
    for weight, labels in ((1.0, [[5, 5, 5], [5, 5, 5]]), (0.0, [[0, 1, 5], [4, 5, 5]])):
        predictions = box_predictor(torch.randn(6, 8))
        with EventStorage():
            losses = box_predictor.losses(predictions, proposals_with_labels(labels))
        (sum(losses.values()) * weight).backward()
        assert all(torch.isfinite(p.grad).all() for p in box_predictor.parameters() if p.grad is not None)
        assert all(torch.isfinite(v).all() for v in box_predictor.state_dict().values() if v.is_floating_point())
    predictions = box_predictor(torch.randn(6, 8))
    with EventStorage():
        losses = box_predictor.losses(predictions, proposals_with_labels([[0, 1, 5], [4, 5, 5]]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_cosine_classifier_is_tau_times_cosine_plus_bias():
    cfg = base_cfg("eqlv2")
    cfg.LTDET.CLASSIFIER.NAME = "cosine"
    box_predictor = LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    head = box_predictor.cls_score
    x = torch.randn(5, 8) * 7
    w = head.weight.detach()
    expected = 20.0 * (x / (x.norm(dim=1, keepdim=True) + 1e-6)) @ (w / (w.norm(dim=1, keepdim=True) + 1e-6)).T
    expected = expected + head.bias.detach()
    torch.testing.assert_close(box_predictor(x)[0], expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(head.bias, torch.full((C + 1,), PRIOR_BIAS)), "the sigmoid prior still applies"
    assert set(dict(box_predictor.named_parameters())) >= {"cls_score.weight", "cls_score.bias"}


@pytest.mark.parametrize("loss", ["eqlv2", "sigmoid_obj", "eql_obj", "acsl_obj", "seesaw"])
def test_predict_probs_with_objectness(loss):
    name = loss.replace("_obj", "")
    cfg = base_cfg(name)
    cfg.LTDET.CLS_LOSS.OBJECTNESS = "on" if loss.endswith("_obj") else "auto"
    box_predictor = LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    assert box_predictor.cls_loss.objectness
    scores = torch.randn(6, C + 1) * 3
    proposals = proposals_with_labels([[5, 5], [5, 5, 5, 5]])
    probs = torch.cat(box_predictor.predict_probs((scores, None), proposals))
    p_bg = torch.sigmoid(scores[:, C:])
    fg = torch.softmax(scores[:, :C], dim=1) if name == "seesaw" else torch.sigmoid(scores[:, :C])
    assert torch.allclose(probs[:, :C], fg * (1 - p_bg), atol=1e-6)
    assert torch.allclose(probs[:, C:], p_bg, atol=1e-6)


def test_predict_probs_without_objectness_and_softmax():
    scores = torch.randn(4, C + 1)
    proposals = proposals_with_labels([[5, 5, 5, 5]])
    sig = torch.cat(predictor("sigmoid").predict_probs((scores, None), proposals))
    assert torch.allclose(sig[:, :C], torch.sigmoid(scores[:, :C]))
    soft = torch.cat(predictor("softmax").predict_probs((scores, None), proposals))
    assert torch.allclose(soft, torch.softmax(scores, dim=1))


# ----------------------------------------------------------------- ROI heads
def _random_inputs(num_images=2, size=(64, 64), channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {"res4": torch.randn(num_images, channels, size[0] // 16, size[1] // 16, generator=g)}
    proposals, targets = [], []
    for i in range(num_images):
        xy = torch.rand(30, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 8 + torch.rand(30, 2, generator=g) * 16], dim=1)
        p = Instances(size)
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.randn(30, generator=g)
        proposals.append(p)
        t = Instances(size)
        t.gt_boxes = Boxes(torch.tensor([[4.0, 4, 30, 30], [20, 18, 50, 60]]))
        t.gt_classes = torch.tensor([i, C - 1])
        targets.append(t)
    return features, proposals, targets


def _heads(cfg, channels=16):
    return build_roi_heads(cfg, {"res4": ShapeSpec(channels=channels, stride=16)})


def _record_loss_kwargs(roi_heads):
    """Record the (args, kwargs) of every call of the ROI heads' classification loss(es)."""
    calls = []
    predictors = roi_heads.box_predictor
    for p in predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]:
        p.cls_loss.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    return calls


@pytest.mark.parametrize("loss", LOSSES)
def test_roi_heads_forward_backward_and_inference(loss):
    torch.manual_seed(0)
    roi_heads = _heads(base_cfg(loss))
    assert isinstance(roi_heads, LongTailROIHeads)
    assert isinstance(roi_heads.box_predictor, LongTailFastRCNNOutputLayers)
    features, proposals, targets = _random_inputs()
    if "image_label_mask" in roi_heads.box_predictor.cls_loss.extra_inputs:  # as ImageLabelRCNN does
        targets = [with_image_labels({"instances": t}, C)["instances"] for t in targets]
    with EventStorage():
        _, losses = roi_heads(None, features, proposals, targets)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    roi_heads.eval()
    with torch.no_grad():
        results, _ = roi_heads(None, features, proposals)
    assert len(results) == 2 and all(r.scores.numel() == 0 or r.pred_classes.max() < C for r in results)


def test_mask_rcnn_class_agnostic_heads():
    cfg = base_cfg("eqlv2")
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    roi_heads = _heads(cfg)
    features, proposals, targets = _random_inputs()
    for t in targets:
        t.gt_masks = BitMasks(torch.zeros(len(t), 64, 64, dtype=torch.bool))
    with EventStorage():
        _, losses = roi_heads(None, features, proposals, targets)
    assert {"loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    assert roi_heads.mask_head.predictor.out_channels == 1


def test_eql_image_labels_reach_the_loss():
    roi_heads = _heads(base_cfg("eql"))
    calls = _record_loss_kwargs(roi_heads)
    features, proposals, targets = _random_inputs()
    negatives = [[2], [0, 3]]
    labelled = [
        with_image_labels({"instances": t, "neg_category_ids": neg}, C)["instances"]
        for t, neg in zip(targets, negatives)
    ]
    with EventStorage():
        sampled, _ = roi_heads(None, features, proposals, labelled)
    (args, kwargs), = calls
    mask = kwargs["image_label_mask"]
    assert mask.shape == (sum(len(p) for p in sampled), C)
    expected = torch.zeros(2, C, dtype=torch.bool)
    expected[0, [0, C - 1, 2]] = True  # image 0: annotated {0, C-1}, negative {2}
    expected[1, [1, C - 1, 0, 3]] = True
    rows = torch.cat([expected[i].expand(len(p), C) for i, p in enumerate(sampled)])
    assert torch.equal(mask, rows)


def test_cascade_heads_take_the_same_predictor_and_image_labels():
    cfg = base_cfg("eql")
    cfg.MODEL.ROI_HEADS.NAME = "LongTailCascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    roi_heads = _heads(cfg)
    assert isinstance(roi_heads, LongTailCascadeROIHeads)
    assert all(isinstance(p, LongTailFastRCNNOutputLayers) for p in roi_heads.box_predictor)
    assert len({id(p.cls_loss) for p in roi_heads.box_predictor}) == 3
    calls = _record_loss_kwargs(roi_heads)
    features, proposals, targets = _random_inputs()
    labelled = [with_image_labels({"instances": t, "neg_category_ids": [2]}, C)["instances"] for t in targets]
    with EventStorage():
        _, losses = roi_heads(None, features, proposals, labelled)
    assert len(calls) == 3 and all(kw["image_label_mask"][:, 2].all() for _, kw in calls)
    sum(losses.values()).backward()
    roi_heads.eval()
    with torch.no_grad():
        results, _ = roi_heads(None, features, proposals)
    assert len(results) == 2


# ----------------------------------------------------------------- configs
def load_config(path):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


# ----------------------------------------------------------------- real training
SYN_TRAIN, SYN_VAL = "ltdet_test_roi_synthetic_train", "ltdet_test_roi_synthetic_val"
SYN_CLASSES = 6
TRAIN_CONFIGS = [f"faster_rcnn_{loss}.yaml" for loss in LOSSES] + ["mask_rcnn_eqlv2.yaml"]


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory):
    """A tiny generated synthetic split (64x64 images; 1 frequent, 2 common, 3 rare classes)."""
    from ltdet.data import clear_category_stats_cache, register_lvis_format_dataset
    from ltdet.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("synthetic_lt_tiny"))
    paths = generate(root, num_train=120, num_val=8, image_size=64, num_frequent=1, num_common=2,
                     num_rare=3, val_min_images=1, progress=False)
    register_lvis_format_dataset(SYN_TRAIN, paths["train"], root)
    register_lvis_format_dataset(SYN_VAL, paths["val"], root)
    clear_category_stats_cache()
    yield root
    for name in (SYN_TRAIN, SYN_VAL):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    clear_category_stats_cache()


def _tiny_training_cfg(config_name, output_dir):
    cfg = load_config(os.path.join(REPO, "configs", "synthetic", config_name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = SYN_CLASSES
    # Narrower than the demo model so that three iterations take seconds on 2 CPU cores.
    cfg.MODEL.TINY_RESNET.CHANNELS = [8, 8, 16, 24, 32]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (SYN_TRAIN,), (SYN_VAL,)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 2, 3, 1
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


@pytest.mark.parametrize("config_name", TRAIN_CONFIGS)
def test_few_iterations_of_real_training(config_name, synthetic_split, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader, build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.solver import build_optimizer

    torch.manual_seed(0)
    cfg = _tiny_training_cfg(config_name, tmp_path)
    model = build_model(cfg)
    box_predictor = model.roi_heads.box_predictor
    calls = _record_loss_kwargs(model.roi_heads)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), build_optimizer(cfg, model))
    trainer.train(0, cfg.SOLVER.MAX_ITER)

    history = trainer.storage.histories()
    assert len(calls) == cfg.SOLVER.MAX_ITER
    for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls") + (("loss_mask",) if cfg.MODEL.MASK_ON else ()):
        values = [v for v, _ in history[key].values()]
        assert len(values) == cfg.SOLVER.MAX_ITER and all(math.isfinite(v) for v in values), key
    loss = box_predictor.cls_loss
    if cfg.LTDET.CLS_LOSS.NAME == "eql":
        assert all(kw["image_label_mask"].any() for _, kw in calls)
    if cfg.LTDET.CLS_LOSS.NAME == "eqlv2":
        loss.grad_stats.synchronize()
        assert loss.grad_stats.pos_grad.sum() > 0 and loss.grad_stats.neg_grad.sum() > 0
    if cfg.LTDET.CLS_LOSS.NAME == "seesaw":
        assert loss.cum_samples.sum() > 0

    # The loss's statistics are checkpointed with the model.
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    restored = build_model(cfg)
    DetectionCheckpointer(restored).load(str(tmp_path / "model.pth"))
    for key, value in model.state_dict().items():
        if key.startswith("roi_heads.box_predictor.cls_loss."):
            assert torch.equal(restored.state_dict()[key], value), key

    model.eval()
    batch = next(iter(build_detection_test_loader(cfg, SYN_VAL)))
    with torch.no_grad():
        instances = model(batch)[0]["instances"]
    assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert instances.scores.numel() == 0 or (instances.pred_classes.max() < SYN_CLASSES and instances.scores.max() <= 1)
    if cfg.MODEL.MASK_ON:
        assert model.roi_heads.mask_head.predictor.out_channels == 1
        assert instances.has("pred_masks")


def test_image_label_rcnn_hands_dataset_labels_to_the_loss(synthetic_split, tmp_path):
    """neg_category_ids of the mapped dataset dicts reach EQL, one mask row per proposal."""
    from detectron2.data import build_detection_train_loader

    cfg = _tiny_training_cfg("faster_rcnn_eql.yaml", tmp_path)
    model = build_model(cfg)
    assert isinstance(model, ImageLabelRCNN)
    box_predictor = model.roi_heads.box_predictor
    calls, seen = _record_loss_kwargs(model.roi_heads), {}
    classification_loss = box_predictor.classification_loss

    def spy(scores, gt_classes, proposals):
        seen["proposals"] = proposals
        return classification_loss(scores, gt_classes, proposals)

    box_predictor.classification_loss = spy
    loader = iter(build_detection_train_loader(cfg))
    batch = next(b for b in loader if any(
        set(x["neg_category_ids"]) - set(x["instances"].gt_classes.tolist()) for x in b))
    with EventStorage():
        model(batch)
    (_, kwargs), = calls
    expected = []
    for x, p in zip(batch, seen["proposals"]):
        row = torch.zeros(SYN_CLASSES, dtype=torch.bool)
        row[x["instances"].gt_classes] = True
        row[x["neg_category_ids"]] = True
        expected.append(row.expand(len(p), -1))
    assert torch.equal(kwargs["image_label_mask"], torch.cat(expected))


def test_topk_per_class_inference_replaces_the_per_image_cap():
    """LTDET.TEST.TOPK_PER_CLASS: up to K detections of every class per image (AP_fixed), no per-image top-N."""
    torch.manual_seed(0)
    box_predictor = predictor("sigmoid", test_topk_per_image=5, test_score_thresh=0.0)
    per_class = predictor("sigmoid", test_topk_per_image=5, test_score_thresh=0.0, topk_per_class=3)
    per_class.load_state_dict(box_predictor.state_dict())
    proposals = proposals_with_labels([[5] * 40])
    for p in proposals:
        p.remove("gt_boxes")
        p.remove("gt_classes")
    features = torch.randn(40, 8)
    capped, _ = box_predictor.inference(box_predictor(features), proposals)
    kept, _ = per_class.inference(per_class(features), proposals)
    assert len(capped[0]) == 5
    counts = torch.bincount(kept[0].pred_classes, minlength=C)
    assert len(kept[0]) > 5 and int(counts.max()) <= 3 and bool((counts == 3).all())
    assert bool((kept[0].scores[:-1] >= kept[0].scores[1:]).all())
