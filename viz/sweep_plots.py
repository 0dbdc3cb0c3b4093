"""Plots of a sweep: one point or one curve per group of runs (a group = one grid point, its
seeds the repeats). Each function returns a matplotlib Figure, or a string that says why there
is nothing to draw (the page shows that note instead of an empty plot).

The numbers come from ``Group`` records (viz/sweep.py builds them from a sweep directory); the
intervals are ``brainnet.stats.t_interval`` (mean ± half-width of the 95 % t-interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainnet.stats import t_interval
from brainnet.viz.plots import Plot, _fig  # also selects the Agg backend

Interval = tuple[float | None, float | None, int]  # mean, half-width (None if n < 2), n
Series = tuple[np.ndarray, np.ndarray]  # steps, values


@dataclass
class Group:
    """One group of a sweep (or a lone run directory in a comparison): its runs' numbers."""

    name: str  # the group's name in its sweep
    source: str = ""  # the sweep (or run directory) it comes from; "" inside one sweep's report
    overrides: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    pending: int = 0
    stats: dict[str, Interval] = field(default_factory=dict)  # index column -> interval
    curves: dict[str, list[Series]] = field(default_factory=dict)  # metric -> one per seed
    front: bool = False  # on the Pareto front of (messages / step, the loss ``loss_key`` says)
    floor: float | None = None  # answer-token loss with one view, no communication (vocab.json)
    ceiling: float | None = None  # the best answer-token loss (all views bound: 0)

    @property
    def label(self) -> str:
        return f"{self.source}: {self.name}" if self.source else self.name


ANSWER_LOSS = "final_val_answer_loss"


def loss_key(groups: list[Group]) -> str:
    """The loss the Pareto front and plot use: the final validation answer-token loss when
    the groups have it (binding tasks: the answer is what needs communication), else the
    final validation loss. Every group with a final validation loss must have an answer loss
    too: groups of a corpus without answers (say, in a comparison with an older sweep) are
    compared on the loss they all have."""
    answer = [g for g in groups if _has(g, ANSWER_LOSS)]
    if answer and all(_has(g, ANSWER_LOSS) for g in groups if _has(g, "final_val_loss")):
        return ANSWER_LOSS
    return "final_val_loss"


def interval(values: list[float]) -> Interval:
    """Mean, half-width of the 95 % t-interval and n of the finite values (half-width None
    when n < 2: one seed gives no interval)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    mean, hw, n = t_interval(vals)
    if n < 2 or hw is None or not math.isfinite(hw):
        hw = None
    return float(mean), hw, int(n)


def band(series: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per step over the seeds' series: steps, mean, half-width (nan where fewer than two
    seeds logged that step), n."""
    by_step: dict[int, list[float]] = {}
    for steps, values in series:
        for s, v in zip(steps.tolist(), values.tolist(), strict=True):
            by_step.setdefault(int(s), []).append(v)
    steps = np.array(sorted(by_step))
    stats = [interval(by_step[s]) for s in steps.tolist()]
    mean = np.array([m for m, _, _ in stats], dtype=float)
    hw = np.array([np.nan if h is None else h for _, h, _ in stats], dtype=float)
    return steps, mean, hw, np.array([n for _, _, n in stats])


def _xscale(ax: Any, xs: list[float]) -> str:
    """Messages per step span decades and may be 0 (independent modules): symlog then."""
    pos = [x for x in xs if x > 0]
    if len(pos) < len(xs):
        low = 10 ** math.floor(math.log10(min(pos, default=1.0)))
        ax.set_xscale("symlog", linthresh=max(1.0, low))
        if pos:  # up to the next decade, so that the axis shows at least 0 and two decades
            ax.set_xlim(-0.05 * max(1.0, low), 10 ** math.ceil(math.log10(max(pos)) + 1e-9))
        return "symlog"
    if pos and max(pos) / min(pos) > 30:
        ax.set_xscale("log")
        return "log"
    return "linear"


def pareto(groups: list[Group], by_source: bool = False, key: str | None = None) -> Plot:
    """Final validation loss (``key``; default ``loss_key``: the answer-token loss where the
    groups have it) against messages per step, one point per group with its 95 % CI in both
    directions (where n > 1); the Pareto front (fewer messages and lower loss: no other group
    is better in both) marked and joined. With the answer loss, the no-communication floor and
    the ceiling (``Group.floor`` / ``ceiling``, from the runs' vocab.json) are labelled
    horizontal lines. ``by_source``: colour by sweep."""
    key = key or loss_key(groups)
    answer = key == ANSWER_LOSS
    pts = [g for g in groups if _has(g, key) and _has(g, "messages_per_step")]
    if not pts:
        what = "answer-token loss" if answer else "validation loss"
        return f"no group has a finished run with a final {what} and a message count"
    fig, (ax,) = _fig(1, 8.5, 5.2)
    sources = list(dict.fromkeys(g.source for g in pts))
    colours = {s: f"C{i % 10}" for i, s in enumerate(sources)}
    labelled: set[str | None] = set()
    for s in sources if by_source else [None]:
        mine = [g for g in pts if by_source is False or g.source == s]
        for front in (False, True):
            sel = [g for g in mine if g.front == front]
            if not sel:
                continue
            x = [g.stats["messages_per_step"][0] for g in sel]
            y = [g.stats[key][0] for g in sel]
            xerr = [g.stats["messages_per_step"][1] or 0.0 for g in sel]
            yerr = [g.stats[key][1] or 0.0 for g in sel]
            colour = colours[s] if by_source else ("#c44e52" if front else "#4c72b0")
            label = "Pareto front" if front else "dominated"
            if by_source:  # one legend entry per sweep
                label = None if s in labelled else s
                labelled.add(s)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="*" if front else "o",
                        ms=13 if front else 6, color=colour, ecolor=colour, elinewidth=0.9,
                        capsize=3, mec="k" if front else colour, label=label)  # fmt: skip
    front = sorted((g for g in pts if g.front), key=lambda g: g.stats["messages_per_step"][0])
    if len(front) > 1:
        ax.step([g.stats["messages_per_step"][0] for g in front],
                [g.stats[key][0] for g in front],
                where="post", color="#c44e52", ls="--", lw=1, zorder=0)  # fmt: skip
    if answer:
        _bounds(ax, pts, by_source)
    xs = [g.stats["messages_per_step"][0] for g in pts]
    scale = _xscale(ax, xs)
    ax.autoscale_view()
    placed: list[tuple[float, float]] = []  # labels' anchors in pixels: stack the ones that meet
    for g in pts:
        xy = (g.stats["messages_per_step"][0], g.stats[key][0])
        px, py = ax.transData.transform(xy)
        dy = 4.0
        while any(abs(px - qx) < 60 and abs(py + dy * 1.25 - qy) < 9 for qx, qy in placed):
            dy += 8.0
        placed.append((px, py + dy * 1.25))
        ax.annotate(g.label, xy, xytext=(6, dy), textcoords="offset points", fontsize=7)
    what = "final validation answer-token loss" if answer else "final validation loss"
    title = f"{what} against messages per step (bars: 95 % CI over seeds)"
    if max(xs) == 0:
        title = f"{what} (no group sends messages: every x is 0)"
    elif scale == "symlog":
        title += "\nx axis symlog: some groups send no messages"
    if by_source and any(g.front for g in pts):
        ax.plot([], [], "*", ms=11, color="w", mec="k", label="Pareto front (all sweeps)")
    ylabel = (
        "final val answer CE (nats / answer token)" if answer else "final val CE (nats / token)"
    )
    ax.set(title=title, xlabel="messages / step", ylabel=ylabel)
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _bounds(ax: Any, pts: list[Group], by_source: bool) -> None:
    """The answer loss's floor (one view, no communication) and ceiling as labelled horizontal
    lines: one per distinct value (named by its sweep when the sweeps' floors differ)."""
    for attr, style, colour, what in (
        ("floor", "--", "#555555", "floor: one view, no communication"),
        ("ceiling", ":", "#2a9d4a", "ceiling: every view bound"),
    ):
        values: dict[float, list[str]] = {}
        for g in pts:
            v = getattr(g, attr)
            if v is not None and math.isfinite(float(v)):
                values.setdefault(float(v), [])
                if g.source not in values[float(v)]:
                    values[float(v)].append(g.source)
        for v, srcs in values.items():
            whose = f", {', '.join(srcs)}" if by_source and len(values) > 1 else ""
            ax.axhline(v, ls=style, color=colour, lw=1.2, zorder=0,
                       label=f"{what} ({v:.3f}{whose})", gid=attr)  # fmt: skip


def loss_curves(groups: list[Group]) -> Plot:
    """Validation (and train) loss against step: the mean over each group's seeds, with the
    95 % t-interval as a band where at least two seeds logged the step."""
    keys = [k for k in ("val_loss", "train_loss") if any(g.curves.get(k) for g in groups)]
    if not keys:
        return "no loss curves: no group has a finished run with logged losses"
    fig, axes = _fig(len(keys), 6 * len(keys), 4.4)
    for ax, key in zip(axes, keys, strict=True):
        for i, g in enumerate(groups):
            if not g.curves.get(key):
                continue
            steps, mean, hw, n = band(g.curves[key])
            colour = f"C{i % 10}"
            ax.plot(steps, mean, "o-" if key == "val_loss" else "-", ms=3, lw=1.2,
                    color=colour, label=f"{g.label} (n={int(n.max())})")  # fmt: skip
            ok = ~np.isnan(hw)
            if ok.any():
                ax.fill_between(steps[ok], (mean - hw)[ok], (mean + hw)[ok], color=colour,
                                alpha=0.2, lw=0)  # fmt: skip
        what = "validation" if key == "val_loss" else "train"
        ax.set(title=f"{what} loss: mean over seeds, band 95 % CI", xlabel="step",
               ylabel="CE (nats / token)")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _has(g: Group, key: str) -> bool:
    return g.stats.get(key, (None, None, 0))[0] is not None
