"""Speed and peak memory of ltdet's dense losses vs torchvision's sigmoid focal loss.

Shape shorthand: M dense samples, C foreground classes; logits [M, C] float32
on CPU, labels [M] (a fraction ``--fg`` of foreground samples), IoU scores [M].

Time: forward + backward of each loss on the same tensors, interleaved in one
process (``--warmup`` rounds discarded), median over ``--repeats`` rounds; the
ratio is to the median of ``torchvision.ops.sigmoid_focal_loss(logits, onehot,
reduction="sum")`` (the one-hot target is built beforehand and not timed).
The stateful losses get per-class statistics first, so γ^j and the weights
differ per class (no shortcut for equal factors).

Memory: each loss runs in a fresh subprocess that builds the inputs, runs
forward + backward once (lazy initialisation), returns freed heap pages to the
OS (glibc ``malloc_trim``), resets the peak resident set size (Linux
``/proc/self/clear_refs``), records the current RSS, runs forward + backward
again and reports VmHWM - VmRSS: the peak extra memory of one step, including
the [M, C] ``logits.grad``.

    python bench/dense_loss_speed.py [--m 20000] [--c 1203] [--repeats 7]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from rss_peak import peak_rss_kib, reset_peak_rss, trim_heap
from ltdet.losses import EFLLoss, EQFLLoss, EQLv2FocalLoss, FocalLoss

LOSSES = {"focal": FocalLoss, "efl": EFLLoss, "eqfl": EQFLLoss, "eqlv2_focal": EQLv2FocalLoss}
NAMES = ("torchvision",) + tuple(LOSSES)


def make_inputs(m: int, c: int, fg: float, seed: int = 0):
    """logits[M, C] (requires grad), labels[M], scores[M], onehot[M, C] (for torchvision)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(m, c, generator=gen) * 2.0 - 4.6).requires_grad_(True)
    labels = torch.full((m,), c, dtype=torch.long)
    fg_rows = torch.rand(m, generator=gen) < fg
    labels[fg_rows] = torch.randint(0, c, (int(fg_rows.sum()),), generator=gen)
    scores = torch.rand(m, generator=gen)
    onehot = F.one_hot(labels, c + 1)[:, :c].float()
    return logits, labels, scores, onehot


def make_step(name: str, c: int, logits, labels, scores, onehot):
    """A closure running forward + backward of loss ``name`` once."""
    if name == "torchvision":
        args = (logits, onehot)
        loss_fn = partial(sigmoid_focal_loss, reduction="sum")
    else:
        loss_fn = LOSSES[name](c)
        args = (logits, labels, scores) if name == "eqfl" else (logits, labels)
        if name != "focal":
            gen = torch.Generator().manual_seed(1)
            loss_fn.grad_stats.pos_grad.copy_(torch.rand(c, generator=gen, dtype=torch.float64) * 1.5)
            loss_fn.grad_stats.neg_grad.fill_(1.0)

    def step():
        loss_fn(*args).backward()
        logits.grad = None

    return step


def time_all(args) -> dict:
    inputs = make_inputs(args.m, args.c, args.fg)
    steps = {name: make_step(name, args.c, *inputs) for name in NAMES}
    times = {name: [] for name in NAMES}
    for rnd in range(args.warmup + args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_child(args) -> None:
    """Print the peak extra RSS (MiB) of one forward + backward of ``args.memory_child``."""
    step = make_step(args.memory_child, args.c, *make_inputs(args.m, args.c, args.fg))
    step()
    trim_heap()
    base = reset_peak_rss()
    step()
    print(json.dumps({"peak_mib": (peak_rss_kib() - base) / 1024.0}))


def measure_memory(args) -> dict:
    out = {}
    for name in NAMES:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name]
        cmd += ["--m", str(args.m), "--c", str(args.c), "--fg", str(args.fg)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--m", type=int, default=20000, help="M, dense samples")
    parser.add_argument("--c", type=int, default=1203, help="C, classes (LVIS v1: 1203)")
    parser.add_argument("--fg", type=float, default=0.02, help="fraction of foreground samples")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    threads = torch.get_num_threads()
    print(f"logits [{args.m}, {args.c}] float32, CPU, {threads} threads, torch {torch.__version__}")
    times = time_all(args)
    memory = measure_memory(args)
    ref_t, ref_m = times["torchvision"], memory["torchvision"]
    print(f"{'loss':<14}{'fwd+bwd s':>11}{'time ratio':>12}{'peak MiB':>10}{'mem ratio':>11}")
    for name in NAMES:
        t, mem = times[name], memory[name]
        print(f"{name:<14}{t:>11.3f}{t / ref_t:>12.2f}{mem:>10.0f}{mem / ref_m:>11.2f}")
    print("time: median of interleaved rounds in one process; memory: peak RSS increase "
          "(VmHWM - VmRSS) of one step in a fresh subprocess per loss")


if __name__ == "__main__":
    main()
