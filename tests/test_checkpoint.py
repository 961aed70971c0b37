"""Checkpoints: atomic writes (also under SIGKILL), named load errors, the model identity check."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import ltdet  # noqa: F401
from detectron2.config import get_cfg

from ltdet import add_ltdet_config
from ltdet.engine import CheckpointError, CheckpointMismatchError, LongTailCheckpointer, model_identity
from ltdet.engine.atomic_io import atomic_open
from ltdet.losses import SigmoidBCELoss, SoftmaxCELoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tiny(nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cls_loss = loss


def identity(loss_name, arch="GeneralizedRCNN", model=None):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE, cfg.LTDET.CLS_LOSS.NAME = arch, loss_name
    return model_identity(cfg, model)


def saved(tmp_path, name="model_0000009"):
    model = Tiny(SoftmaxCELoss(3))
    checkpointer = LongTailCheckpointer(model, str(tmp_path), identity=identity("softmax", model=model))
    checkpointer.save(name, iteration=9)
    return model, checkpointer


# ------------------------------------------------------------------ atomic
def test_a_failing_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, checkpointer = saved(tmp_path, "model_final")
    path = tmp_path / "model_final.pth"
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"\0" * 100)
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=19)
    assert path.read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"], "no temporary file is left"


def test_sigkill_during_a_write_leaves_no_partial_file(tmp_path):
    """A process killed while writing (as the issue's SIGKILL during model_final.pth) leaves the old file."""
    target = tmp_path / "model_final.pth"
    target.write_bytes(b"previous checkpoint")
    code = (
        "import sys, time\n"
        "from ltdet.engine.atomic_io import atomic_open\n"
        "with atomic_open(sys.argv[1], 'wb') as f:\n"
        "    for _ in range(600):\n"
        "        f.write(b'x' * 4096); f.flush(); time.sleep(0.01)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO)
    deadline = time.time() + 60
    while not any(n.startswith(".model_final.pth.tmp") and os.path.getsize(tmp_path / n) > 0
                  for n in os.listdir(tmp_path)):
        assert time.time() < deadline and proc.poll() is None, "the writer never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"previous checkpoint"


def test_atomic_open_refuses_appending(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass


# ---------------------------------------------------------- named load errors
@pytest.mark.parametrize("size", [0, 100])
def test_a_truncated_checkpoint_is_named(tmp_path, size):
    _, checkpointer = saved(tmp_path)
    path = tmp_path / "model_0000009.pth"
    path.write_bytes(path.read_bytes()[:size])
    fresh = LongTailCheckpointer(Tiny(SoftmaxCELoss(3)), str(tmp_path))
    with pytest.raises(CheckpointError, match=rf"{path}.*\({size} bytes\).*truncated or corrupt"):
        fresh.resume_or_load("", resume=True)
    with pytest.raises(CheckpointError, match=str(path)):
        fresh.load(str(path))


# --------------------------------------------------------------- identity
def test_identity_is_saved_and_checked(tmp_path):
    model, _ = saved(tmp_path)
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert data["ltdet"] == {"meta_architecture": "GeneralizedRCNN", "cls_loss": "softmax", "objectness": False}

    other = Tiny(SigmoidBCELoss(3))
    strict = LongTailCheckpointer(other, identity=identity("sigmoid", model=other), strict=True)
    with pytest.raises(CheckpointMismatchError, match=r"trained as GeneralizedRCNN with loss 'softmax'.*"
                                                      r"config builds GeneralizedRCNN with loss 'sigmoid'"):
        strict.load(str(tmp_path / "model_0000009.pth"))
    LongTailCheckpointer(other, identity=identity("sigmoid", model=other), strict=True, allow_mismatch=True).load(
        str(tmp_path / "model_0000009.pth")
    )
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_fine_tuning_from_another_loss_is_allowed_but_resuming_is_not(tmp_path, caplog):
    saved(tmp_path)
    other = Tiny(SigmoidBCELoss(3))
    checkpointer = LongTailCheckpointer(other, str(tmp_path), identity=identity("sigmoid", model=other))
    with caplog.at_level("WARNING", logger="ltdet.engine.checkpoint"):
        checkpointer.resume_or_load(str(tmp_path / "model_0000009.pth"), resume=False)  # a new run: fine-tuning
    assert "Loading weights across models" in caplog.text
    with pytest.raises(CheckpointMismatchError):
        checkpointer.resume_or_load("", resume=True)  # the run's own checkpoint of another model


def test_save_callbacks_run_after_the_file_is_complete(tmp_path):
    model = Tiny(SoftmaxCELoss(3))
    checkpointer = LongTailCheckpointer(model, str(tmp_path))
    seen = []
    checkpointer.add_save_callback(lambda path, extra: seen.append((os.path.getsize(path) > 0, extra["iteration"])))
    checkpointer.save("model_0000004", iteration=4)
    assert seen == [(True, 4)]
