"""detectron2's checkpointer with atomic writes, named load errors and a model identity check.

* Writes (the ``.pth`` file and ``last_checkpoint``) go through
  :class:`~ltdet.engine.atomic_io.AtomicPathManager`: a process killed while
  saving leaves the previous checkpoint and ``last_checkpoint`` untouched.
* Callbacks run after each save (the trainer writes ``grad_stats.json`` there,
  so that file never describes a later state than the last checkpoint).
* Loading a truncated or corrupt file raises :class:`CheckpointError` naming it.
* Every checkpoint stores ``ltdet``: the meta-architecture and classification
  loss of the model (:func:`model_identity`). Loading one whose identity differs
  raises :class:`CheckpointMismatchError` (both names in the message) when
  ``strict`` (evaluation, resume), unless ``LTDET.CHECKPOINT.ALLOW_MISMATCH``;
  a new training run from other weights (fine-tuning) only logs the difference.
"""
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.checkpoint import DetectionCheckpointer

from .atomic_io import AtomicPathManager

__all__ = ["CheckpointError", "CheckpointMismatchError", "LongTailCheckpointer", "model_identity"]

logger = logging.getLogger(__name__)

#: Fields of ``model_identity`` that must agree between a checkpoint and the model.
IDENTITY_FIELDS = ("meta_architecture", "cls_loss", "objectness")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (truncated, corrupt, not a checkpoint)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was trained with another meta-architecture or classification loss."""


def model_identity(cfg, model=None) -> Dict[str, Any]:
    """What a checkpoint must agree on with the config that loads it.

    Args:
        cfg: the config of the model.
        model: the built model (DDP-unwrapped or not); its classification loss
            gives the objectness setting actually in use.
    Returns:
        dict with ``meta_architecture``, ``cls_loss`` and ``objectness``.
    """
    objectness = None
    if model is not None:
        from ltdet.losses.base import ClassificationLoss

        module = getattr(model, "module", model)
        losses = [m for m in module.modules() if isinstance(m, ClassificationLoss)]
        objectness = bool(losses[0].objectness) if losses else None
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "cls_loss": cfg.LTDET.CLS_LOSS.NAME,
        "objectness": objectness,
    }


def _describe(identity: Dict[str, Any]) -> str:
    obj = identity.get("objectness")
    suffix = "" if obj is None else f", objectness {'on' if obj else 'off'}"
    return f"{identity.get('meta_architecture')} with loss {identity.get('cls_loss')!r}{suffix}"


class LongTailCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for ltdet models (see the module docstring).

    Args:
        model, save_dir, checkpointables: as ``DetectionCheckpointer``.
        identity (dict): ``model_identity(cfg, model)``, saved with every checkpoint.
        strict (bool): refuse checkpoints of another identity on every load
            (evaluation); resuming a run's own checkpoint is always strict.
        allow_mismatch (bool): ``LTDET.CHECKPOINT.ALLOW_MISMATCH``: log instead of refusing.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        identity: Optional[Dict[str, Any]] = None,
        strict: bool = False,
        allow_mismatch: bool = False,
        **checkpointables,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.path_manager = AtomicPathManager(self.path_manager)
        self.identity = dict(identity or {})
        self.strict = bool(strict)
        self.allow_mismatch = bool(allow_mismatch)
        self._save_callbacks: List[Callable[[str, Dict[str, Any]], None]] = []
        self._strict_now = self.strict

    def add_save_callback(self, fn: Callable[[str, Dict[str, Any]], None]) -> None:
        """Call ``fn(checkpoint_path, extra_data)`` after each successful save (main process)."""
        self._save_callbacks.append(fn)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        super().save(name, ltdet=self.identity, **kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        for fn in self._save_callbacks:
            fn(path, kwargs)

    def load(self, path: str, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # detectron2 after 0.6 keeps the URL being loaded and asserts it is unset on the
            # next load, but does not unset it when a load raises
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None

    def resume_or_load(self, path: str, *, resume: bool = True):
        self._strict_now = self.strict or (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._strict_now = self.strict

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:
            size = os.path.getsize(filename) if os.path.isfile(filename) else "missing"
            raise CheckpointError(
                f"cannot read checkpoint {filename} ({size} bytes): {type(e).__name__}: {e}. "
                "It is truncated or corrupt (e.g. the process was killed while an older ltdet "
                "wrote it): delete it, or point last_checkpoint / MODEL.WEIGHTS to another checkpoint."
            ) from e

    def _load_model(self, checkpoint: Dict[str, Any]):
        self._check_identity(checkpoint.get("ltdet"))
        return super()._load_model(checkpoint)

    def _check_identity(self, stored: Optional[Dict[str, Any]]) -> None:
        if not self.identity:
            return
        if stored is None:
            if self._strict_now:
                logger.warning(
                    "The checkpoint has no ltdet metadata (not written by ltdet): cannot check that it "
                    f"was trained as {_describe(self.identity)}"
                )
            return
        differ = [k for k in IDENTITY_FIELDS if stored.get(k) is not None and self.identity.get(k) is not None
                  and stored.get(k) != self.identity.get(k)]
        if not differ:
            return
        message = (
            f"the checkpoint was trained as {_describe(stored)}, but the config builds "
            f"{_describe(self.identity)} (differs in {', '.join(differ)})"
        )
        if self._strict_now and not self.allow_mismatch:
            raise CheckpointMismatchError(
                f"{message}. Its scores would be computed the wrong way; use the config it was trained "
                "with, or set LTDET.CHECKPOINT.ALLOW_MISMATCH True to load it anyway."
            )
        logger.warning(f"Loading weights across models: {message}")
