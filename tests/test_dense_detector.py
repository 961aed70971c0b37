"""ltdet's one-stage dense detector (LongTailATSS): assignment, losses, inference, configs."""
import glob
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

import ltdet.modeling  # noqa: F401  (registers backbones and meta-architectures)
from ltdet import add_ltdet_config
from ltdet.modeling.dense_heads import (
    ATSSAssigner,
    CenterSamplingAssigner,
    LongTailATSS,
    centerness_targets,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "Base-Synthetic-ATSS.yaml")
# the synthetic ATSS configs (the LVIS ones are checked in test_lvis_configs.py)
ATSS_CONFIGS = sorted(
    glob.glob(os.path.join(REPO, "configs", "synthetic", "atss_*.yaml")) + [SYNTHETIC]
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convs run ~10x faster on one intra-op thread when the 2 CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(path=SYNTHETIC, opts=()):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _grid(stride, size, n):
    """n x n square anchors of side ``size`` centred at (i + 0.5) * stride, row-major."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    ctr = torch.stack([cx.flatten(), cy.flatten()], dim=1)
    return Boxes(torch.cat([ctr - size / 2, ctr + size / 2], dim=1))


def _instances(num, classes=40, size=128, generator=None):
    inst = Instances((size, size))
    xy = torch.rand(num, 2, generator=generator) * (size - 52)
    wh = 12 + torch.rand(num, 2, generator=generator) * 38
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    inst.gt_classes = torch.randint(0, classes, (num,), generator=generator)
    return inst


def _batch(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(3, 128, 128, generator=g) * 255,
            "instances": _instances(n, generator=g),
        }
        for n in counts
    ]


# ---------------------------------------------------------------- assignment
def test_atss_single_candidate_above_mean_plus_std():
    # Row of anchors (height 10): level 0 width 10 at x = 5..95, level 1 width 20 at x = 10..90.
    level0 = Boxes(torch.tensor([[x - 5.0, 0.0, x + 5.0, 10.0] for x in range(5, 100, 10)]))
    level1 = Boxes(torch.tensor([[x - 10.0, 0.0, x + 10.0, 10.0] for x in range(10, 100, 20)]))
    gt = Boxes(torch.tensor([[18.0, 0.0, 40.0, 10.0]]))
    # k=3 candidates: IoUs .455, .455, .067 (level 0) and .909, .05, 0 (level 1);
    # t = mean + std = .323 + .353 = .675, so only anchor 11 ([20, 40]) is positive.
    matched = ATSSAssigner(topk=3)([level0, level1], gt)
    expected = torch.full((15,), -1)
    expected[11] = 0
    assert torch.equal(matched, expected)


def test_atss_conflict_goes_to_highest_iou():
    anchors = [_grid(8, 8, 4), _grid(16, 16, 2)]  # 16 + 4 anchors
    # gt 1 equals level-1 anchor 0 (IoU 1); gt 0 = [0, 14]^2 also selects it (IoU .77,
    # threshold .47) and nothing else: the anchor goes to gt 1.
    gt = Boxes(torch.tensor([[0.0, 0.0, 14.0, 14.0], [0.0, 0.0, 16.0, 16.0]]))
    matched = ATSSAssigner(topk=4)(anchors, gt)
    expected = torch.full((20,), -1)
    expected[16] = 1
    assert torch.equal(matched, expected)


def _atss_reference(anchors, gt, k):
    """ATSS Alg. 1 written per ground truth with Python loops."""
    all_anchors = Boxes.cat(anchors)
    ious = pairwise_iou(all_anchors, gt)
    centers = all_anchors.get_centers()
    best = torch.full((len(all_anchors),), -1.0)
    matched = torch.full((len(all_anchors),), -1)
    for g in range(len(gt)):
        gc = gt.get_centers()[g]
        cand, start = [], 0
        for level in anchors:
            d = ((centers[start : start + len(level)] - gc) ** 2).sum(1).sqrt()
            cand += (d.argsort()[: min(k, len(level))] + start).tolist()
            start += len(level)
        v = ious[cand, g]
        t = v.mean() + (v.std() if len(cand) > 1 else 0.0)
        x0, y0, x1, y1 = gt.tensor[g].tolist()
        for a in cand:
            cx, cy = centers[a].tolist()
            inside = min(cx - x0, cy - y0, x1 - cx, y1 - cy) > 0.01
            if ious[a, g] >= t and inside and ious[a, g] > best[a]:
                best[a], matched[a] = ious[a, g], g
    return matched


@pytest.mark.parametrize("k", [1, 3, 9])
def test_atss_matches_reference(k):
    g = torch.Generator().manual_seed(k)
    anchors = [_grid(8, 32, 16), _grid(16, 64, 8), _grid(32, 128, 4)]
    for _ in range(5):
        gt = _instances(6, generator=g).gt_boxes
        assert torch.equal(ATSSAssigner(topk=k)(anchors, gt), _atss_reference(anchors, gt, k))


def test_fcos_center_sampling_assignment():
    anchors = [_grid(8, 8, 8), _grid(16, 16, 4)]  # strides 8, 16; ranges [0, 64], [64, inf]
    gt = Boxes(
        torch.tensor([[0.0, 0.0, 24.0, 24.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 128.0, 128.0]])
    )
    matched = CenterSamplingAssigner(strides=[8, 16], radius=1.5)(anchors, gt)
    expected = torch.full((80,), -1)
    expected[[0, 1, 8, 9]] = 1  # inside both small boxes: the smaller one wins
    expected[[2, 10, 16, 17, 18]] = 0  # within 12 px of (12, 12), inside [0, 24]^2 only
    expected[64 + 3 * 4 + 3] = 2  # (56, 56): |c - 64| < 24 and max distance 72 in [64, inf]
    assert torch.equal(matched, expected)


@pytest.mark.parametrize(
    "assigner", [ATSSAssigner(topk=9), CenterSamplingAssigner(strides=[8, 16])], ids=["atss", "fcos"]
)
def test_assigners_on_image_without_boxes(assigner):
    matched = assigner([_grid(8, 8, 4), _grid(16, 16, 2)], Boxes(torch.zeros(0, 4)))
    assert torch.equal(matched, torch.full((20,), -1))


def test_centerness_targets():
    points = torch.tensor([[5.0, 5.0], [1.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    assert torch.allclose(centerness_targets(points, boxes), torch.tensor([1.0, 1.0 / 3.0]))


# ------------------------------------------------------------ model training
@pytest.mark.parametrize(
    "assigner,quality,loss",
    [("atss", "iou", "efl"), ("fcos", "centerness", "focal"), ("atss", "centerness", "eqfl")],
)
def test_forward_backward(assigner, quality, loss):
    torch.manual_seed(0)
    cfg = _cfg(
        opts=[
            "MODEL.LTDET_DENSE.ASSIGNER", assigner,
            "MODEL.LTDET_DENSE.QUALITY", quality,
            "LTDET.CLS_LOSS.NAME", loss,
        ]
    )
    model = build_model(cfg)
    assert isinstance(model, LongTailATSS)
    with EventStorage():
        losses = model(_batch([3, 2]))
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_quality"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        sum(losses.values()).backward()
    for name in ("cls_score", "bbox_pred", "quality"):
        assert getattr(model.head, name).weight.grad.abs().sum() > 0, name


def test_eqfl_receives_iou_of_positives():
    model = build_model(_cfg(opts=["LTDET.CLS_LOSS.NAME", "eqfl"]))
    seen = {}
    forward = model.cls_loss.forward

    def spy(logits, labels, scores):
        seen.update(labels=labels, scores=scores)
        return forward(logits, labels, scores)

    model.cls_loss.forward = spy
    with EventStorage():
        model(_batch([3, 0]))
    pos = seen["labels"] < 40
    assert pos.any() and (seen["scores"][~pos] == 0).all()
    assert ((seen["scores"][pos] > 0) & (seen["scores"][pos] <= 1)).all()


def test_images_without_boxes_train():
    torch.manual_seed(0)
    model = build_model(_cfg())
    anchors = [_grid(8, 24, 16), _grid(16, 48, 8)]
    labels, boxes = model.label_anchors(anchors, [_instances(0), _instances(2)])
    assert torch.equal(labels[0], torch.full((320,), 40)) and not boxes[0].any()
    assert (labels[1] < 40).any()
    with EventStorage():
        mixed = model(_batch([4, 0]))
        assert all(torch.isfinite(v) for v in mixed.values())
        sum(mixed.values()).backward()
        model.zero_grad()
        empty = model(_batch([0, 0]))
        assert all(torch.isfinite(v) for v in empty.values())
        assert empty["loss_box_reg"] == 0 and empty["loss_quality"] == 0 and empty["loss_cls"] > 0
        sum(empty.values()).backward()
    assert model.head.cls_score.bias.grad.abs().sum() > 0


def test_inference_limit_and_classwise_nms():
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 128, 96) * 255, "height": 256, "width": 192}])
    inst = outputs[0]["instances"]
    assert 0 < len(inst) <= 7 and inst.image_size == (256, 192)
    assert inst.scores.min() >= 0 and (inst.scores[:-1] >= inst.scores[1:]).all()
    iou = pairwise_iou(inst.pred_boxes, inst.pred_boxes)
    same = inst.pred_classes[:, None] == inst.pred_classes[None, :]
    off_diagonal = ~torch.eye(len(inst), dtype=torch.bool)
    assert (iou[same & off_diagonal] <= model.test_nms_thresh).all()
    # Near-uniform class scores at initialisation: one box survives in several classes.
    assert (iou[~same] > model.test_nms_thresh).any()


def test_topk_per_class_inference():
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    cfg.LTDET.TEST.TOPK_PER_CLASS = 2
    model = build_model(cfg).eval()
    with torch.no_grad():
        inst = model([{"image": torch.rand(3, 128, 96) * 255, "height": 128, "width": 96}])[0]["instances"]
    counts = torch.bincount(inst.pred_classes, minlength=cfg.MODEL.LTDET_DENSE.NUM_CLASSES)
    assert len(inst) > 7 and int(counts.max()) == 2, "K per class replaces the per-image cap"


def test_loss_statistics_are_checkpointed():
    cfg = _cfg()
    cfg.LTDET.CLS_LOSS.NAME = "efl"
    model = build_model(cfg)
    model.cls_loss.grad_stats.pos_grad.fill_(3.0)
    state = model.state_dict()
    assert "cls_loss.grad_stats.pos_grad" in state and "cls_loss.grad_stats.neg_grad" in state
    fresh = build_model(cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.cls_loss.grad_stats.pos_grad, state["cls_loss.grad_stats.pos_grad"])


def test_non_dense_loss_is_rejected():
    cfg = _cfg()
    cfg.LTDET.CLS_LOSS.NAME = "softmax"
    with pytest.raises(ValueError, match="dense loss"):
        build_model(cfg)


def _loader(seed):
    step = 0
    while True:
        yield _batch([3, 0] if step % 2 else [2, 4], seed=seed + step)
        step += 1


@pytest.mark.parametrize("loss", ["focal", "efl", "eqfl", "eqlv2_focal"])
def test_simple_trainer_iterations(loss):
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.LTDET.CLS_LOSS.NAME = loss
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    trainer = SimpleTrainer(model, _loader(seed=1), optimizer)
    trainer.train(0, 3)
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 3 and all(math.isfinite(v) for v, _ in history)
    for name, _ in model.named_parameters():
        assert torch.isfinite(model.get_parameter(name)).all(), name
    stats = [b for n, b in model.cls_loss.named_buffers() if "pos_grad" in n or "pending" in n]
    assert stats and sum(float(b.sum()) for b in stats) > 0, "loss saw no positive gradient"


# ------------------------------------------------------------ distributed
def _num_pos_worker(rank, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[: 2 + 4 * rank] = True  # 2 positives on rank 0, 6 on rank 1
    queue.put((rank, LongTailATSS._num_positives(mask)))
    dist.destroy_process_group()


def test_num_positives_all_reduced(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    init_file = str(tmp_path / "init")
    procs = [ctx.Process(target=_num_pos_worker, args=(r, init_file, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert dict(queue.get() for _ in procs) == {0: 4.0, 1: 4.0}


# ------------------------------------------------------------ configs
@pytest.mark.parametrize("path", ATSS_CONFIGS, ids=[os.path.relpath(p, REPO) for p in ATSS_CONFIGS])
def test_config_loads_and_builds(path):
    cfg = _cfg(path)
    assert cfg.MODEL.META_ARCHITECTURE == "LongTailATSS"
    if not os.path.basename(path).startswith("Base-"):
        assert cfg.OUTPUT_DIR != "./output"
    model = build_model(cfg)
    num_anchors = len(cfg.MODEL.LTDET_DENSE.ANCHOR_SCALES)
    assert model.head.cls_score.out_channels == num_anchors * cfg.MODEL.LTDET_DENSE.NUM_CLASSES
    assert model.max_detections_per_image == cfg.TEST.DETECTIONS_PER_IMAGE


def test_efl_ablation_switches():
    found = {}
    for path in glob.glob(os.path.join(REPO, "configs", "lvis_v1", "efl_ablation", "*.yaml")):
        cfg = _cfg(path)
        assert cfg.LTDET.CLS_LOSS.NAME == "efl"
        found[(cfg.LTDET.EFL.WEIGHTING_FACTOR, cfg.LTDET.EFL.FOCUSING_FACTOR)] = path
    assert set(found) == {(False, False), (True, False), (False, True)}
