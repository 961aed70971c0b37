#!/usr/bin/env python
"""Long-tail study: every ltdet method on a synthetic dataset, same schedule and seeds.

Trains every synthetic method config (``configs/synthetic/faster_rcnn_*.yaml``, ``atss_*.yaml``: one per
registered loss, plus the decoupled ones) with ``train_net.py``
once per seed (``--jobs`` subprocesses at a time, each with ``OMP_NUM_THREADS`` = cores / jobs),
then reads the last evaluation of each run's ``metrics.json`` (bbox AP, AP50, APr, APc, APf, AP1..AP5)
and writes, under ``--out``:

- ``results.md``: mean ± std over seeds per method; per-seed paired differences of each method against the
  baseline its paper compares with (``COMPARED_WITH``: sigmoid for EQL/EQLv2, softmax for Seesaw/ACSL/cRT,
  focal for EFL/EQFL/EQLv2-focal) with a paired t-test; the accumulated gradient ratio of every method's
  rare / common / frequent group (``grad_stats.json``); ``results.json``: every run's numbers;
- ``grad_ratio_two_stage.png`` / ``grad_ratio_dense.png``: ``tools/plot_grad_ratio.py`` overlays of the
  first seed's runs;
- ``<method>/seed<k>/``: the runs (``stdout.log`` holds train_net's output).

Decoupled methods (ACSL's fine-tune, cRT) start from another method's model: their config's
``MODEL.WEIGHTS`` is ``output/synthetic/<baseline>/model_final.pth``; the study trains that baseline first
and points each seed's second stage at the same seed's baseline run.

Resumable: a run whose ``metrics.json`` already holds the final evaluation is skipped, an unfinished one
continues from its last checkpoint (``--resume``), so the study can be stopped and continued in a later session.
Across sessions (a fresh clone has no ``output/``): every finished run is also written as a small record,
``<records>/<method>/seed<k>.json`` (its final metrics, group gradient ratios, NorCal sweep, the config
overrides it was trained with and the commit), next to a copy of its ``grad_stats.json``; a run whose record
holds the same overrides counts as finished. The ``lvis_like`` profile keeps its records in the repository
(``docs/results/lvis_like_study/runs``), so a later session trains only what is missing. A decoupled method
whose first stage exists only as a record trains that first stage again (it needs the model); the
metrics of the run on disk then replace the record's, and a difference from the record is printed.

Profiles (``--profile``, see ``PROFILES``):

- ``demo``: the embedded dataset (``ltdet.data.synthetic``, 40 classes, 1,000 images) and the configs as
  they are;
- ``lvis_like``: the LVIS-like dataset (``ltdet.data.synthetic_lvis``: 300 classes in LVIS's r/c/f
  proportions, a rare class in 1-10 of 20,000 training images, 4,000 validation images), 64 x 64 input,
  anchors halved, 16 images per batch, the two-stage schedule 1.5x the configs' (1,500 iterations, about
  1.2 epochs) and the dense one 3x (EFL trains 2x where EQLv2 trains 1x; a tiny ATSS iteration is 3x
  cheaper); the end-to-end ACSL ablation is left out.

The profile's dataset is generated under ``$DETECTRON2_DATASETS/<folder>`` if absent and both NUM_CLASSES
keys are set from it. ``--max-iter`` replaces the profile's schedule (``SOLVER.STEPS``, ``WARMUP_ITERS``
and ``CHECKPOINT_PERIOD`` rescaled with it). Config overrides for every run follow the flags (after a
single-value flag, or after ``--``); they come last on each train_net.py command line, so they win.

Examples:
    python bench/long_tail_study.py --seeds 0 1 2 --jobs 4 --device cuda --out output/long_tail_study
    OMP_NUM_THREADS=1 python bench/long_tail_study.py --profile lvis_like --seeds 0 1 2 --jobs 2 \
        --out output/lvis_like_study
    python bench/long_tail_study.py --methods faster_rcnn_softmax atss_focal --seeds 0 --max-iter 2 \\
        --out /tmp/smoke SOLVER.IMS_PER_BATCH 2
"""
import argparse
import datetime
import glob
import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

import ltdet  # noqa: F401,E402  (registers the losses)
from ltdet.losses import LOSS_REGISTRY  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Config-name prefix of each loss family's synthetic detector.
FAMILY_PREFIX = {"two_stage": "faster_rcnn", "dense": "atss"}
METRICS = ("AP", "AP50", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4", "AP5")
#: Metrics of the paired comparison with a method's baseline.
PAIRED_METRICS = ("AP", "APr", "APc", "APf")
#: The baseline each method's paper compares with: EQL (Tan et al. 2020, Tab. 1) and EQLv2 (Tab. 1) report
#: their gain over sigmoid BCE; Seesaw (Tab. 1), ACSL (Tab. 2) and cRT (EQLv2 Tab. 1 f) over softmax CE (ACSL
#: and cRT fine-tune that very model); EFL (Tab. 2/3), EQFL (EFL Tab. 8, with YOLOX) and EQLv2-focal over focal
#: loss; the federated loss (CenterNet2) replaces the sigmoid BCE over all classes; ECM (ltdet's choice) is
#: compared with detectron2's default softmax CE.
COMPARED_WITH = {
    "faster_rcnn_eql": "faster_rcnn_sigmoid",
    "faster_rcnn_eqlv2": "faster_rcnn_sigmoid",
    "faster_rcnn_seesaw": "faster_rcnn_softmax",
    "faster_rcnn_acsl": "faster_rcnn_softmax",
    "faster_rcnn_acsl_end2end": "faster_rcnn_softmax",
    "faster_rcnn_crt": "faster_rcnn_softmax",
    "faster_rcnn_sigmoid": "faster_rcnn_softmax",
    "faster_rcnn_federated": "faster_rcnn_sigmoid",
    "faster_rcnn_federated_eqlv2": "faster_rcnn_sigmoid",
    "faster_rcnn_ecm": "faster_rcnn_softmax",
    "atss_efl": "atss_focal",
    "atss_eqfl": "atss_focal",
    "atss_eqlv2_focal": "atss_focal",
}
#: Softmax methods whose finished runs are also evaluated with NorCal (``--norcal-gammas``): rows
#: ``<method>+norcal<γ>``, compared with the uncalibrated run of the same seed.
NORCAL_METHODS = ("faster_rcnn_softmax",)
#: Two-sided 95% critical values of Student's t with 1..10 degrees of freedom (a paired t-test over seeds).
T_CRITICAL_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)

_LVIS_LIKE_INPUT = (
    "DATASETS.TRAIN", '("synthetic_lvis_train",)', "DATASETS.TEST", '("synthetic_lvis_val",)',
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "16",
)


@dataclass(frozen=True)
class Profile:
    """A dataset and the config overrides that fit the synthetic configs to it.

    Attributes:
        folder: the dataset's folder under ``$DETECTRON2_DATASETS``.
        generator: ``"module:function"`` writing the dataset into a root given as first argument.
        opts: family (``FAMILY_PREFIX`` key) -> config overrides of its runs.
        schedule_scale: family -> factor on the configs' ``SOLVER`` schedule (absent: 1).
        method_opts: method -> config overrides of its runs only (after the family's).
        excluded: methods not in the profile's default method list.
        default_out: default ``--out``.
        records: default ``--records`` (the finished runs' records; None: none).
    """

    folder: str
    generator: str
    opts: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    schedule_scale: Dict[str, float] = field(default_factory=dict)
    method_opts: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    excluded: Tuple[str, ...] = ()
    default_out: str = "output/long_tail_study"
    records: Optional[str] = None


PROFILES = {
    "demo": Profile("synthetic_lt", "ltdet.data.synthetic:generate"),
    "lvis_like": Profile(
        "synthetic_lvis",
        "ltdet.data.synthetic_lvis:generate_lvis_like",
        opts={
            # objects of 16-44 px in 64 px images: the demo's anchors (16-256 on P2-P6) halved
            "two_stage": _LVIS_LIKE_INPUT + ("MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]"),
            "dense": _LVIS_LIKE_INPUT,
        },
        schedule_scale={"two_stage": 1.5, "dense": 3.0},
        method_opts={
            # the federated class set: LVIS's 50 (about the classes present in a batch of 16), not the demo's 20
            **{m: ("LTDET.FED_LOSS.NUM_CLASSES", "50")
               for m in ("faster_rcnn_federated", "faster_rcnn_federated_eqlv2")},
            # EQL's λ "set as 1.76 × 10^-3 to include all the rare and common categories" (EQL Tab. 1; ≈ 100 of
            # LVIS v0.5's 57k images): f_j = image count / 19,800 annotated images, so λ lies between common
            # (≤ 100 images, f ≤ 5.05e-3) and frequent (≥ 101, f ≥ 5.10e-3); the demo config's 0.1 (100 of
            # 1,000 images) puts 93% of the classes below it
            "faster_rcnn_eql": ("LTDET.EQL.LAMBDA", "0.005076"),
        },
        excluded=("faster_rcnn_acsl_end2end",),
        default_out="output/lvis_like_study",
        records="docs/results/lvis_like_study/runs",
    ),
}


def family_of(method):
    return next(family for family, prefix in FAMILY_PREFIX.items() if method.startswith(prefix + "_"))


def config_path(method):
    return os.path.join(REPO, "configs", "synthetic", f"{method}.yaml")


def study_methods():
    """The synthetic method configs: one per registered loss (registry order, two-stage first), then the
    other ``faster_rcnn_*`` / ``atss_*`` configs (decoupled training)."""
    per_loss = [f"{prefix}_{name}" for family, prefix in FAMILY_PREFIX.items() for name in LOSS_REGISTRY.names(family)]
    per_loss = [m for m in per_loss if os.path.isfile(config_path(m))]
    others = sorted(
        os.path.splitext(os.path.basename(p))[0]
        for prefix in FAMILY_PREFIX.values()
        for p in glob.glob(os.path.join(REPO, "configs", "synthetic", f"{prefix}_*.yaml"))
    )
    return tuple(per_loss + [m for m in others if m not in per_loss])


def baseline_of(method):
    """The method whose ``model_final.pth`` the config starts from (decoupled training), or None."""
    weights = load_method_config(method).MODEL.WEIGHTS
    parts = os.path.normpath(weights).split(os.sep)
    if parts[:2] == ["output", "synthetic"] and len(parts) == 4 and parts[3] == "model_final.pth":
        return parts[2]
    return None


def load_method_config(method):
    from detectron2.config import get_cfg

    from ltdet import add_ltdet_config

    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(config_path(method))
    return cfg


METHODS = study_methods()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="dataset and schedule (default: demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each repetition")
    parser.add_argument("--max-iter", type=int, default=None, help="SOLVER.MAX_ITER (default: the profile's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores shared by the jobs")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE of every run (cpu, cuda)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"subset of {', '.join(METHODS)} (default: the profile's)")
    parser.add_argument("--out", default=None, help="output directory (default: the profile's)")
    parser.add_argument("--records", default=None,
                        help="directory of the finished runs' records, read and written, relative to the repository "
                             "(default: the profile's; '' for none)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    parser.add_argument("--norcal-gammas", type=float, nargs="*", default=[1.0], metavar="GAMMA",
                        help="NorCal γ evaluated (--eval-only, one inference per γ) on the finished runs of "
                             f"{', '.join(NORCAL_METHODS)} (default: 1.0; none: no sweep)")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: write results.md / results.json from the runs finished so far")
    parser.add_argument("--rebase-data", default=None, metavar="OLD_ROOT",
                        help="train nothing: check that the profile's dataset differs from the one under OLD_ROOT "
                             "only in what no training or reported metric reads (annotation areas, the generator "
                             "version) and move the records of OLD_ROOT's data to it (see rebase_records)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    profile = PROFILES[args.profile]
    if args.methods is None:
        args.methods = [m for m in METHODS if m not in profile.excluded]
    args.out = args.out or profile.default_out
    if args.records is None:
        args.records = profile.records
    args.records = os.path.join(REPO, args.records) if args.records else None
    return args


def dataset_root(profile):
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), profile.folder)


def _json(path):
    with open(path) as f:
        return json.load(f)


def _write_json(path, data):
    """Write ``data`` to ``path`` atomically (a record is never left half written)."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def ensure_dataset(profile):
    """Generate the profile's dataset if absent; return its number of classes."""
    root = dataset_root(profile)
    module, function = profile.generator.split(":")
    module = importlib.import_module(module)
    if not os.path.isfile(os.path.join(root, "train.json")):
        print(f"generating the {profile.folder} dataset in {root}", flush=True)
        getattr(module, function)(root)
    train = _json(os.path.join(root, "train.json"))  # parsed once: its generator version and classes
    version = train["info"].get("generator", {}).get("version")
    if version != getattr(module, "GENERATOR_VERSION", version):
        print(f"{root} was made by version {version} of {module.__name__}, now {module.GENERATOR_VERSION}: records "
              f"of the current data will not match it (regenerate it: python -m {module.__name__})", flush=True)
    return len(train["categories"])


def run_schedule(method, max_iter=None, scale=1.0):
    """(SOLVER.MAX_ITER, overrides) of a run: the config's schedule, scaled by ``scale`` or to ``max_iter``.

    The overrides rescale ``SOLVER.STEPS``, ``WARMUP_ITERS`` and ``CHECKPOINT_PERIOD`` with the length.
    """
    cfg = load_method_config(method)
    if max_iter is None and scale == 1.0:
        return cfg.SOLVER.MAX_ITER, []
    if max_iter is None:
        max_iter = max(1, round(cfg.SOLVER.MAX_ITER * scale))
    scale = max_iter / cfg.SOLVER.MAX_ITER
    steps = sorted({round(s * scale) for s in cfg.SOLVER.STEPS} & set(range(1, max_iter)))
    return max_iter, [
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.STEPS", str(tuple(steps)),
        "SOLVER.WARMUP_ITERS", str(max(1, round(cfg.SOLVER.WARMUP_ITERS * scale))),
        "SOLVER.CHECKPOINT_PERIOD", str(max(1, round(cfg.SOLVER.CHECKPOINT_PERIOD * scale))),
    ]


def final_metrics(run_dir, max_iter):
    """The last evaluation in ``run_dir/metrics.json`` if it is the final one, else None.

    Args:
        run_dir (str): a run's OUTPUT_DIR.
        max_iter (int): the run's SOLVER.MAX_ITER; detectron2 logs the final evaluation at iteration
            max_iter - 1 or later, periodic ones (TEST.EVAL_PERIOD) before.

    Returns:
        dict or None: metric name (without "bbox/") -> value.
    """
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "bbox/AP" in record:
                last = record
    if last is None or last.get("iteration", -1) < max_iter - 1:
        return None
    return {k[len("bbox/"):]: v for k, v in last.items() if k.startswith("bbox/")}


def train(job):
    """Run one train_net.py subprocess; return (method, seed, return code)."""
    method, seed, run_dir, cmd, env = job
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    print(f"{'done' if code == 0 else f'FAILED (exit {code})'}: {method} seed {seed} -> {run_dir}", flush=True)
    return method, seed, code


def norcal_label(method, gamma):
    return f"{method}+norcal{gamma:g}"


def norcal_metrics(run_dir, gammas):
    """{γ: metrics} of ``run_dir/norcal/norcal_sweep.json`` if it holds every γ of ``gammas``, else None."""
    from ltdet.engine.trainer import bbox_results

    path = os.path.join(run_dir, "norcal", "norcal_sweep.json")
    if not os.path.isfile(path):
        return None
    sweep = _json(path)
    out = {}
    for gamma in gammas:
        res = sweep["results"].get(f"norcal_gamma={gamma:g}")
        if res is None:
            return None
        bbox = bbox_results(res)
        if bbox is None:
            return None
        out[gamma] = bbox
    return out


def norcal_command(method, run_dir, opts, gammas):
    """train_net.py's command line of the eval-only NorCal sweep of a finished run.

    Args:
        method: the run's method (its config).
        run_dir: the run's OUTPUT_DIR; the sweep writes ``run_dir/norcal/norcal_sweep.json``.
        opts: the run's config overrides (the same dataset and schedule as its training).
        gammas: the γ values.
    """
    # flags before the overrides: train_net.py's opts take the rest of the command line
    return [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config_path(method), "--eval-only",
            *opts, "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"),
            "LTDET.TEST.NORCAL.GAMMAS", str([float(g) for g in gammas]), "OUTPUT_DIR", os.path.join(run_dir, "norcal")]


RECORD_FORMAT = "ltdet.study_run/1"
#: A run directory's file of the commits (``git describe``) its training ran, one line per launch.
COMMIT_FILE = "study_commit.txt"


def record_path(records, method, seed):
    return os.path.join(records, method, f"seed{seed}.json")


def record_grad_stats_path(records, method, seed):
    return record_path(records, method, seed)[:-len(".json")] + ".grad_stats.json"


def git_commit():
    """``git describe --always --dirty`` of the repository, or "unknown" outside a git checkout."""
    proc = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO)
    return (proc.stdout.strip() if proc.returncode == 0 else "") or "unknown"


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def dataset_digest(root):
    """{file: md5} of the ``train.json`` and ``val.json`` under ``root`` (the data a record was trained on)."""
    return {name: _md5(os.path.join(root, name)) for name in ("train.json", "val.json")
            if os.path.isfile(os.path.join(root, name))}


def config_digest(method):
    """{config file: md5} of a method's config and its ``_BASE_`` chain (relative to the repository)."""
    digest, path = {}, config_path(method)
    while path:
        digest[os.path.relpath(path, REPO)] = _md5(path)
        with open(path) as f:
            base = next((line.split(":", 1)[1].strip().strip("'\"") for line in f if line.startswith("_BASE_:")), None)
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    return digest


def run_identity(method, opts, dataset):
    """What makes two trainings the same run: the config files, the overrides (output paths aside) and the data."""
    return {"opts": list(opts), "configs": config_digest(method), "dataset": dataset}


def machine():
    """The CPU model, core count and torch version of this machine (recorded with each run)."""
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


def machine_label(m):
    """A record's ``machine`` as text (None: not recorded, as in the first session's records)."""
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" if m else None


def same_metrics(a, b):
    """Equal final metrics (NaN, as an empty group's AP, equals NaN)."""
    return set(a) == set(b) and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def write_record(records, method, seed, run_dir, identity, metrics, norcal=None, previous=None):
    """Write the record of a finished run (and a copy of its ``grad_stats.json``); return its path.

    Args:
        records: the records directory.
        method, seed: the run.
        run_dir: its OUTPUT_DIR.
        identity: ``run_identity`` of the run.
        metrics: its final bbox metrics (``final_metrics``).
        norcal: {γ: bbox metrics} of its NorCal sweep, or None.
        previous: the record this one replaces (same identity): a record of the same metrics keeps its commit,
            one of other metrics (the run trained again) is kept inside as ``replaces``.
    """
    path = record_path(records, method, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    commit = None
    if os.path.isfile(os.path.join(run_dir, COMMIT_FILE)):
        with open(os.path.join(run_dir, COMMIT_FILE)) as f:
            commit = " ".join(dict.fromkeys(line.strip() for line in f if line.strip()))
    same = previous is not None and same_metrics(previous["metrics"], metrics)
    grad_stats, copy = os.path.join(run_dir, "grad_stats.json"), record_grad_stats_path(records, method, seed)
    if os.path.isfile(grad_stats):
        shutil.copyfile(grad_stats, copy)
    elif os.path.isfile(copy) and not same:  # another training's statistics
        os.remove(copy)
    record = {"format": RECORD_FORMAT, "method": method, "seed": seed,
              "config": os.path.relpath(config_path(method), REPO), **identity,
              "metrics": metrics, "grad_ratio": group_gradient_ratios(run_dir),
              "norcal": {f"{g:g}": m for g, m in (norcal or {}).items()},
              "commit": (previous["commit"] if same and previous.get("commit") else commit),
              "machine": previous.get("machine") if same else machine(),
              "written": datetime.date.today().isoformat()}
    if same:
        record["grad_ratio"] = record["grad_ratio"] or previous.get("grad_ratio")
        record.update({k: previous[k] for k in ("note", "replaces", "data_rebased") if k in previous})
    elif previous is not None:
        record["replaces"] = {k: v for k, v in previous.items() if k in (
            "metrics", "norcal", "commit", "machine", "written", "replaces", "data_rebased")}
    _write_json(path, record)
    return path


def read_record(records, method, seed, identity):
    """(record, None) of a run of this ``identity`` (see ``run_identity``), (record, why not) of another one,
    or (None, None) when there is none.

    A record of other overrides (another schedule, ``--max-iter``), other config files or other data is not
    this run; a record without config or data digests (written before they were recorded) is compared on
    its overrides.
    """
    path = record_path(records, method, seed) if records else None
    if not path or not os.path.isfile(path):
        return None, None
    record = _json(path)
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a {RECORD_FORMAT} record")
    grad_stats = record_grad_stats_path(records, method, seed)
    record["grad_stats"] = grad_stats if os.path.isfile(grad_stats) else None
    if record["opts"] != identity["opts"]:
        diff = next((i for i, (a, b) in enumerate(zip(record["opts"], identity["opts"])) if a != b),
                    min(len(record["opts"]), len(identity["opts"])))
        return record, (f"it was trained with other overrides (from {record['opts'][diff:diff + 2]} on, now "
                        f"{identity['opts'][diff:diff + 2]})")
    for key, what in (("configs", "config files"), ("dataset", "data")):
        if record.get(key) and record[key] != identity[key]:
            return record, f"it was trained with other {what} ({record[key]}, now {identity[key]})"
    return record, None


def record_sweep(record):
    """{γ: bbox metrics} of a record's NorCal sweep (``norcal_metrics``'s form)."""
    return {float(g): m for g, m in record["norcal"].items()}


def data_difference(old_root, new_root):
    """Check that the dataset under ``new_root`` is the one under ``old_root`` for training and for the study's
    metrics: the same image files (bytes), image entries, categories and annotations, boxes and polygons
    included, and the same generator parameters but its version. Only annotation ``area`` may differ: the
    LVIS API reads it only to split AP by area (APs/APm/APl), and every metric of the study (``METRICS``) is
    over area "all" (0 to 1e10); detectron2's loader does not read it.

    Returns:
        (annotations whose area differs, annotations, largest |area difference|).
    Raises:
        ValueError: naming the first difference in anything else.
    """
    changed, total, largest = 0, 0, 0.0
    for split in ("train", "val"):
        old, new = (_json(os.path.join(root, f"{split}.json")) for root in (old_root, new_root))
        for key in ("images", "categories", "licenses"):
            if old[key] != new[key]:
                raise ValueError(f"{split}.json: the {key} differ")
        params = [dict(d["info"].get("generator", {}), version=None) for d in (old, new)]
        if params[0] != params[1] or len(old["annotations"]) != len(new["annotations"]):
            raise ValueError(f"{split}.json: other generator parameters or another number of annotations")
        for a, b in zip(old["annotations"], new["annotations"]):
            if dict(a, area=None) != dict(b, area=None):
                raise ValueError(f"{split}.json: annotation {a['id']} differs beyond its area")
            total += 1
            if a["area"] != b["area"]:
                changed, largest = changed + 1, max(largest, abs(a["area"] - b["area"]))
        for image in new["images"]:
            paths = [os.path.join(root, image["coco_url"]) for root in (old_root, new_root)]
            if _md5(paths[0]) != _md5(paths[1]):
                raise ValueError(f"{image['coco_url']} differs")
    return changed, total, largest


def rebase_records(records, old_digest, new_digest, why):
    """Move the records of the data ``old_digest`` (``dataset_digest``) to ``new_digest``; each keeps the old
    digest and ``why`` in ``data_rebased``. Returns the paths rewritten."""
    rewritten = []
    for path in sorted(glob.glob(os.path.join(records, "*", "seed*.json"))):
        if path.endswith(".grad_stats.json"):
            continue
        record = _json(path)
        if record.get("dataset") != old_digest:
            continue
        record["dataset"] = new_digest
        record.setdefault("data_rebased", []).append(
            {"from": old_digest, "why": why, "written": datetime.date.today().isoformat()})
        _write_json(path, record)
        rewritten.append(path)
    return rewritten


def mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def summarize(results, methods):
    """Mean and std of every metric per method (in place); return the markdown table."""
    header = "| method | runs | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for method in methods:
        entry = results[method]
        runs = list(entry["runs"].values())
        entry["mean"], entry["std"] = {}, {}
        cells = []
        for key in METRICS:
            values = [r[key] for r in runs if key in r]
            if values:
                entry["mean"][key], entry["std"][key] = mean_std(values)
                cells.append(f"{entry['mean'][key]:.1f} ± {entry['std'][key]:.1f}")
            else:
                cells.append("-")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(results, methods, compared_with=None):
    """Per-seed differences of ``PAIRED_METRICS`` against each method's baseline in ``compared_with`` (default
    ``COMPARED_WITH``), in place (``results[method]["paired"]``); return the markdown table.

    A cell is ``mean ± std (per-seed differences)``, marked ``*`` when a paired two-sided t-test over the
    seeds rejects "no difference" at 5% (``T_CRITICAL_95``; needs >= 2 seeds and a non-zero spread). A
    per-seed difference of two runs trained on other machines (``results[m]["machines"]``: seed -> label,
    None where not recorded) is marked ``†``: another CPU moved a run's AP by up to 1.7 (README).
    """
    compared_with = COMPARED_WITH if compared_with is None else compared_with
    lines = ["| method | vs | seeds | " + " | ".join(f"Δ{k}" for k in PAIRED_METRICS) + " |",
             "|" + "---|" * (len(PAIRED_METRICS) + 3)]
    for method in methods:
        baseline = compared_with.get(method)
        if baseline not in results:
            continue
        runs, base = results[method]["runs"], results[baseline]["runs"]
        seeds = sorted(set(runs) & set(base), key=int)
        if not seeds:
            continue
        machines, base_machines = results[method].get("machines"), results[baseline].get("machines")
        other = {x for x in seeds if machines is not None and base_machines is not None
                 and machines.get(x) != base_machines.get(x)}
        paired = {"baseline": baseline, "seeds": [int(x) for x in seeds],
                  "other_machine_seeds": sorted(int(x) for x in other)}
        cells = []
        for key in PAIRED_METRICS:
            both = [x for x in seeds if key in runs[x] and key in base[x]]
            diffs = [runs[x][key] - base[x][key] for x in both]
            if not diffs:
                cells.append("-")
                continue
            mean, std = mean_std(diffs)
            n = len(diffs)
            significant = n > 1 and std > 0 and abs(mean) / (std / math.sqrt(n)) > T_CRITICAL_95[min(n - 1, 10) - 1]
            paired[key] = {"differences": diffs, "mean": mean, "std": std, "significant": bool(significant)}
            per_seed = " ".join(f"{d:+.1f}{'†' if x in other else ''}" for x, d in zip(both, diffs))
            cells.append(f"{mean:+.1f} ± {std:.1f} ({per_seed}){' *' if significant else ''}")
        results[method]["paired"] = paired
        lines.append(f"| {method} | {method_label(baseline)} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_gradient_ratios(run_dir):
    """Accumulated pos/neg gradient ratio per class group of a run (mean over the group's classes that
    received negative gradient, as ``GradientRatioHook``'s ``grad_ratio/<group>`` scalars), or None."""
    from ltdet.engine.grad_ratio_plot import grad_ratio
    from ltdet.engine.grad_stats_file import load_grad_stats

    try:
        data = load_grad_stats(run_dir)
    except (OSError, ValueError):
        return None
    stats = next(iter(data["stats"].values()))
    ratio, groups = grad_ratio(stats["pos"], stats["neg"]), np.asarray(data["groups"])
    out = {}
    for index, name in enumerate(data["group_names"]):
        values = ratio[(groups == index) & np.isfinite(ratio)]
        if values.size:
            out[name] = float(values.mean())
    return out


def gradient_ratio_table(results, methods, ratios):
    """Mean over the finished seeds of each method's group ratios (in place, ``results[method]["grad_ratio"]``);
    return the markdown table.

    Args:
        ratios: method -> {seed: group ratios (``group_gradient_ratios``) or None}; only the seeds in
            ``results[method]["runs"]`` (finished runs, not a half-trained one) count.
    """
    names = ("rare", "common", "frequent")
    lines = ["| method | runs | " + " | ".join(f"ratio {g}" for g in names) + " |", "|" + "---|" * 5]
    for method in methods:
        per_seed = [r for seed, r in ratios.get(method, {}).items() if str(seed) in results[method]["runs"] and r]
        if not per_seed:
            continue
        mean = {g: float(np.mean([r[g] for r in per_seed if g in r])) for g in names if any(g in r for r in per_seed)}
        results[method]["grad_ratio"] = {"mean": mean, "runs": per_seed}
        cells = [f"{mean[g]:.3f}" if g in mean else "-" for g in names]
        lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_label(method):
    """The method name without its detector prefix (``faster_rcnn_eqlv2`` -> ``eqlv2``)."""
    return next(method[len(p) + 1:] for p in FAMILY_PREFIX.values() if method.startswith(p + "_"))


def plot_grad_ratio(out, family, curves):
    """Overlay ``grad_stats.json`` files with ``tools/plot_grad_ratio.py``.

    Args:
        curves: [(legend label, grad_stats.json path)] of the family's methods.
    Returns:
        the image written (``out/grad_ratio_<family>.png``), or None.
    """
    if not curves:
        return None
    path = os.path.join(out, f"grad_ratio_{family}.png")
    cmd = [sys.executable, os.path.join(REPO, "tools", "plot_grad_ratio.py"), *[f for _, f in curves],
           "--labels", *[label for label, _ in curves], "--out", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        print(f"plot_grad_ratio.py failed for {family}:\n{proc.stderr[-2000:]}")
        return None
    return path


def main(argv=None):
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    out = os.path.abspath(args.out)
    num_classes = ensure_dataset(profile)
    if args.rebase_data:
        old_root = os.path.expanduser(args.rebase_data)
        old_digest, new_digest = dataset_digest(old_root), dataset_digest(dataset_root(profile))
        changed, total, largest = data_difference(old_root, dataset_root(profile))
        why = (f"the data of {new_digest} (generator of commit {git_commit()}) differs from {old_digest} only in "
               f"{changed} of {total} annotation areas (by <= {largest:.2f}), which neither training nor the "
               f"study's metrics read (bench/long_tail_study.py data_difference)")
        paths = rebase_records(args.records, old_digest, new_digest, why) if args.records else []
        print(f"{why}: {len(paths)} records moved to it", flush=True)
        return 0
    threads = str(max(1, args.cores // max(1, args.jobs)))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    common = ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.LTDET_DENSE.NUM_CLASSES", str(num_classes)]
    if args.device:
        common += ["MODEL.DEVICE", args.device]
    baselines = {m: baseline_of(m) for m in args.methods}
    missing = sorted({b for b in baselines.values() if b and b not in args.methods})
    if missing:
        raise SystemExit(f"decoupled methods need their first stage in --methods too: {missing}")
    max_iters, schedules, waves = {}, {}, ([], [])
    for method in args.methods:
        family = family_of(method)
        max_iters[method], schedules[method] = run_schedule(
            method, args.max_iter, profile.schedule_scale.get(family, 1.0))
        schedules[method] = list(profile.opts.get(family, ())) + list(profile.method_opts.get(method, ())) \
            + schedules[method]
    def opts_of(method, seed):  # the overrides that define a run (its output paths aside)
        return [*common, *schedules[method], "SEED", str(seed), *args.opts]

    def gammas_of(method):
        return list(args.norcal_gammas or []) if method in NORCAL_METHODS else []

    def run_dir_of(method, seed):
        return os.path.join(out, method, f"seed{seed}")

    dataset = dataset_digest(dataset_root(profile))
    identities = {(m, x): run_identity(m, opts_of(m, x), dataset) for m in args.methods for x in args.seeds}
    # read once: (record, why it is not this run) of every run, and the runs finished in --out before training
    stored = {(m, x): read_record(args.records, m, x, identities[(m, x)]) for m, x in identities}
    finished = {(m, x) for m, x in identities if final_metrics(run_dir_of(m, x), max_iters[m]) is not None}
    recorded, replaced = {}, {}  # (method, seed) -> record of a run finished in an earlier session
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in finished:
                continue
            record, other = stored[(method, seed)]
            if other:
                print(f"record of {method} seed {seed} not used: {other}", flush=True)
            elif record is not None:
                recorded[(method, seed)] = record
                missing = [g for g in gammas_of(method) if f"{g:g}" not in record["norcal"]]
                if missing:
                    print(f"record of {method} seed {seed} has no NorCal sweep of γ = {missing} (its model is gone:"
                          f" delete the record to train it again with the sweep)", flush=True)
    for seed in args.seeds:  # a second stage still to train needs its first stage's model on disk
        for method in args.methods:
            base = baselines[method]
            model = os.path.join(run_dir_of(base, seed), "model_final.pth") if base else None
            if (base and not (args.summarize or args.dry_run) and (method, seed) not in recorded
                    and (base, seed) in recorded and not os.path.isfile(model)):
                print(f"{base} seed {seed} is only a record: trained again for the second stage of {method}")
                replaced[(base, seed)] = recorded.pop((base, seed))
    for seed in args.seeds:  # seed-major: a first complete comparison early
        for method in args.methods:
            run_dir = run_dir_of(method, seed)
            if (method, seed) in finished:
                print(f"skip (finished): {method} seed {seed}")
                continue
            if (method, seed) in recorded:
                print(f"skip (recorded, commit {recorded[(method, seed)]['commit']}): {method} seed {seed}")
                continue
            stage = []
            if baselines[method]:
                stage = ["MODEL.WEIGHTS", os.path.join(run_dir_of(baselines[method], seed), "model_final.pth")]
            cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config_path(method),
                   "--resume", *common, *schedules[method], *stage, "SEED", str(seed), "OUTPUT_DIR", run_dir,
                   *args.opts]
            waves[bool(baselines[method])].append((method, seed, run_dir, cmd, env))
    sweeps = []
    for seed in args.seeds:
        for method in (m for m in args.methods if gammas_of(m) and (m, seed) not in recorded):
            run_dir = run_dir_of(method, seed)
            if norcal_metrics(run_dir, gammas_of(method)) is not None:
                continue
            cmd = norcal_command(method, run_dir, opts_of(method, seed), gammas_of(method))
            sweeps.append((f"{method} NorCal", seed, os.path.join(run_dir, "norcal"), cmd, env))
    if args.summarize:
        print(f"--summarize: {len(waves[0]) + len(waves[1])} unfinished runs left out", flush=True)
        waves, sweeps = ([], []), []
    jobs = waves[0] + waves[1] + sweeps
    print(f"{len(jobs)} runs to train ({len(waves[1])} second stages after their baselines), {args.jobs} at a "
          f"time, OMP_NUM_THREADS={threads}", flush=True)
    if args.dry_run:
        for job in jobs:
            print(" ".join(job[3]))
        return 0
    commit = git_commit()
    for _, _, run_dir, _, _ in waves[0] + waves[1]:  # the code each (resumed) training runs
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, COMMIT_FILE), "a") as f:
            f.write(f"{commit}\n")
    failed = []
    for wave in waves:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            failed += [(m, s) for m, s, code in pool.map(train, wave) if code != 0]
    # NorCal sweeps of the runs that are finished now
    sweeps = [job for job in sweeps if final_metrics(os.path.dirname(job[2]), max_iters[job[0].split()[0]])]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        failed += [(m, s) for m, s, code in pool.map(train, sweeps) if code != 0]

    results, ratios, curves, norcal_runs, here = {}, {}, {}, {}, machine()
    for method in args.methods:
        runs, sources, machines = {}, {}, {}
        for seed in args.seeds:
            run_dir = run_dir_of(method, seed)
            metrics = final_metrics(run_dir, max_iters[method])
            record, other = stored[(method, seed)]
            if metrics is not None:  # trained in this output directory
                metrics = {k: metrics[k] for k in METRICS if k in metrics}
                sweep = norcal_metrics(run_dir, gammas_of(method)) if gammas_of(method) else {}
                ratio, grad_stats = group_gradient_ratios(run_dir), os.path.join(run_dir, "grad_stats.json")
                sources[str(seed)] = "output"
                previous = None if other else record
                same = previous is not None and same_metrics(previous["metrics"], metrics)
                if previous is not None and not same:
                    print(f"{method} seed {seed} trained again: AP {metrics['AP']:.3f}, its record "
                          f"(commit {previous['commit']}) {previous['metrics']['AP']:.3f}", flush=True)
                if same and not sweep:  # the same model: the record's sweep holds
                    sweep = record_sweep(previous)
                machines[str(seed)] = machine_label(previous.get("machine") if same else here)
                if other:
                    print(f"{method} seed {seed}: no record written, {record_path(args.records, method, seed)} "
                          f"is kept ({other}); use another --records for these runs", flush=True)
                elif args.records:
                    sources[str(seed)] = os.path.relpath(write_record(
                        args.records, method, seed, run_dir, identities[(method, seed)], metrics, sweep, previous),
                        REPO)
            elif (method, seed) in recorded or (method, seed) in replaced:  # (a first stage not trained again)
                record = recorded.get((method, seed)) or replaced[(method, seed)]
                metrics, ratio, grad_stats = record["metrics"], record["grad_ratio"], record["grad_stats"]
                sweep = record_sweep(record)
                sources[str(seed)] = os.path.relpath(record_path(args.records, method, seed), REPO)
                machines[str(seed)] = machine_label(record.get("machine"))
            else:
                continue
            runs[str(seed)] = {k: metrics[k] for k in METRICS if k in metrics}
            ratios.setdefault(method, {})[seed] = ratio
            if grad_stats and os.path.isfile(grad_stats):
                curves.setdefault(method, (seed, grad_stats))  # the first seed with statistics
            for gamma in gammas_of(method):
                if sweep and gamma in sweep:
                    norcal_runs.setdefault((method, gamma), {})[str(seed)] = {
                        k: sweep[gamma][k] for k in METRICS if k in sweep[gamma]}
        results[method] = {"config": os.path.relpath(config_path(method), REPO), "runs": runs, "sources": sources,
                           "machines": machines}
    rows, compared_with = list(args.methods), dict(COMPARED_WITH)
    for method in (m for m in args.methods if gammas_of(m)):
        for gamma in gammas_of(method):
            label = norcal_label(method, gamma)
            results[label] = {"config": results[method]["config"], "norcal_gamma": gamma,
                              "runs": norcal_runs.get((method, gamma), {})}
            compared_with[label] = method
            rows.append(label)
    table = summarize(results, rows)
    paired = paired_differences(results, rows, compared_with)
    ratio_table = gradient_ratio_table(results, args.methods, ratios)
    figures = []
    for family, prefix in FAMILY_PREFIX.items():
        family_curves = [(method_label(m) + ("" if curves[m][0] == args.seeds[0] else f" (seed {curves[m][0]})"),
                          curves[m][1]) for m in args.methods if m.startswith(prefix + "_") and m in curves]
        figures.append(plot_grad_ratio(out, family, family_curves))
    settings = {"profile": args.profile, "seeds": args.seeds, "max_iter": max_iters, "device": args.device,
                "opts": args.opts, "num_classes": num_classes,
                "records": args.records and os.path.relpath(args.records, REPO),
                "command": " ".join(["bench/long_tail_study.py", *(sys.argv[1:] if argv is None else argv)])}
    commits = sorted({str(r["commit"]) for r in recorded.values()})
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"settings": settings, "methods": results}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"# Long-tail study (synthetic dataset, profile {args.profile})\n\n")
        f.write(f"bbox metrics of the final evaluation, mean ± std over seeds {args.seeds}; "
                f"`{settings['command']}`\n\n")
        if recorded:
            f.write(f"{len(recorded)} of the runs are records of earlier sessions (`{settings['records']}`, "
                    f"commits: {', '.join(commits)}); the rest were trained in `{args.out}`.\n\n")
        f.write(table + "\n\n")
        f.write("Paired differences with the baseline each paper compares with (same seed), mean ± std "
                "(per seed); * = paired t-test, p < 0.05; † = the two runs of that seed were trained on other "
                "machines (`machine` of their records; the first session's records have none and count as one "
                "machine):\n\n" + paired + "\n\n")
        f.write("Accumulated positive / negative gradient ratio of the classification logits at the end of "
                "training, mean over each group's classes (and over seeds); the figures show each method's "
                "first seed with statistics:\n\n" + ratio_table + "\n\n")
        for path in filter(None, figures):
            f.write(f"![{os.path.basename(path)}]({os.path.basename(path)})\n\n")
    print(table, paired, ratio_table, sep="\n\n")
    print(f"wrote {os.path.join(out, 'results.md')} and results.json")
    if failed:
        print(f"failed runs (see their stdout.log): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
