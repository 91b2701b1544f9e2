"""The figures of reslab-report: Figures 1/4/6 (error against iterations) and Figure 7 (layer
responses), as matplotlib Figures made without pyplot (Agg canvas: no display needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from reslab.runs import Run, Series

PER_TEN_THOUSAND_ABOVE = 20_000  # iterations; longer runs get the paper's x axis in 10^4
CURVE_KEYS = ("train/error", "val/error", "test/error")


def network_order(run: Run) -> tuple[bool, int, str]:
    """Plain nets first, then by depth, then by name."""
    return (run.residual, run.depth if run.depth is not None else 1 << 30, run.name)


def by_network(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by network name, the networks in :func:`network_order`."""
    return {name: list(g) for name, g in groupby(sorted(runs, key=network_order), lambda r: r.name)}


def _palette(n: int) -> list[Any]:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _colours(runs: Sequence[Run]) -> dict[str, Any]:
    """Name → colour: one per depth as in the paper, one per network if a depth has two (A/B/C)."""
    by_depth = len({r.name for r in runs}) == len({(r.residual, r.depth) for r in runs})
    ordered = sorted(runs, key=network_order)
    keys = list(dict.fromkeys(r.depth if by_depth else r.name for r in ordered))
    colour = dict(zip(keys, _palette(len(keys)), strict=True))
    return {r.name: colour[r.depth if by_depth else r.name] for r in ordered}


def _xy(series: Series, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Iterations (divided by ``scale``) and values, with inf as nan (a gap in the line)."""
    steps, values = np.array(series, dtype=float).T
    return steps / scale, np.where(np.isfinite(values), values, np.nan)


def curves_figure(runs: Sequence[Run], title: str) -> Figure:
    """Figures 1/4/6: error (%) against iterations, plain nets left and residual nets right on
    one y scale; dashed train/error, bold val/error, a dot for the final test/error; one
    colour per depth; the legend names each network, with its status unless finished."""
    if not runs:
        raise ValueError("no runs to draw")
    ordered = sorted(runs, key=network_order)  # plain nets first
    panels = [(residual, list(group)) for residual, group in groupby(ordered, lambda r: r.residual)]
    points = [(s, v) for r in runs for k in CURVE_KEYS for s, v in r.metrics.get(k, [])]
    last = max((s for s, _ in points), default=0)
    scale = 1e4 if last > PER_TEN_THOUSAND_ABOVE else 1.0
    colour = _colours(runs)
    fig = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (residual, members) in zip(axes, panels, strict=True):
        labels: list[str] = []
        for run in members:
            c = colour[run.name]
            for key, style, width in (("train/error", "--", 1), ("val/error", "-", 2)):
                if run.metrics.get(key):
                    ax.plot(*_xy(run.metrics[key], scale), style, color=c, lw=width)
            if run.metrics.get("test/error"):
                ax.plot(*_xy(run.metrics["test/error"][-1:], scale), "o", color=c, ms=6)
            label = run.name if run.status == "finished" else f"{run.name} ({run.status})"
            if label not in labels:  # repeated seeds: one legend entry
                labels.append(label)
                ax.plot([], [], "-", color=c, lw=2, label=label)
        ax.set_title("residual networks" if residual else "plain networks")
        ax.set_xlabel("iterations (×10⁴)" if scale > 1 else "iterations")
        ax.xaxis.set_major_locator(MaxNLocator(integer=scale == 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("error (%)")
    # the top: the largest error after the first 5% of iterations (near chance), +8%, at most 100
    top = [v for s, v in points if s >= 0.05 * last and np.isfinite(v)]
    axes[0].set_ylim(0, min(100.0, 1.08 * max(top)) if top and max(top) > 0 else 100.0)
    has_val = any(r.metrics.get("val/error") for r in runs)
    solid = "solid: validation error, dot: final test error" if has_val else "dot: test error"
    fig.suptitle(f"{title} — dashed: training error, {solid}")
    return fig


def responses_figure(runs: Sequence[Run], title: str) -> Figure:
    """Figure 7: each 3×3 layer's response std in network order (top) and sorted (bottom), one
    line per network (the mean over its runs), plain nets dashed."""
    if not (by_name := by_network(r for r in runs if r.responses)):
        raise ValueError("no run holds responses.csv: nothing to draw for Figure 7")
    fig = Figure(figsize=(7.2, 7.2), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    for (name, members), c in zip(by_name.items(), _palette(len(by_name)), strict=True):
        n = min(len(r.responses) for r in members)
        std = np.mean([[s for _, _, s in r.responses[:n]] for r in members], axis=0)
        index = np.arange(1, n + 1)
        label = name if len(members) == 1 else f"{name} (mean of {len(members)} runs)"
        if unfinished := sorted({r.status for r in members} - {"finished"}):
            label += f" ({', '.join(unfinished)})"
        style = "-" if members[0].residual else "--"
        top.plot(index, std, style, color=c, lw=1.3, label=label)
        bottom.plot(index, np.sort(std)[::-1], style, color=c, lw=1.3, label=label)
    for ax, order in ((top, "original"), (bottom, "sorted by magnitude")):
        ax.set_xlabel(f"layer index ({order})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    top.legend(fontsize="small")
    splits = "/".join(sorted({r.responses_split or "?" for m in by_name.values() for r in m}))
    fig.suptitle(f"{title}\nstd of each 3×3 layer's response ({splits} set); plain nets dashed")
    return fig
