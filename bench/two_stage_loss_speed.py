"""Forward + backward time of every two-stage loss, relative to plain BCE.

Usage:
    .venv/bin/python bench/two_stage_loss_speed.py [--n 8192] [--classes 1203] [--repeats 15]

Logits are [N, C + 1] float32 on the CPU (LVIS v1: C = 1203, so 1204 columns),
25% foreground rows with Zipf-distributed classes. The baseline is
``F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / N`` with the
one-hot target built outside the timed region. Runs are interleaved (one run of
every loss per repeat) after a warm-up, and the median is reported, so load
from other processes affects all rows alike. ``torch.set_num_threads`` is left
at its default. The "peak MB" column is the growth of the peak resident set
size (Linux VmHWM, reset after the inputs are built) of a fresh process running
only that loss, the 39 MB logits gradient included; skip it with ``--no-memory``.
"""
import argparse
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation noise from imports

from rss_peak import peak_rss_kib, reset_peak_rss  # noqa: E402
from ltdet.losses import ACSLLoss, EQLLoss, EQLv2Loss, SeesawLoss, SigmoidBCELoss, SoftmaxCELoss  # noqa: E402

NUM_IMAGES = 100_000


def make_inputs(n: int, c: int, seed: int = 0):
    """Logits [N, C+1], labels [N], image_freq [C], class_groups [C] of a Zipf-like dataset."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, c + 1, dtype=torch.float64)
    image_count = (20_000.0 / ranks).clamp(min=1.0).floor()
    image_freq = image_count / NUM_IMAGES
    groups = (image_count > 10).long() + (image_count > 100).long()
    fg = torch.rand(n, generator=g) < 0.25
    labels = torch.full((n,), c, dtype=torch.long)
    labels[fg] = torch.multinomial(image_freq.float(), int(fg.sum()), replacement=True, generator=g)
    logits = torch.randn(n, c + 1, generator=g).mul_(2.0).sub_(3.0)
    return logits, labels, image_freq, groups


def build_losses(c: int, labels: torch.Tensor, image_freq, groups):
    """name -> callable(z) returning the scalar loss."""
    n = labels.numel()
    onehot = F.one_hot(labels, c + 1).float()
    losses = {
        "softmax_ce": SoftmaxCELoss(c),
        "sigmoid_bce": SigmoidBCELoss(c),
        "eql": EQLLoss(c, image_freq),
        "eqlv2": EQLv2Loss(c),
        "acsl": ACSLLoss(c, class_groups=groups),
        "seesaw": SeesawLoss(c),
    }
    fns = {"bce (baseline)": lambda z: F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / n}
    fns.update({name: (lambda z, m=m: m(z, labels)) for name, m in losses.items()})
    return fns


def step(fn, z: torch.Tensor) -> float:
    z.grad = None
    t0 = time.perf_counter()
    fn(z).backward()
    return time.perf_counter() - t0


def peak_memory_mb(name: str, args) -> float:
    """Peak RSS growth (MB) of a fresh process running ``name`` a few times."""
    cmd = [sys.executable, __file__, "--only", name, "--n", str(args.n), "--classes", str(args.classes)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def run_only(args) -> None:
    """Child mode of ``peak_memory_mb``: print the peak RSS growth in MB (Linux)."""
    logits, labels, image_freq, groups = make_inputs(args.n, args.classes)
    fn = build_losses(args.classes, labels, image_freq, groups)[args.only]
    z = logits.requires_grad_()
    before = reset_peak_rss()
    for _ in range(3):
        step(fn, z)
    print((peak_rss_kib() - before) / 1024.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192, help="number of proposals N")
    parser.add_argument("--classes", type=int, default=1203, help="foreground classes C")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_only(args)
        return
    logits, labels, image_freq, groups = make_inputs(args.n, args.classes)
    fns = build_losses(args.classes, labels, image_freq, groups)
    z = logits.requires_grad_()
    times = {name: [] for name in fns}
    for it in range(args.warmup + args.repeats):
        for name, fn in fns.items():
            t = step(fn, z)
            if it >= args.warmup:
                times[name].append(t)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = median["bce (baseline)"]
    print(f"logits [{args.n}, {args.classes + 1}] float32, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved runs, torch {torch.__version__}")
    header = f"{'loss':<16} {'fwd+bwd ms':>10} {'x BCE':>7}"
    print(header + ("" if args.no_memory else f" {'peak MB':>8}"))
    for name, t in median.items():
        row = f"{name:<16} {t * 1e3:>10.1f} {t / base:>7.2f}"
        if not args.no_memory:
            row += f" {peak_memory_mb(name, args):>8.0f}"
        print(row)


if __name__ == "__main__":
    main()
