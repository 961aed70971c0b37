"""Training hook that publishes the per-class gradient statistics of the losses.

Every ``GradientStatistics`` module of the model (owned by a classification
loss, see ``ltdet/losses/grad_stats.py``) is synchronised after every step, so
all ranks hold identical totals and a checkpoint written in the same step
contains them exactly. Periodically the main process puts group summaries, a
histogram and an image of the per-class curves into detectron2's EventStorage
(TensorBoard shows them). ``to_dict`` is the payload of ``grad_stats.json``
(``grad_stats_file.py``), which the trainer writes after each checkpoint.

Publishing is best effort: non-finite per-class values (a diverging loss) are
left out of the group means and the histogram with one warning, and any other
error while publishing is logged once; training goes on either way.

Shape shorthand: C foreground classes.
"""
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

import detectron2.utils.comm as comm
from detectron2.engine.train_loop import HookBase

from ltdet.data.category_stats import CategoryStatsError, train_category_stats
from ltdet.losses.grad_stats import GradientStatistics

from .grad_ratio_plot import GROUP_NAMES, GradRatioFigure, class_order, grad_ratio
from .grad_stats_file import GRAD_STATS_FORMAT

__all__ = ["GradientRatioHook", "build_grad_ratio_hook", "find_grad_stats"]

logger = logging.getLogger(__name__)

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CATEGORY_FIELDS = ("class_names", "image_count", "instance_count", "groups", "num_images", "group_names")


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def find_grad_stats(model: nn.Module) -> List[Tuple[str, GradientStatistics]]:
    """Every ``GradientStatistics`` of ``model`` (DDP unwrapped), in registration order.

    The order is the same on every rank, which the collective ``synchronize``
    calls rely on.
    """
    return [(n, m) for n, m in _unwrap(model).named_modules() if isinstance(m, GradientStatistics)]


def _tags(names: List[str]) -> List[str]:
    """Short event-name tags: "" for a single module, else its owner's path.

    Path components containing "loss" are dropped: detectron2's printers treat
    every scalar with "loss" in its name as a loss.
    """
    if len(names) == 1:
        return [""]
    tags = [".".join(p for p in n.split(".")[:-1] if "loss" not in p.lower()) for n in names]
    if "" in tags or len(set(tags)) != len(tags):
        tags = [f"stats{i}" for i in range(len(names))]
    return tags


def _category_dict(info: Any) -> Dict[str, Any]:
    """Plain lists from ``get_category_stats``' result (a mapping or an object)."""
    out = {}
    for key in _CATEGORY_FIELDS:
        value = info.get(key) if isinstance(info, dict) else getattr(info, key, None)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    out["group_names"] = list(out["group_names"] or GROUP_NAMES)
    return out


class GradientRatioHook(HookBase):
    """Synchronises the loss statistics and publishes them (EQLv2 Fig. 1-2, EQL Fig. 1).

    Run it on every rank, before the checkpointer and the writers. Event names
    (``/TAG`` only when the model has several statistics modules):
    ``grad_ratio[/TAG]/{rare,common,frequent,all}`` (mean of the per-class
    ratios), ``grad_pos[/TAG]/...`` and ``grad_neg[/TAG]/...`` (mean accumulated
    |dL/dz|), histogram ``grad_ratio_hist[/TAG]``, image ``grad_ratio_curve[/TAG]``.

    Args:
        model: the trained model (possibly DDP-wrapped).
        period: iterations between two EventStorage writes (also at the last
            iteration); <= 0 for the last iteration only.
        category_stats: training-set class metadata (``class_names``,
            ``image_count``, ``instance_count``, ``groups`` 0 rare / 1 common /
            2 frequent, ``num_images``), as a mapping, an object, or a
            zero-argument callable returning one (called once, lazily, on the
            main process; a ``CategoryStatsError`` it raises is logged). None:
            classes unsorted and no groups.
        reset_on_load: reset the statistics before training when the run
            starts at iteration 0 (a new run from ``MODEL.WEIGHTS``); a resumed
            run never resets.
        render_images: put the curve image (main process only).
        extra_info: extra JSON fields (e.g. dataset and loss config names).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        period: int = 20,
        category_stats: Union[None, Any, Callable[[], Any]] = None,
        reset_on_load: bool = False,
        render_images: bool = True,
        extra_info: Optional[Dict[str, Any]] = None,
    ):
        found = find_grad_stats(model)
        if not found:
            raise ValueError("the model has no GradientStatistics module (no loss collects statistics)")
        modules = dict(_unwrap(model).named_modules())
        names = [n for n, _ in found]
        self._entries = [
            (name, tag, type(modules[name.rpartition(".")[0]]).__name__, stats)
            for (name, stats), tag in zip(found, _tags(names))
        ]
        self._period = int(period)
        self._category_source = category_stats
        self._category: Optional[Dict[str, Any]] = None
        self._category_loaded = False
        self._classes_cache: Dict[int, Dict[str, Any]] = {}
        self._reset_on_load = bool(reset_on_load)
        self._render_images = bool(render_images)
        self._extra_info = dict(extra_info or {})
        self._figures: Dict[str, GradRatioFigure] = {}
        self._warned = set()

    # ------------------------------------------------------------ training
    def synchronize(self):
        """All-reduce pending statistics into the totals (collective, every rank)."""
        for _, _, _, stats in self._entries:
            stats.synchronize()

    def reset(self):
        """Forget the accumulated statistics of every module."""
        for _, _, _, stats in self._entries:
            stats.reset()

    def before_train(self):
        if self._reset_on_load and self.trainer.start_iter == 0:
            logger.info("New run from iteration 0: resetting the gradient statistics (RESET_ON_LOAD)")
            self.reset()

    def after_step(self):
        self.synchronize()
        if not comm.is_main_process():
            return
        it = self.trainer.iter
        last = it + 1 >= self.trainer.max_iter
        if last or (self._period > 0 and (it + 1) % self._period == 0):
            try:
                self.put_events(self.trainer.storage, it)
            except Exception as e:  # publishing statistics must never stop a training
                self._warn_once("publish", f"Gradient statistics not published at iteration {it + 1} "
                                f"({type(e).__name__}: {e}); training continues", exc_info=True)

    def _warn_once(self, key: str, message: str, exc_info: bool = False):
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, exc_info=exc_info)

    # ------------------------------------------------------------ metadata
    def _category_info(self) -> Optional[Dict[str, Any]]:
        if not self._category_loaded:
            self._category_loaded = True
            source = self._category_source
            try:
                info = source() if callable(source) else source
            except CategoryStatsError as e:  # metadata is a nicety: never stop training for it
                logger.warning("No class metadata for the gradient statistics: %s", e)
                info = None
            self._category = _category_dict(info) if info is not None else None
        return self._category

    def _classes_for(self, num_classes: int) -> Dict[str, Any]:
        """Class metadata for a module with ``num_classes`` classes (placeholders if unknown)."""
        if num_classes in self._classes_cache:
            return self._classes_cache[num_classes]
        info = self._category_info()
        if info is not None and info["class_names"] is not None and len(info["class_names"]) != num_classes:
            logger.warning(
                "Class metadata has %d classes, the statistics %d: ignoring it", len(info["class_names"]), num_classes
            )
            info = None
        if info is None:
            info = {k: None for k in _CATEGORY_FIELDS}
            info["group_names"] = list(GROUP_NAMES)
        if info.get("groups") is None:
            info = dict(info, groups=[-1] * num_classes)
        if info.get("class_names") is None:
            info = dict(info, class_names=[str(i) for i in range(num_classes)])
        self._classes_cache[num_classes] = info
        return info

    # ------------------------------------------------------------ outputs
    @staticmethod
    def _numpy(stats: GradientStatistics) -> Tuple[np.ndarray, np.ndarray]:
        return stats.pos_grad.detach().cpu().numpy(), stats.neg_grad.detach().cpu().numpy()

    def put_events(self, storage, iteration: int):
        """Put group scalars, the ratio histogram and the curve image into ``storage``."""
        for name, tag, loss_name, stats in self._entries:
            info = self._classes_for(stats.num_classes)
            pos, neg = self._numpy(stats)
            ratio = grad_ratio(pos, neg)
            finite = np.isfinite(pos) & np.isfinite(neg)
            # TensorBoard stores float32: a ratio beyond its range would become inf there
            seen = finite & np.isfinite(ratio) & (np.abs(ratio) <= _FLOAT32_MAX)
            bad = ~finite | ((neg > 0) & ~seen)
            if bad.any():
                self._warn_once(
                    f"nonfinite:{name}",
                    f"{name}: {int(bad.sum())} classes with non-finite (or float32-overflowing) gradient "
                    f"statistics at iteration {iteration + 1} (a diverging loss?); they are left out "
                    "of the published values",
                )
                pos, neg = np.where(finite, pos, np.nan), np.where(finite, neg, np.nan)
            sub = f"/{tag}" if tag else ""
            groups = np.asarray(info["groups"])
            members = [(g, groups == i) for i, g in enumerate(info["group_names"])]
            for group, mask in members + [("all", np.ones_like(seen))]:
                if not (mask & seen).any():
                    continue
                storage.put_scalar(f"grad_ratio{sub}/{group}", ratio[mask & seen].mean(), smoothing_hint=False)
                storage.put_scalar(f"grad_pos{sub}/{group}", np.nanmean(pos[mask]), smoothing_hint=False)
                storage.put_scalar(f"grad_neg{sub}/{group}", np.nanmean(neg[mask]), smoothing_hint=False)
            if seen.any():
                hist = torch.from_numpy(ratio[seen]).float()
                storage.put_histogram(f"grad_ratio_hist{sub}", hist, bins=min(64, max(int(seen.sum()), 2)))
            if self._render_images:
                figure = self._figure(name, info)
                figure.plot("ratio", pos, neg)
                figure.set_title(f"{loss_name} ({name}), iteration {iteration + 1}")
                storage.put_image(f"grad_ratio_curve{sub}", figure.to_array())

    def _figure(self, name: str, info: Dict[str, Any]) -> GradRatioFigure:
        if name not in self._figures:
            order = class_order(
                info.get("image_count"), info.get("instance_count"), by="image", num_classes=len(info["groups"])
            )
            figure = GradRatioFigure(order, info["groups"], group_names=info["group_names"])
            figure.finish(run_legend=False)
            self._figures[name] = figure
        return self._figures[name]

    def to_dict(self, iteration: int) -> Dict[str, Any]:
        """The ``grad_stats.json`` payload: run info, class metadata and per-module statistics."""
        data: Dict[str, Any] = {"format": GRAD_STATS_FORMAT, "iteration": int(iteration)}
        data.update(self._extra_info)
        first = self._classes_for(self._entries[0][3].num_classes)
        data.update({k: first.get(k) for k in _CATEGORY_FIELDS})
        data["stats"] = {}
        for name, _, loss_name, stats in self._entries:
            pos, neg = self._numpy(stats)
            ratio = grad_ratio(pos, neg)
            data["stats"][name] = {
                "loss": loss_name,
                "num_classes": stats.num_classes,
                "pos": pos.tolist(),
                "neg": neg.tolist(),
                "ratio": [float(r) if np.isfinite(r) else None for r in ratio],
            }
        return data


def build_grad_ratio_hook(cfg, model: nn.Module) -> Optional[GradientRatioHook]:
    """The hook for a training config, or None when no loss of ``model`` collects statistics.

    Class metadata comes from ``train_category_stats(cfg)`` (the training set,
    LVIS-style groups of ``cfg.LTDET.DATA``).
    """
    if not find_grad_stats(model):
        return None
    dataset = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None
    return GradientRatioHook(
        model,
        period=cfg.LTDET.GRAD_STATS.PERIOD,
        category_stats=lambda: train_category_stats(cfg, purpose="the gradient-ratio plots"),
        reset_on_load=cfg.LTDET.GRAD_STATS.RESET_ON_LOAD,
        extra_info={"dataset": dataset, "cls_loss": cfg.LTDET.CLS_LOSS.NAME},
    )
