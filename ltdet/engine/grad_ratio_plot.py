"""Gradient-ratio figures shared by ``GradientRatioHook`` and ``tools/plot_grad_ratio.py``.

Top panel: accumulated positive-to-negative gradient ratio per class, classes
sorted by training frequency (EQLv2 Fig. 1/2). Bottom panel: accumulated
positive and negative |dL/dz| per class on a log scale (EQL Fig. 1). Both
panels shade the rare / common / frequent groups.

Shape shorthand: C foreground classes; every per-class array is in class index
order, ``GradRatioFigure`` applies the display order itself.

Only matplotlib's object-oriented API with the Agg canvas is used (never
``pyplot``), so importing this module does not touch the global backend.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .grad_stats_file import load_grad_stats

__all__ = [
    "GROUP_NAMES",
    "class_order",
    "gaussian_smooth",
    "grad_ratio",
    "GradRatioFigure",
    "plot_runs",
]

GROUP_NAMES = ("rare", "common", "frequent")
_GROUP_COLORS = ("#d62728", "#ff7f0e", "#2ca02c")
_RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def grad_ratio(pos: Sequence[float], neg: Sequence[float]) -> np.ndarray:
    """Per-class pos/neg ratio, NaN for classes that received no negative gradient.

    Args:
        pos, neg: float[C], accumulated positive / negative |dL/dz|.
    Returns:
        float64[C].
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    ratio = np.full_like(pos, np.nan)
    seen = neg > 0
    ratio[seen] = pos[seen] / neg[seen]
    return ratio


def class_order(
    image_count: Optional[Sequence[int]],
    instance_count: Optional[Sequence[int]],
    by: str = "image",
    num_classes: int = 0,
) -> np.ndarray:
    """Class indices sorted by decreasing training frequency (head first, as EQLv2 Fig. 1).

    Args:
        image_count, instance_count: int[C] training counts (either may be None).
        by: "image" or "instance": primary key; the other count breaks ties,
            then the class index.
        num_classes: C, used only when no counts are known.
    Returns:
        int64[C] permutation; identity when no counts are known.
    """
    if by not in ("image", "instance"):
        raise ValueError(f"sort key must be 'image' or 'instance', got {by!r}")
    keys = [image_count, instance_count] if by == "image" else [instance_count, image_count]
    keys = [np.asarray(k, dtype=np.float64) for k in keys if k is not None]
    if not keys:
        return np.arange(num_classes)
    n = len(keys[0])
    # np.lexsort sorts by the last key first; negate for descending counts.
    return np.lexsort([np.arange(n)] + [-k for k in reversed(keys)])


def gaussian_smooth(values: Sequence[float], sigma: float) -> np.ndarray:
    """1-D Gaussian smoothing over neighbouring classes (EQLv2 Fig. 1 uses σ = 5).

    Symmetric padding at the ends (as scipy's ``gaussian_filter1d``), kernel
    truncated at 4σ; NaN entries are ignored (normalised convolution).

    Args:
        values: float[C].
        sigma: standard deviation in classes; <= 0 returns a copy.
    Returns:
        float64[C].
    """
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or values.size == 0:
        return values.copy()
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    valid = np.isfinite(values)
    pad = min(radius, values.size)
    padded_v = np.pad(np.where(valid, values, 0.0), pad, mode="symmetric")
    padded_w = np.pad(valid.astype(np.float64), pad, mode="symmetric")
    if pad < radius:  # fewer classes than the kernel radius: zero-extend beyond
        extra = radius - pad
        padded_v = np.pad(padded_v, extra)
        padded_w = np.pad(padded_w, extra)
    num = np.convolve(padded_v, kernel, mode="valid")
    den = np.convolve(padded_w, kernel, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _runs(groups: np.ndarray, value: int) -> List[tuple]:
    """(start, width) of the maximal runs of ``groups == value``."""
    mask = np.concatenate([[False], groups == value, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(mask))
    return [(float(s) - 0.5, float(e - s)) for s, e in zip(edges[::2], edges[1::2])]


class GradRatioFigure:
    """Ratio panel over a pos/neg panel; lines can be added or updated in place.

    The figure is built once and ``to_array`` blits, so a periodic re-render
    (the training hook) costs a few milliseconds.

    Args:
        order: int[C], display position -> class index (see ``class_order``).
        groups: int[C] in class index order, 0 rare / 1 common / 2 frequent,
            -1 unknown; None for no bands.
        group_names: names of the groups.
        sort_label: what the classes are sorted by, for the x-axis label.
        figsize, dpi: matplotlib figure size (inches) and resolution.
    """

    def __init__(
        self,
        order: Sequence[int],
        groups: Optional[Sequence[int]] = None,
        *,
        group_names: Sequence[str] = GROUP_NAMES,
        sort_label: str = "training image count",
        figsize=(6.4, 4.4),
        dpi: int = 80,
    ):
        self.order = np.asarray(order, dtype=np.int64)
        self.num_classes = len(self.order)
        self.fig = Figure(figsize=figsize, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax_ratio, self.ax_grad = self.fig.subplots(2, 1, sharex=True)
        self.fig.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.11, hspace=0.1)
        self._x = np.arange(self.num_classes)
        self._lines: Dict[str, tuple] = {}
        self._group_handles = []
        self._title = self.fig.suptitle("", fontsize="small")
        self._background = None
        self._drawn_limits: Optional[tuple] = None
        if groups is not None:
            self._draw_bands(np.asarray(groups, dtype=np.int64)[self.order], group_names)
        self.ax_ratio.set_ylabel("pos / neg ratio")
        self.ax_grad.set_ylabel("accumulated |dL/dz|")
        self.ax_grad.set_yscale("log")
        self.ax_grad.set_xlabel(f"class index sorted by {sort_label} (head -> tail)")
        self.ax_grad.set_xlim(-0.5, max(self.num_classes - 0.5, 0.5))
        for ax in (self.ax_ratio, self.ax_grad):
            ax.grid(True, axis="y", alpha=0.3, linewidth=0.5)
            ax.tick_params(labelsize="small")

    def _draw_bands(self, groups_sorted: np.ndarray, group_names: Sequence[str]):
        for g, name in enumerate(group_names):
            spans = _runs(groups_sorted, g)
            if not spans:
                continue
            color = _GROUP_COLORS[g % len(_GROUP_COLORS)]
            for ax in (self.ax_ratio, self.ax_grad):
                ax.broken_barh(
                    spans, (0, 1), transform=ax.get_xaxis_transform(), facecolors=color, alpha=0.1, linewidth=0
                )
            count = int((groups_sorted == g).sum())
            self._group_handles.append(Patch(facecolor=color, alpha=0.25, label=f"{name} ({count})"))

    def plot(self, label: str, pos, neg, *, sigma: float = 0.0, color: Optional[str] = None):
        """Add the run ``label`` or update its lines.

        Args:
            label: legend name of the run.
            pos, neg: float[C] accumulated positive / negative |dL/dz|, class order.
            sigma: Gaussian smoothing over neighbouring (sorted) classes, 0 = raw.
            color: line colour (default: next colour of the cycle).
        """
        pos = np.asarray(pos, dtype=np.float64)[self.order]
        neg = np.asarray(neg, dtype=np.float64)[self.order]
        ratio = gaussian_smooth(grad_ratio(pos, neg), sigma)
        pos, neg = gaussian_smooth(pos, sigma), gaussian_smooth(neg, sigma)
        # log panel: non-positive values are gaps, not -inf
        pos = np.where(pos > 0, pos, np.nan)
        neg = np.where(neg > 0, neg, np.nan)
        if label in self._lines:
            for line, y in zip(self._lines[label], (ratio, pos, neg)):
                line.set_ydata(y)
        else:
            color = color or _RUN_COLORS[len(self._lines) % len(_RUN_COLORS)]
            width = 1.0 if self.num_classes > 200 else 1.4
            (r_line,) = self.ax_ratio.plot(self._x, ratio, color=color, lw=width, label=label)
            (p_line,) = self.ax_grad.plot(self._x, pos, color=color, lw=width)
            (n_line,) = self.ax_grad.plot(self._x, neg, color=color, lw=width, ls="--")
            self._lines[label] = (r_line, p_line, n_line)

    def _limits(self) -> tuple:
        """Rounded y-limits (ratio top, log-panel decades).

        Tight on the first render. Later renders keep the limits drawn last
        while the data stay within them and fill a reasonable part of them,
        and move them with headroom otherwise, so periodic re-renders rarely
        need a full redraw.
        """
        lines = list(self._lines.values())
        ratios = np.concatenate([np.asarray(ls[0].get_ydata(), dtype=np.float64) for ls in lines] or [[]])
        ratios = ratios[np.isfinite(ratios)]
        r_max = float(ratios.max()) if ratios.size and ratios.max() > 0 else 0.0
        grads = np.concatenate([np.asarray(l.get_ydata(), dtype=np.float64) for ls in lines for l in ls[1:]] or [[]])
        grads = grads[np.isfinite(grads) & (grads > 0)]
        if grads.size:
            low, high = 10.0 ** np.floor(np.log10(grads.min())), 10.0 ** np.ceil(np.log10(grads.max()))
        else:
            low, high = 1.0, 10.0
        if self._drawn_limits is None:
            top = _nice_ceil(1.05 * r_max) if r_max > 0 else 1.0
            return top, low, max(high, 10.0 * low)
        old_top, old_low, old_high = self._drawn_limits
        need_top = 1.05 * r_max
        top = old_top if old_top / 3.0 < need_top <= old_top else (_nice_ceil(1.5 * r_max) if r_max > 0 else 1.0)
        low = old_low if old_low <= low < old_low * 1e3 else low / 10.0
        high = old_high if old_high / 1e3 < high <= old_high else high * 10.0
        return top, low, max(high, 10.0 * low)

    def _apply_limits(self, limits: tuple):
        top, low, high = limits
        self.ax_ratio.set_ylim(0.0, top)
        self.ax_grad.set_ylim(low, high)

    def set_title(self, title: str, fontsize: Optional[str] = None):
        """Figure title (cheap to change between renders)."""
        self._title.set_text(title)
        if fontsize is not None:
            self._title.set_fontsize(fontsize)

    def finish(self, title: Optional[str] = None, run_legend: bool = True):
        """Set the title and legends (call after the last ``plot``)."""
        if title is not None:
            self.set_title(title)
        if run_legend and self._lines:
            self.ax_ratio.legend(loc="upper right", fontsize="small", framealpha=0.8)
        style = [
            Line2D([], [], color="0.3", lw=1.2, label="positive"),
            Line2D([], [], color="0.3", lw=1.2, ls="--", label="negative"),
        ]
        self.ax_grad.legend(
            handles=style + self._group_handles, loc="lower left", fontsize="x-small", ncol=5, framealpha=0.8
        )

    def to_array(self) -> np.ndarray:
        """Render to ``uint8[3, H, W]`` RGB (the layout ``EventStorage.put_image`` expects).

        Blitting: the axes, ticks and bands are drawn once and cached; later
        calls redraw only the curves, legends and title, unless the rounded
        y-limits changed.
        """
        legends = [ax.get_legend() for ax in (self.ax_ratio, self.ax_grad) if ax.get_legend() is not None]
        dynamic = [line for lines in self._lines.values() for line in lines] + legends + [self._title]
        limits = self._limits()
        if self._background is None or limits != self._drawn_limits:
            self._apply_limits(limits)
            for artist in dynamic:
                artist.set_animated(True)
            self.canvas.draw()
            self._background = self.canvas.copy_from_bbox(self.fig.bbox)
            self._drawn_limits = limits
        else:
            self.canvas.restore_region(self._background)
        for artist in dynamic:
            artist.set_animated(True)
            self.fig.draw_artist(artist)
        rgba = np.asarray(self.canvas.buffer_rgba())
        return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))

    def save(self, path: str):
        """Write the figure (format from the extension, e.g. PNG)."""
        self._apply_limits(self._limits())
        self.fig.savefig(path)


def _nice_ceil(value: float) -> float:
    """Smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (x 10^k) that is >= ``value`` > 0."""
    exponent = np.floor(np.log10(value))
    for step in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if step * 10.0 ** exponent >= value:
            return float(step * 10.0 ** exponent)
    return float(10.0 ** (exponent + 1))


def plot_runs(
    paths: Sequence[str],
    out: str,
    *,
    sort: str = "image",
    sigma: float = 5.0,
    labels: Optional[Sequence[str]] = None,
    stats_name: Optional[str] = None,
    figsize=(11.0, 7.0),
    dpi: int = 120,
) -> str:
    """Overlay the statistics of several runs into one image (EQLv2 Fig. 1 + EQL Fig. 1).

    Classes are sorted by the first run's training counts; every run must have
    the same classes.

    Args:
        paths: run directories or ``grad_stats.json`` files.
        out: output image path.
        sort: "image" or "instance" count to sort classes by.
        sigma: Gaussian smoothing in classes (0 = raw curves).
        labels: legend names, one per run (default: the run directory names).
        stats_name: which GradientStatistics module to plot when a run has
            several (default: the first one in the file).
    Returns:
        ``out``.
    """
    runs = [load_grad_stats(p) for p in paths]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels given for {len(runs)} runs")
    if labels is None:
        labels = [os.path.basename(os.path.dirname(os.path.abspath(r["path"]))) for r in runs]
    first = runs[0]
    num_classes = len(first["class_names"])
    for run in runs[1:]:
        if run["class_names"] != first["class_names"]:
            raise ValueError(f"{run['path']} has other classes than {first['path']}")
    order = class_order(first.get("image_count"), first.get("instance_count"), by=sort, num_classes=num_classes)
    figure = GradRatioFigure(
        order,
        first.get("groups"),
        group_names=first.get("group_names", GROUP_NAMES),
        sort_label=f"training {sort} count",
        figsize=figsize,
        dpi=dpi,
    )
    for label, run in zip(labels, runs):
        name = stats_name or next(iter(run["stats"]))
        if name not in run["stats"]:
            raise KeyError(f"{run['path']} has no statistics {name!r}; it has {sorted(run['stats'])}")
        entry = run["stats"][name]
        figure.plot(f"{label} ({entry['loss']})", entry["pos"], entry["neg"], sigma=sigma)
    smooth = f", Gaussian smoothing σ={sigma:g} classes" if sigma > 0 else ""
    figure.set_title(f"Accumulated positive/negative gradients, {num_classes} classes{smooth}", fontsize="medium")
    figure.finish()
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    figure.save(out)
    return out
