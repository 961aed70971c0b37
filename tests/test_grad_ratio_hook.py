"""GradientRatioHook: TensorBoard events, resume continuity, multi-process sync, plot tool."""
import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)

import importlib.util
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.checkpoint import Checkpointer
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils.events import TensorboardXWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ltdet import add_ltdet_config
from ltdet.engine import GradientRatioHook, LongTailCheckpointer, build_grad_ratio_hook, write_grad_stats
from ltdet.engine.grad_ratio_hook import _tags
from ltdet.engine.grad_ratio_plot import class_order, gaussian_smooth
from ltdet.losses import SigmoidBCELoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, DIM, BATCH = 6, 8, 32
CATEGORY_STATS = {
    "class_names": [f"class{i}" for i in range(NUM_CLASSES)],
    "image_count": [400, 150, 60, 30, 8, 2],
    "instance_count": [900, 300, 90, 40, 9, 2],
    "groups": [2, 2, 1, 1, 0, 0],
    "num_images": 500,
}
GROUP_SCALARS = [f"grad_{k}/{g}" for k in ("ratio", "pos", "neg") for g in ("rare", "common", "frequent")]


class TinyClassifier(nn.Module):
    """A linear classifier trained with sigmoid BCE (which collects statistics)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, NUM_CLASSES + 1)
        self.cls_loss = SigmoidBCELoss(NUM_CLASSES)

    def forward(self, batch):
        x, labels = batch
        return {"loss_cls": self.cls_loss(self.fc(x), labels)}


def make_batch(index, part=None, parts=1):
    """Deterministic long-tailed batch ``index``, or its ``part``-th of ``parts`` slices."""
    g = torch.Generator().manual_seed(1000 + index)
    probs = torch.tensor([0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.3])  # last: background
    labels = torch.multinomial(probs, BATCH, replacement=True, generator=g)
    x = torch.randn(BATCH, DIM, generator=g) + labels[:, None].float() * 0.3
    if part is not None:
        size = BATCH // parts
        x, labels = x[part * size : (part + 1) * size], labels[part * size : (part + 1) * size]
    return x, labels


def batches(start, part=None, parts=1):
    index = start
    while True:
        yield make_batch(index, part, parts)
        index += 1


def make_trainer(model, start=0, lr=0.05, part=None, parts=1):
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return SimpleTrainer(model, batches(start, part, parts), optimizer), optimizer


def new_model():
    torch.manual_seed(0)
    return TinyClassifier()


def make_hook(model, **kwargs):
    kwargs.setdefault("period", 5)
    return GradientRatioHook(model, category_stats=CATEGORY_STATS, **kwargs)


def checkpointer_writing_json(model, hook, out, **checkpointables):
    """A checkpointer that writes grad_stats.json after each save, as LongTailTrainer wires it."""
    checkpointer = LongTailCheckpointer(model, out, **checkpointables)
    checkpointer.add_save_callback(lambda path, extra: write_grad_stats(out, hook.to_dict(extra["iteration"])))
    return checkpointer


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """20 iterations with the hook, checkpoints every 10 and a TensorBoard writer: (output dir, model)."""
    out = str(tmp_path_factory.mktemp("run"))
    model = new_model()
    trainer, optimizer = make_trainer(model)
    writer = TensorboardXWriter(out)
    hook = make_hook(model)
    checkpointer = checkpointer_writing_json(model, hook, out, optimizer=optimizer)
    trainer.register_hooks([hook, hooks.PeriodicCheckpointer(checkpointer, 10), hooks.PeriodicWriter([writer], period=5)])
    trainer.train(0, 20)
    writer.close()
    return out, model


def test_events_in_tensorboard(short_run):
    out, model = short_run
    acc = EventAccumulator(out, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in GROUP_SCALARS:
        assert name in tags["scalars"], name
        assert [e.step for e in acc.Scalars(name)] == [4, 9, 14, 19]
    assert not [t for t in tags["scalars"] if t.startswith("grad_") and "loss" in t]
    assert "grad_ratio_hist" in tags["histograms"]
    assert "grad_ratio_curve" in tags["images"]
    image = acc.Images("grad_ratio_curve")[-1]
    assert image.step == 19 and image.width > 200 and image.height > 150

    stats = model.cls_loss.grad_stats
    ratio = (stats.pos_grad / stats.neg_grad).numpy()
    assert acc.Scalars("grad_ratio/rare")[-1].value == pytest.approx(ratio[4:].mean(), rel=1e-6)
    assert acc.Scalars("grad_neg/frequent")[-1].value == pytest.approx(stats.neg_grad[:2].mean().item(), rel=1e-6)


def test_json_written_with_the_last_checkpoint(short_run):
    out, model = short_run
    with open(os.path.join(out, "grad_stats.json")) as f:
        data = json.load(f)
    assert data["iteration"] == 19
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    assert data["stats"]["cls_loss.grad_stats"]["pos"] == saved["cls_loss.grad_stats.pos_grad"].tolist()
    assert data["groups"] == CATEGORY_STATS["groups"]
    assert data["class_names"] == CATEGORY_STATS["class_names"]
    assert data["image_count"] == CATEGORY_STATS["image_count"]
    entry = data["stats"]["cls_loss.grad_stats"]
    assert entry["loss"] == "SigmoidBCELoss"
    stats = model.cls_loss.grad_stats
    assert entry["pos"] == stats.pos_grad.tolist() and entry["neg"] == stats.neg_grad.tolist()
    assert entry["ratio"] == pytest.approx((stats.pos_grad / stats.neg_grad).tolist())


def test_resume_reproduces_statistics(tmp_path):
    straight = new_model()
    trainer, _ = make_trainer(straight)
    trainer.register_hooks([make_hook(straight)])
    trainer.train(0, 12)

    first = new_model()
    trainer, optimizer = make_trainer(first)
    checkpointer = Checkpointer(first, str(tmp_path), optimizer=optimizer)
    trainer.register_hooks([make_hook(first), hooks.PeriodicCheckpointer(checkpointer, 6)])
    trainer.train(0, 6)

    resumed = TinyClassifier()  # other initial weights: everything comes from the checkpoint
    start = Checkpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)["iteration"] + 1
    trainer, optimizer = make_trainer(resumed, start=start)
    Checkpointer(resumed, str(tmp_path), optimizer=optimizer).resume_or_load("", resume=True)
    trainer.register_hooks([make_hook(resumed, reset_on_load=True)])  # a resumed run never resets
    trainer.train(start, 12)

    assert start == 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.cls_loss.grad_stats.pos_grad.sum() > 0


def test_reset_on_load_only_for_new_runs():
    model = new_model()
    stats = model.cls_loss.grad_stats
    for start, reset, expect_zero in ((0, True, True), (3, True, False), (0, False, False)):
        stats.add(torch.ones(NUM_CLASSES), torch.ones(NUM_CLASSES))
        stats.synchronize()
        hook = make_hook(model, reset_on_load=reset)
        hook.trainer = SimpleNamespace(start_iter=start)
        hook.before_train()
        assert (stats.pos_grad.sum().item() == 0) == expect_zero


def _distributed_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = new_model()
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    # lr = 0 keeps the weights equal to a single process on the whole batches
    trainer, _ = make_trainer(ddp, lr=0.0, part=rank, parts=world_size)
    hook = make_hook(ddp, period=2)
    trainer.register_hooks([hook])
    trainer.train(0, 3)
    if rank == 0:
        write_grad_stats(out_dir, hook.to_dict(2))
    stats = model.cls_loss.grad_stats
    torch.save({"pos": stats.pos_grad, "neg": stats.neg_grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = new_model()
    trainer, _ = make_trainer(single, lr=0.0)
    trainer.register_hooks([make_hook(single)])
    trainer.train(0, 3)
    expected = single.cls_loss.grad_stats
    for key, value in (("pos", expected.pos_grad), ("neg", expected.neg_grad)):
        assert torch.equal(ranks[0][key], ranks[1][key])
        # float32 logits of a half batch may differ in the last bit from the whole batch's
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-6, atol=1e-9)
    assert os.path.isfile(tmp_path / "grad_stats.json")


def _plot_tool():
    spec = importlib.util.spec_from_file_location("plot_grad_ratio", os.path.join(REPO, "tools", "plot_grad_ratio.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_tool_on_real_run(short_run, tmp_path):
    from matplotlib.image import imread

    out, _ = short_run
    png = str(tmp_path / "ratio.png")
    _plot_tool().main([out, out, "--labels", "a", "b", "--sort", "instance", "--sigma", "1", "--out", png])
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500


def test_plot_many_classes(tmp_path):
    from matplotlib.image import imread

    c = 1203
    image_count = np.maximum(1, (5000 / np.arange(1, c + 1) ** 0.9).astype(int))
    groups = np.where(image_count <= 10, 0, np.where(image_count <= 100, 1, 2))
    pos = image_count * 0.5
    data = {
        "format": "ltdet.grad_stats/1",
        "iteration": 99,
        "class_names": [f"c{i}" for i in range(c)],
        "image_count": image_count.tolist(),
        "instance_count": (image_count * 2).tolist(),
        "groups": groups.tolist(),
        "group_names": ["rare", "common", "frequent"],
        "stats": {"x.grad_stats": {"loss": "EQLv2Loss", "pos": pos.tolist(), "neg": [3000.0] * c}},
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "grad_stats.json").write_text(json.dumps(data))
    png = str(tmp_path / "many.png")
    _plot_tool().main([str(run), "--out", png])
    assert imread(png).shape[1] > 1000


def test_helpers():
    smooth = gaussian_smooth([2.0] * 20, 5.0)
    np.testing.assert_allclose(smooth, 2.0)
    assert np.isfinite(gaussian_smooth([1.0, np.nan, 3.0], 1.0)).all()
    assert class_order([5, 9, 5], [1, 1, 7], by="image").tolist() == [1, 2, 0]
    assert class_order([5, 9, 5], [1, 1, 7], by="instance").tolist() == [2, 1, 0]
    names = ["roi_heads.box_predictor.0.cls_loss.grad_stats", "roi_heads.box_predictor.1.cls_loss.grad_stats"]
    assert _tags(names) == ["roi_heads.box_predictor.0", "roi_heads.box_predictor.1"]
    assert _tags(["a.loss_fn.grad_stats", "b.loss_fn.grad_stats"]) == ["a", "b"]


def test_non_finite_statistics_never_stop_training(caplog):
    """inf / NaN / float32-overflowing ratios are left out with one warning (torch.histc raised on them)."""
    model = new_model()
    trainer, _ = make_trainer(model)
    hook = make_hook(model, period=1)
    stats = model.cls_loss.grad_stats
    # class 2: a finite float64 ratio (~1e44) that is inf as float32
    stats.pos_grad.copy_(torch.tensor([1.0, float("inf"), 1e45, 2.0, 0.0, float("nan")], dtype=torch.float64))
    stats.neg_grad.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    trainer.register_hooks([hook])
    with caplog.at_level("WARNING", logger="ltdet.engine.grad_ratio_hook"):
        trainer.train(0, 3)
        storage_hist = trainer.storage._histograms
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1, "warned once, not at every period"
    assert storage_hist, "the histogram of the finite classes is still published"
    assert math.isfinite(trainer.storage.history("grad_ratio/all").latest())


def test_publishing_errors_are_logged_once_and_training_continues(caplog):
    model = new_model()
    trainer, _ = make_trainer(model)
    hook = make_hook(model, period=1)

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    hook.put_events = broken
    trainer.register_hooks([hook])
    with caplog.at_level("WARNING", logger="ltdet.engine.grad_ratio_hook"):
        trainer.train(0, 4)
    assert len(trainer.storage.history("total_loss").values()) == 4
    assert sum("renderer exploded" in r.getMessage() for r in caplog.records) == 1


def test_build_returns_none_without_statistics():
    cfg = get_cfg()
    add_ltdet_config(cfg)
    assert build_grad_ratio_hook(cfg, nn.Linear(2, 2)) is None
    assert isinstance(build_grad_ratio_hook(cfg, new_model()), GradientRatioHook)
