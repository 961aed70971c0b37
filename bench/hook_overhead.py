#!/usr/bin/env python
"""Iteration-time overhead of collecting gradient statistics (loss tap + GradientRatioHook).

Builds the same model twice in one process from a (synthetic) config: with
``LTDET.GRAD_STATS.ENABLED True`` (the loss collects, ``GradientRatioHook``
synchronises every step and puts scalars, a histogram and an image every
``LTDET.GRAD_STATS.PERIOD`` iterations) and with ``False`` (no statistics, no
hook). Both see the same weights and the same batches. Rounds alternate the
two so machine-load drift hits both; each round times ``--iters`` iterations
after ``--warmup`` untimed ones (plus one untimed last iteration, which
carries the once-per-run end-of-training outputs). Reported: median and mean
step time (run_step plus every after_step hook), the overhead in %, and the
hook's own time per iteration measured directly (less noisy than the
difference), split into synchronize / put_events / write_json.

Example:
    python bench/hook_overhead.py --config-file configs/synthetic/faster_rcnn_sigmoid.yaml --iters 40
"""
import ltdet  # noqa: F401  (first: registers ltdet's modules and the detectron2 ops stand-in)

import argparse
import statistics
import tempfile
import time

from detectron2.data import build_detection_train_loader
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from ltdet.engine import build_config, build_grad_ratio_hook

BUDGET_PERCENT = 3.0


class StepTimer(HookBase):
    """Registered last: times before_step -> after_step of every later hook (the full step).

    Records only iterations in ``[window[0], window[1])``.
    """

    def __init__(self):
        self.times = []
        self.window = (0, 0)
        self.record = False
        self._start = 0.0

    def before_step(self):
        self.record = self.window[0] <= self.trainer.iter < self.window[1]
        self._start = time.perf_counter()

    def after_step(self):
        if self.record:
            self.times.append(time.perf_counter() - self._start)


class _Timed:
    """Wraps ``obj.<name>``: call count and wall time while ``timer`` records."""

    def __init__(self, obj, name: str, timer: StepTimer):
        self.calls, self.total, self._call, self._timer = 0, 0.0, getattr(obj, name), timer
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._call(*args, **kwargs)
        if self._timer.record:
            self.calls += 1
            self.total += time.perf_counter() - start
        return out


def build_cfg(args, enabled: bool, output_dir: str):
    opts = [*args.opts, "LTDET.GRAD_STATS.ENABLED", str(enabled), "OUTPUT_DIR", output_dir]
    if args.period is not None:
        opts += ["LTDET.GRAD_STATS.PERIOD", str(args.period)]
    return build_config(args.config_file, opts)


class Variant:
    """One configuration (statistics on or off) with its own trainer."""

    def __init__(self, args, enabled: bool, output_dir: str):
        self.name = "on" if enabled else "off"
        cfg = build_cfg(args, enabled, output_dir)
        self.period = cfg.LTDET.GRAD_STATS.PERIOD
        seed_all_rng(cfg.SEED)
        model = build_model(cfg)
        model.train()
        seed_all_rng(cfg.SEED)
        loader = build_detection_train_loader(cfg)
        self.trainer = SimpleTrainer(model, loader, build_optimizer(cfg, model))
        self.hook = build_grad_ratio_hook(cfg, model)
        if enabled and self.hook is None:
            raise RuntimeError(f"{args.config_file}: the loss collects no statistics with ENABLED True")
        if not enabled and self.hook is not None:
            raise RuntimeError(f"{args.config_file}: the loss always collects statistics (EQLv2/EFL): no 'off'")
        self.timer = StepTimer()
        parts = ("after_step", "synchronize", "put_events", "write_json") if self.hook is not None else ()
        self.parts = {name: _Timed(self.hook, name, self.timer) for name in parts}
        self.trainer.register_hooks([self.hook, self.timer])
        self.iter = 0

    def run(self, warmup: int, iters: int):
        """Train ``warmup + iters + 1`` iterations, timing the middle ``iters``.

        The last iteration of a ``train`` call is untimed: it carries the
        end-of-training outputs, paid once per run, not per iteration.
        """
        self.timer.window = (self.iter + warmup, self.iter + warmup + iters)
        self.trainer.train(self.iter, self.iter + warmup + iters + 1)
        self.iter += warmup + iters + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/synthetic/faster_rcnn_sigmoid.yaml")
    parser.add_argument("--iters", type=int, default=40, help="timed iterations per variant and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations before each timed block")
    parser.add_argument("--rounds", type=int, default=2, help="alternating on/off rounds")
    parser.add_argument("--period", type=int, default=None, help="override LTDET.GRAD_STATS.PERIOD")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        variants = [Variant(args, False, tmp), Variant(args, True, tmp)]
        with EventStorage(0) as storage:  # one-time figure and metadata set-up, untimed
            variants[1].hook.put_events(storage, 0)
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                v.run(args.warmup, args.iters)
                print(f"round {r} {v.name}: median {statistics.median(v.timer.times[-args.iters:]):.4f} s/iter")

    off, on = variants
    med_off, med_on = statistics.median(off.timer.times), statistics.median(on.timer.times)
    mean_off, mean_on = statistics.fmean(off.timer.times), statistics.fmean(on.timer.times)
    hook_per_iter = on.parts["after_step"].total / len(on.timer.times)
    print(f"\nconfig {args.config_file}, {len(on.timer.times)} timed iterations per variant, PERIOD {on.period}")
    print(f"{'':>22}{'median s/iter':>15}{'mean s/iter':>13}")
    print(f"{'statistics off':>22}{med_off:>15.4f}{mean_off:>13.4f}")
    print(f"{'statistics on':>22}{med_on:>15.4f}{mean_on:>13.4f}")
    overhead = 100.0 * (mean_on - mean_off) / mean_off
    print(f"overhead (mean): {overhead:+.2f}%  (median: {100.0 * (med_on - med_off) / med_off:+.2f}%)")
    hook_percent = 100.0 * hook_per_iter / mean_on
    print(f"GradientRatioHook.after_step: {1000 * hook_per_iter:.2f} ms/iter = {hook_percent:.2f}% of an iteration")
    for name in ("synchronize", "put_events", "write_json"):
        part = on.parts[name]
        if part.calls:
            print(f"  {name}: {part.calls} calls, {1000 * part.total / part.calls:.2f} ms per call")
    verdict = "within" if max(overhead, hook_percent) <= BUDGET_PERCENT else "OVER"
    print(f"budget {BUDGET_PERCENT:.0f}%: {verdict} (timing noise on a shared machine can exceed it either way)")


if __name__ == "__main__":
    main()
