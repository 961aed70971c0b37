"""End to end: train_net.py trains a few iterations, evaluates with the lvis API,
resumes, and evaluates a checkpoint with --eval-only (real subprocesses)."""
import json
import os
import subprocess
import sys

import pytest

from ltdet.data.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TINY_CLASSES = 6
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APr", "bbox/APc", "bbox/APf", "bbox/APs")


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2datasets")
    generate(str(root / "synthetic_lt"), seed=1, num_train=120, num_val=8, image_size=64,
             num_frequent=1, num_common=2, num_rare=3, val_min_images=1, progress=False)
    return str(root)


def run_train_net(datasets_root, *args, expect_failure=False):
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root)
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if expect_failure:
        assert out.returncode != 0, out.stdout[-3000:] + out.stderr[-3000:]
    else:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def tiny_opts(output_dir, max_iter):
    return [
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.STEPS", "()",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "DATALOADER.NUM_WORKERS", "0", "LTDET.GRAD_STATS.PERIOD", "1",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_TINY_CLASSES),
        "OUTPUT_DIR", output_dir,
    ]


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_evaluate_resume_eval_only(tiny_datasets, tmp_path):
    config = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_eqlv2.yaml")
    out_dir = str(tmp_path / "run")
    log = run_train_net(tiny_datasets, "--config-file", config, *tiny_opts(out_dir, 3))
    assert "APr" in log and "APf" in log
    final = read_metrics(out_dir)[-1]
    for key in METRICS:
        assert key in final, f"{key} missing from metrics.json"
    assert os.path.isfile(os.path.join(out_dir, "model_final.pth"))

    log = run_train_net(tiny_datasets, "--config-file", config, "--resume", *tiny_opts(out_dir, 5))
    iters = [m["iteration"] for m in read_metrics(out_dir) if "total_loss" in m]
    assert max(iters) == 4, "resumed run continues to MAX_ITER"
    assert "Loading from" in log or "Resuming" in log or "resume" in log.lower()

    weights = os.path.join(out_dir, "model_final.pth")
    log = run_train_net(
        tiny_datasets, "--config-file", config, "--eval-only",
        "MODEL.WEIGHTS", weights, *tiny_opts(str(tmp_path / "eval"), 1),
    )
    assert "APr" in log and "APc" in log

    # EQLv2 weights evaluated with the softmax config: refused, naming both (AP 15.9 instead of 55.3 before)
    softmax = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml")
    log = run_train_net(
        tiny_datasets, "--config-file", softmax, "--eval-only",
        "MODEL.WEIGHTS", weights, *tiny_opts(str(tmp_path / "mismatch"), 1), expect_failure=True,
    )
    assert "CheckpointMismatchError" in log and "loss 'eqlv2'" in log and "loss 'softmax'" in log
    assert "LTDET.CHECKPOINT.ALLOW_MISMATCH" in log

    # a truncated checkpoint is named instead of a bare EOFError
    truncated = os.path.join(str(tmp_path), "truncated.pth")
    with open(weights, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:1000])
    log = run_train_net(
        tiny_datasets, "--config-file", config, "--eval-only",
        "MODEL.WEIGHTS", truncated, *tiny_opts(str(tmp_path / "truncated"), 1), expect_failure=True,
    )
    assert f"cannot read checkpoint {truncated} (1000 bytes)" in log


# ------------------------------------------------------------------ exact resume
def _no_eval_opts(output_dir, max_iter, config):
    opts = tiny_opts(output_dir, max_iter) + ["DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "3"]
    if "atss" in config:
        opts = [o.replace("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.LTDET_DENSE.NUM_CLASSES") for o in opts]
    return opts


def _load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_state(a, b, where=""):
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# one per kind of training state: EQLv2's statistics, Seesaw's counts, ACSL's generator, ATSS's EMA
RESUME_CONFIGS = ["faster_rcnn_eqlv2.yaml", "faster_rcnn_seesaw.yaml", "faster_rcnn_acsl_end2end.yaml", "atss_efl.yaml"]


@pytest.mark.parametrize("config_name", RESUME_CONFIGS)
def test_resume_through_train_net_is_exact(tiny_datasets, tmp_path, config_name):
    """Stopping after the checkpoint at iteration 2 and resuming gives the uninterrupted run, bit for bit.

    The interruption is simulated exactly: the uninterrupted run's output dir as it was right
    after that checkpoint (later checkpoints gone, last_checkpoint pointing to it).
    """
    import shutil

    config = os.path.join(REPO, "configs", "synthetic", config_name)
    straight = str(tmp_path / "straight")
    run_train_net(tiny_datasets, "--config-file", config, *_no_eval_opts(straight, 6, config))
    stopped = str(tmp_path / "stopped")
    os.makedirs(stopped)
    shutil.copy(os.path.join(straight, "model_0000002.pth"), stopped)
    with open(os.path.join(stopped, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    log = run_train_net(tiny_datasets, "--config-file", config, "--resume", *_no_eval_opts(stopped, 6, config))
    assert "Restored the RNG states of iteration 2" in log

    a, b = _load(os.path.join(straight, "model_final.pth")), _load(os.path.join(stopped, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 5
    _assert_same_state(a["model"], b["model"], "model")
    _assert_same_state(a["trainer"], b["trainer"], "trainer")  # optimizer, scheduler, RNG states, data seed
    assert a["trainer"]["_trainer"]["optimizer"]["state"], "the optimizer state (momentum) is saved"
    stats = [k for k in a["model"] if "pos_grad" in k or "cum_samples" in k or k.endswith("_extra_state")]
    assert stats, "the run has training state besides the weights"
    with open(os.path.join(straight, "grad_stats.json")) as f, open(os.path.join(stopped, "grad_stats.json")) as g:
        assert json.load(f)["stats"] == json.load(g)["stats"]


# ------------------------------------------------------------------ decoupled training
CLASSIFIER = "roi_heads.box_predictor.cls_score."


def test_fine_tune_changes_only_the_classifier(tiny_datasets, tmp_path):
    """ACSL's protocol: stage 2 trains cls_score alone; every other tensor, BN buffers included, is unchanged."""
    softmax = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml")
    stage1 = str(tmp_path / "stage1")
    run_train_net(tiny_datasets, "--config-file", softmax, *_no_eval_opts(stage1, 3, softmax))
    weights = os.path.join(stage1, "model_final.pth")

    acsl = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_acsl.yaml")
    stage2 = str(tmp_path / "acsl")
    log = run_train_net(tiny_datasets, "--config-file", acsl, "MODEL.WEIGHTS", weights, *_no_eval_opts(stage2, 3, acsl))
    assert "LTDET.TRAIN_ONLY" in log and "'roi_heads.box_predictor.cls_score.bias'" in log
    before, after = _load(weights)["model"], _load(os.path.join(stage2, "model_final.pth"))["model"]
    changed = sorted(k for k in before if not k.startswith("roi_heads.box_predictor.cls_loss.")
                     and not torch_equal(before[k], after[k]))
    assert changed == [CLASSIFIER + "bias", CLASSIFIER + "weight"]
    assert any("running_mean" in k for k in before), "the synthetic backbone has BatchNorm buffers"

    # cRT: the classifier is re-initialised, not loaded (with lr 0 it stays at its initialisation)
    crt = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_crt.yaml")
    stage2 = str(tmp_path / "crt")
    run_train_net(tiny_datasets, "--config-file", crt, "MODEL.WEIGHTS", weights, "SOLVER.BASE_LR", "0.0",
                  *_no_eval_opts(stage2, 2, crt))
    after = _load(os.path.join(stage2, "model_final.pth"))["model"]
    assert float(after[CLASSIFIER + "bias"].abs().max()) == 0.0 != float(before[CLASSIFIER + "bias"].abs().max())
    assert 0.005 < float(after[CLASSIFIER + "weight"].std()) < 0.02  # detectron2's normal(std=0.01) init
    assert torch_equal(after["roi_heads.box_predictor.bbox_pred.weight"], before["roi_heads.box_predictor.bbox_pred.weight"])


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


# ----------------------------------------------------------------------- NorCal
def test_norcal_gamma_sweep_in_eval_only(tiny_datasets, tmp_path):
    """One trained softmax model, evaluated for several NorCal gammas; gamma 0 is the plain evaluation."""
    config = os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml")
    out_dir = str(tmp_path / "softmax")
    sweep = ["LTDET.TEST.NORCAL.GAMMAS", "[0.0, 2.0]"]
    log = run_train_net(tiny_datasets, "--config-file", config, *tiny_opts(out_dir, 3), *sweep, expect_failure=True)
    assert "LTDET.TEST.NORCAL.GAMMAS is a sweep for --eval-only" in log
    run_train_net(tiny_datasets, "--config-file", config, *tiny_opts(out_dir, 3), "DATASETS.TEST", "()")
    weights = os.path.join(out_dir, "model_final.pth")
    eval_opts = ["--eval-only", "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    sweep_dir = str(tmp_path / "sweep")
    log = run_train_net(tiny_datasets, "--config-file", config, *eval_opts, *tiny_opts(sweep_dir, 1), *sweep)
    assert "NorCal sweep (bbox)" in log
    with open(os.path.join(sweep_dir, "norcal_sweep.json")) as f:
        results = json.load(f)["results"]
    assert list(results) == ["norcal_gamma=0", "norcal_gamma=2"]
    plain_dir = str(tmp_path / "plain")
    run_train_net(tiny_datasets, "--config-file", config, *eval_opts, *tiny_opts(plain_dir, 1))
    with open(os.path.join(plain_dir, "inference", "lvis_instances_results.json")) as f:
        plain = json.load(f)
    # each gamma evaluated; gamma 2 (the sweep's last detections file) changes the plain scores
    assert all({"AP", "APr", "APc", "APf"} <= set(r["bbox"]) for r in results.values())
    with open(os.path.join(sweep_dir, "inference", "lvis_instances_results.json")) as f:
        calibrated = json.load(f)
    assert len(plain) and [d["score"] for d in calibrated] != [d["score"] for d in plain]
