#!/usr/bin/env python
"""Training-iteration time and peak memory of every synthetic config, relative to its baseline.

Each config (default: every ``configs/synthetic/*.yaml``) trains in a fresh subprocess exactly as
``train_net.py`` builds it (model, train loader, optimizer, ``GradientRatioHook`` when the loss
collects statistics): ``--warmup`` untimed iterations, then ``--iters`` timed ones (run_step plus
every hook's after_step). Configs run one after the other, ``--rounds`` times in alternating order so
that machine-load drift hits all of them; the median step time over all rounds is reported with its
ratio to the family's baseline: ``faster_rcnn_softmax`` for the two-stage configs (``faster_rcnn_*``,
``mask_rcnn_*``), ``atss_focal`` for the dense ones.

Peak memory of the timed iterations: on CPU the peak RSS increase of the training process over its
RSS after warm-up (VmHWM - VmRSS, after resetting VmHWM), on CUDA ``torch.cuda.max_memory_allocated``
over the allocated memory after warm-up; the largest over rounds is reported.

Example:
    python bench/config_iteration_time.py --iters 20 --rounds 2
    python bench/config_iteration_time.py --configs configs/synthetic/faster_rcnn_eqlv2.yaml \\
        configs/synthetic/faster_rcnn_softmax.yaml MODEL.DEVICE cpu
"""
import ltdet  # noqa: F401  (first: registers ltdet's modules and the detectron2 ops stand-in)

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.env import seed_all_rng

from hook_overhead import StepTimer
from ltdet.engine import build_config, build_grad_ratio_hook
from rss_peak import peak_rss_kib, reset_peak_rss, trim_heap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = {"faster_rcnn": "faster_rcnn_softmax", "mask_rcnn": "faster_rcnn_softmax", "atss": "atss_focal"}


def config_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def baseline_of(name):
    for prefix, baseline in BASELINES.items():
        if name.startswith(prefix + "_"):
            return baseline
    return None


def _memory_mark(device):
    """Reset the peak counter; return the current level (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    trim_heap()
    return reset_peak_rss() * 1024


def _memory_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_kib() * 1024


def child(args):
    """Train ``args.child`` for warmup + iters iterations; print {"times": [...], "peak_mib": x}."""
    cfg = build_config(args.child, [*args.opts, "OUTPUT_DIR", tempfile.mkdtemp(prefix="ltdet_bench_")])
    seed_all_rng(cfg.SEED)
    model = build_model(cfg)
    model.train()
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), build_optimizer(cfg, model))
    timer = StepTimer()
    trainer.register_hooks([build_grad_ratio_hook(cfg, model), timer])
    device = torch.device(cfg.MODEL.DEVICE)
    trainer.train(0, args.warmup)
    base = _memory_mark(device)
    # one extra untimed last iteration: it carries the once-per-run end-of-training outputs
    timer.window = (args.warmup, args.warmup + args.iters)
    trainer.train(args.warmup, args.warmup + args.iters + 1)
    peak = _memory_peak(device)
    print(json.dumps({"times": timer.times, "peak_mib": (peak - base) / 2**20, "device": str(device)}))


def run_child(config, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config,
           "--warmup", str(args.warmup), "--iters", str(args.iters), *args.opts]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--configs", nargs="+", default=None, help="config files (default: configs/synthetic/*)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per config and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the configs, alternating order")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config")
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    configs = args.configs or sorted(glob.glob(os.path.join(REPO, "configs", "synthetic", "*.yaml")))
    configs = [os.path.abspath(c) for c in configs]
    times = {config_name(c): [] for c in configs}
    peaks = {config_name(c): 0.0 for c in configs}
    device = "?"
    for r in range(args.rounds):
        for config in configs if r % 2 == 0 else configs[::-1]:
            result = run_child(config, args)
            name = config_name(config)
            times[name] += result["times"]
            peaks[name] = max(peaks[name], result["peak_mib"])
            device = result["device"]
            print(f"round {r} {name}: median {statistics.median(result['times']):.3f} s/iter, "
                  f"peak +{result['peak_mib']:.0f} MiB", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{len(configs)} configs, device {device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} x {args.iters} timed iterations each, torch {torch.__version__}")
    print(f"{'config':<24}{'s/iter':>9}{'time ratio':>12}{'peak MiB':>10}{'mem ratio':>11}  baseline")
    for name in times:
        base = baseline_of(name)
        t_ratio = f"{medians[name] / medians[base]:.2f}" if base in medians else "-"
        m_ratio = f"{peaks[name] / peaks[base]:.2f}" if base in peaks and peaks[base] > 0 else "-"
        print(f"{name:<24}{medians[name]:>9.3f}{t_ratio:>12}{peaks[name]:>10.0f}{m_ratio:>11}  {base or '-'}")


if __name__ == "__main__":
    main()
