#!/usr/bin/env python
"""Long-tail study: every ltdet method on the synthetic dataset, same schedule and seeds.

Trains every synthetic method config (``configs/synthetic/faster_rcnn_*.yaml``, ``atss_*.yaml``: one per
registered loss, plus the decoupled ones) with ``train_net.py``
once per seed (``--jobs`` subprocesses at a time, each with ``OMP_NUM_THREADS`` = cores / jobs),
then reads the last evaluation of each run's ``metrics.json`` (bbox AP, AP50, APr, APc, APf, AP1..AP5)
and writes, under ``--out``:

- ``results.md``: mean ± std over seeds per method (markdown table); ``results.json``: every run's numbers;
- ``grad_ratio_two_stage.png`` / ``grad_ratio_dense.png``: ``tools/plot_grad_ratio.py`` overlays of the
  first seed's runs;
- ``<method>/seed<k>/``: the runs (``stdout.log`` holds train_net's output).

Decoupled methods (ACSL's fine-tune, cRT) start from another method's model: their config's
``MODEL.WEIGHTS`` is ``output/synthetic/<baseline>/model_final.pth``; the study trains that baseline first
and points each seed's second stage at the same seed's baseline run.

Resumable: a run whose ``metrics.json`` already holds the final evaluation is skipped, an unfinished one
continues from its last checkpoint (``--resume``). The synthetic dataset is generated (default parameters)
under ``$DETECTRON2_DATASETS/synthetic_lt`` if absent, and both NUM_CLASSES keys are set from it.
``--max-iter`` rescales ``SOLVER.STEPS``, ``WARMUP_ITERS`` and ``CHECKPOINT_PERIOD`` with it. Config
overrides for every run follow the flags (after a single-value flag, or after ``--``); they come last on
each train_net.py command line, so they win.

Examples:
    python bench/long_tail_study.py --seeds 0 1 2 --jobs 4 --device cuda --out output/long_tail_study
    python bench/long_tail_study.py --methods faster_rcnn_softmax atss_focal --seeds 0 --max-iter 2 \\
        --out /tmp/smoke SOLVER.IMS_PER_BATCH 2
"""
import argparse
import glob
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import ltdet  # noqa: F401,E402  (registers the losses)
from ltdet.losses import LOSS_REGISTRY  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Config-name prefix of each loss family's synthetic detector.
FAMILY_PREFIX = {"two_stage": "faster_rcnn", "dense": "atss"}
METRICS = ("AP", "AP50", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4", "AP5")


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each repetition")
    parser.add_argument("--max-iter", type=int, default=None, help="SOLVER.MAX_ITER (default: the configs')")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores shared by the jobs")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE of every run (cpu, cuda)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"subset of {', '.join(METHODS)}")
    parser.add_argument("--out", default="output/long_tail_study", help="output directory")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    return args


def dataset_root():
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic_lt")


def ensure_dataset():
    """Generate the synthetic dataset if absent; return its number of classes."""
    from ltdet.data.datasets import read_lvis_categories
    from ltdet.data.synthetic import generate

    root = dataset_root()
    if not os.path.isfile(os.path.join(root, "train.json")):
        print(f"generating the synthetic dataset in {root}")
        generate(root)
    return len(read_lvis_categories(os.path.join(root, "train.json"))[0])


def schedule_opts(method, max_iter):
    """``SOLVER.*`` overrides that scale the config's schedule to ``max_iter`` iterations."""
    if max_iter is None:
        return []
    cfg = load_method_config(method)
    scale = max_iter / cfg.SOLVER.MAX_ITER
    steps = sorted({round(s * scale) for s in cfg.SOLVER.STEPS} & set(range(1, max_iter)))
    return [
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


def run_max_iter(method, max_iter):
    if max_iter is not None:
        return max_iter
    return load_method_config(method).SOLVER.MAX_ITER


def train(job):
    """Run one train_net.py subprocess; return (method, seed, return code)."""
    method, seed, run_dir, cmd, env = job
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    print(f"{'done' if code == 0 else f'FAILED (exit {code})'}: {method} seed {seed} -> {run_dir}", flush=True)
    return method, seed, code


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


def method_label(method):
    """The method name without its detector prefix (``faster_rcnn_eqlv2`` -> ``eqlv2``)."""
    return next(method[len(p) + 1:] for p in FAMILY_PREFIX.values() if method.startswith(p + "_"))


def plot_grad_ratio(out, family, methods, seed):
    """Overlay the ``grad_stats.json`` of the given methods' runs for ``seed``."""
    runs = [(m, os.path.join(out, m, f"seed{seed}")) for m in methods]
    runs = [(m, d) for m, d in runs if os.path.isfile(os.path.join(d, "grad_stats.json"))]
    if not runs:
        return None
    path = os.path.join(out, f"grad_ratio_{family}.png")
    labels = [method_label(m) for m, _ in runs]
    cmd = [sys.executable, os.path.join(REPO, "tools", "plot_grad_ratio.py"), *[d for _, d in runs],
           "--labels", *labels, "--out", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        print(f"plot_grad_ratio.py failed for {family}:\n{proc.stderr[-2000:]}")
        return None
    return path


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    num_classes = ensure_dataset()
    threads = str(max(1, args.cores // max(1, args.jobs)))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    common = ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.LTDET_DENSE.NUM_CLASSES", str(num_classes)]
    if args.device:
        common += ["MODEL.DEVICE", args.device]
    baselines = {m: baseline_of(m) for m in args.methods}
    missing = sorted({b for b in baselines.values() if b and b not in args.methods})
    if missing:
        raise SystemExit(f"decoupled methods need their first stage in --methods too: {missing}")
    max_iters, waves = {}, ([], [])
    for method in args.methods:
        max_iters[method] = run_max_iter(method, args.max_iter)
        schedule = schedule_opts(method, args.max_iter)
        for seed in args.seeds:
            run_dir = os.path.join(out, method, f"seed{seed}")
            if final_metrics(run_dir, max_iters[method]) is not None:
                print(f"skip (finished): {method} seed {seed}")
                continue
            stage = []
            if baselines[method]:
                stage = ["MODEL.WEIGHTS", os.path.join(out, baselines[method], f"seed{seed}", "model_final.pth")]
            cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config_path(method),
                   "--resume", *common, *schedule, *stage, "SEED", str(seed), "OUTPUT_DIR", run_dir, *args.opts]
            waves[bool(baselines[method])].append((method, seed, run_dir, cmd, env))
    jobs = waves[0] + waves[1]
    print(f"{len(jobs)} runs to train ({len(waves[1])} second stages after their baselines), {args.jobs} at a "
          f"time, OMP_NUM_THREADS={threads}", flush=True)
    if args.dry_run:
        for job in jobs:
            print(" ".join(job[3]))
        return 0
    failed = []
    for wave in waves:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            failed += [(m, s) for m, s, code in pool.map(train, wave) if code != 0]

    results = {}
    for method in args.methods:
        runs = {}
        for seed in args.seeds:
            metrics = final_metrics(os.path.join(out, method, f"seed{seed}"), max_iters[method])
            if metrics is not None:
                runs[str(seed)] = {k: metrics[k] for k in METRICS if k in metrics}
        results[method] = {"config": os.path.relpath(config_path(method), REPO), "runs": runs}
    table = summarize(results, args.methods)
    figures = [plot_grad_ratio(out, family, [m for m in args.methods if m.startswith(prefix + "_")], args.seeds[0])
               for family, prefix in FAMILY_PREFIX.items()]
    settings = {"seeds": args.seeds, "max_iter": args.max_iter, "device": args.device, "opts": args.opts,
                "num_classes": num_classes, "command": " ".join(sys.argv)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"settings": settings, "methods": results}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# Long-tail study (synthetic dataset)\n\n")
        f.write(f"bbox metrics of the final evaluation, mean ± std over seeds {args.seeds}; "
                f"`{settings['command']}`\n\n{table}\n\n")
        for path in filter(None, figures):
            f.write(f"![{os.path.basename(path)}]({os.path.basename(path)})\n\n")
    print(table)
    print(f"wrote {os.path.join(out, 'results.md')} and results.json")
    if failed:
        print(f"failed runs (see their stdout.log): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
