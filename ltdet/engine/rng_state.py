"""The global random-number state of every process, checkpointed for an exact ``--resume``.

Training draws from torch's global RNG (RPN / ROI sampling ``subsample_labels``,
dropout), and code may draw from numpy's and Python's. :class:`RNGStateHook`
captures all of them on every process at each checkpoint iteration (a
collective ``all_gather``), the main process saves them with the checkpoint
(detectron2 saves every hook's ``state_dict``), and on resume each process
restores its own.

Evaluation must not move the training RNG, or a run with ``TEST.EVAL_PERIOD``
would train differently from one without: :func:`preserved_rng_state` wraps it.

The states are stored as tensors and plain Python values, which ``torch.load``
accepts with ``weights_only=True``.
"""
import contextlib
import logging
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import detectron2.utils.comm as comm
from detectron2.engine.train_loop import HookBase

__all__ = ["RNGStateHook", "capture_rng_state", "preserved_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU and current CUDA device), numpy and Python RNG states of this process."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss_next),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the RNGs to a ``capture_rng_state`` result."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


@contextlib.contextmanager
def preserved_rng_state():
    """Run a block (e.g. an evaluation) without changing this process's RNG states."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class RNGStateHook(HookBase):
    """Capture every process's RNG states at checkpoint iterations; restore them on resume.

    Place it on every process, after the hooks that draw random numbers in
    ``after_step`` and before detectron2's ``PeriodicCheckpointer`` (which runs
    on the main process only and saves ``trainer.state_dict()``, hooks included).

    Args:
        checkpoint_period (int): ``SOLVER.CHECKPOINT_PERIOD``.
        max_iter (int): ``SOLVER.MAX_ITER`` (the final checkpoint is at max_iter - 1).
    """

    def __init__(self, checkpoint_period: int, max_iter: int):
        self._period = int(checkpoint_period)
        self._max_iter = int(max_iter)
        self._captured: Optional[Dict[str, Any]] = None

    def _is_checkpoint_iteration(self, iteration: int) -> bool:
        # fvcore's PeriodicCheckpointer.step saves at these iterations
        return (self._period > 0 and (iteration + 1) % self._period == 0) or iteration >= self._max_iter - 1

    def after_step(self):
        it = self.trainer.iter
        if self._is_checkpoint_iteration(it):
            states: List[Dict[str, Any]] = comm.all_gather(capture_rng_state())
            self._captured = {"iteration": it, "world_size": len(states), "states": states}

    def state_dict(self) -> Dict[str, Any]:
        return dict(self._captured) if self._captured is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        world_size, rank = comm.get_world_size(), comm.get_rank()
        iteration = getattr(self.trainer, "iter", None)
        if state_dict["iteration"] != iteration:
            logger.warning(
                f"RNG states were captured at iteration {state_dict['iteration']}, the checkpoint is at "
                f"{iteration}: not restored, the resumed run will not repeat the original exactly"
            )
        elif state_dict["world_size"] != world_size:
            logger.warning(
                f"RNG states of {state_dict['world_size']} processes, now {world_size}: not restored, "
                "the resumed run will not repeat the original exactly"
            )
        else:
            restore_rng_state(state_dict["states"][rank])
            logger.info(f"Restored the RNG states of iteration {iteration}")
