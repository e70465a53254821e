"""Figures of a sweep as PNG files in DIR/analysis/ (matplotlib's Agg canvas: no display needed).

  margin_curves.png      G_tau (G_fix for a fixed target) against optimizer step: small multiples, one
                         panel per grid point (the sweep's differing settings, `Sweep.settings`) or per
                         value of one setting the caller names (`panels`); in every panel a line per
                         trial, coloured by seed, styled by variant; the certificate boundary at 0
                         (docs/method.md, "Certificate": certified iff G_tau > 0) and, where the sweep
                         has them, the bounds [G_lower, G_upper] on the bare margin as a band; running
                         trials included (hollow markers)
  rescue_transition.png  the same panels: each rescue (the scheduler's and every fork) after its parent
                         on one continuous step axis, starting from the parent's report at the step it
                         was forked from; each panel's title says where its rescues start ("forked at
                         step N", or "from the noalign endpoint (step N)")
  baselines.png          raw against post-hoc G_tau and student MI per baseline method (paper Table 3)

One seed has one colour in every panel of every figure; a variant one line style; where `panels`
names one setting of a grid of several, the others are told apart by marker. Each figure is
titled with the sweep's name, each panel with its grid point (e.g. "lam=5, alpha_kl=1"); axes carry
their units (nats, optimizer steps). Legends sit outside the axes (they never cover a curve), name
each seed and each variant once, and everything stays inside the canvas (`texts_outside`).
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text

from analysis.collect import FORK_SETTING, NOT_APPLICABLE, Sweep, TrialRecord, trial_settings
from analysis.readers import Problem, rel
from analysis.tables import baseline_table
from sweep.schema import margin_name

SEED_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan", "tab:red", "tab:gray")
VARIANT_STYLES = {"full": ("-", "o"), "noalign": ("--", "s"), "rescue": ("-.", "^"), "prefit": (":", "D")}
OTHER_STYLES = ((":", "v"), ((0, (5, 1, 1, 1, 1, 1)), "P"), ((0, (1, 1)), "X"), ((0, (8, 2)), "*"))
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # the other settings of a panel named by `panels`
STEP_LABEL = "optimizer step"
DPI = 120
PANEL_SIZE = (4.6, 3.3)  # inches per panel
LEGEND_WIDTH = 2.9  # inches to the right of the panels
HEADER = "legend-header"  # gid of a legend row that names a group


def curve(trial: TrialRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metrics.jsonl column, report points without a number left out."""
    points = [(r["step"], r[key]) for r in trial.history
              if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def seed_labels(sweep: Sweep) -> dict[int, str]:
    """' (stress case)' / ' (unknown QC)' for seeds whose teacher is not strict-feasible."""
    qc = dict(zip(sweep.results["seed"], sweep.results["qc"]))
    return {s: "" if q == "feasible" else f" ({q})" for s, q in qc.items()}


def seed_colors(sweep: Sweep) -> dict[int | None, str]:
    """One colour per seed of the sweep, the same in every panel and every figure."""
    seeds = sorted({t.seed for t in sweep.trials if t.seed is not None})
    colors: dict[int | None, str] = {s: SEED_COLORS[i % len(SEED_COLORS)] for i, s in enumerate(seeds)}
    return colors | {None: "black"}


def style_name(trial: TrialRecord) -> str:
    """What a line style stands for: the variant, and for a fork by hand which fork it is."""
    fork = trial.info.get(FORK_SETTING)
    return f"{trial.variant} (fork {fork})" if fork else trial.variant


def variant_styles(names: list[str]) -> dict[str, tuple[Any, str]]:
    """(line style, marker) per style name: fixed ones for the protocol's variants, a cycle for the rest."""
    others = [n for n in names if n not in VARIANT_STYLES]
    return {n: VARIANT_STYLES.get(n) or OTHER_STYLES[others.index(n) % len(OTHER_STYLES)] for n in names}


# --- panels ----------------------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    """1.0 -> '1', 0.001 -> '0.001', a string as it is, None -> '?'."""
    if value is None:
        return "?"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """'train.lam' -> 'lam', unless two keys share their last part (then the whole key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _sort_value(value: Any) -> tuple:
    """Numbers in numeric order, then everything else by its text (None last)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1 if value is not None else 2, 0.0, fmt_value(value))


class PanelError(ValueError):
    """`panels` names no setting of the sweep's trials."""


def panel_keys(sweep: Sweep, panels: str | None = None) -> list[str]:
    """The settings that tell the panels apart: the named one, else every sweep parameter (in the
    order of the config's sweep.grid, then the rest; `fork` aside: a fork is drawn in its grid
    point's panel, in a line style of its own).

    Raises:
        PanelError: `panels` names no setting of any trial ('lam' is accepted for 'train.lam'
            when only one setting ends so).
    """
    if panels is None:
        section = sweep.config.get("sweep")
        grid = section.get("grid") if isinstance(section, dict) else None
        grid = list(grid) if isinstance(grid, dict) else []
        keys = [k for k in sweep.settings if k != FORK_SETTING]
        return sorted(keys, key=lambda k: (grid.index(k) if k in grid else len(grid), k))
    known = sorted({k for t in sweep.trials for k in trial_settings(t)} - {FORK_SETTING})
    if panels in known:
        return [panels]
    matches = [k for k in known if k.rsplit(".", 1)[-1] == panels]
    if len(matches) == 1:
        return matches
    differing = ", ".join(k for k in sweep.settings if k != FORK_SETTING) or "none"
    raise PanelError(f"panels: {panels!r} is no setting of this sweep's trials (a dotted config key such as "
                     f"train.lam; settings that differ between its trials: {differing})")


@dataclass
class Panels:
    """The panels of one figure: their grid points in reading order, and what each trial's is."""

    keys: list[str]
    points: list[tuple[str, ...]]  # values as JSON text, one per key
    values: dict[tuple[str, ...], tuple[Any, ...]]

    @property
    def names(self) -> dict[str, str]:
        return short_names(self.keys)

    def point(self, trial: TrialRecord) -> tuple[str, ...]:
        settings = trial_settings(trial)
        return tuple(json.dumps(settings.get(k), sort_keys=True) for k in self.keys)

    def matching(self, trial: TrialRecord) -> list[tuple[str, ...]]:
        """The panels a trial is drawn in: its own grid point's, or, for a trial one grid axis
        does not apply to (noalign's lambda), every panel that agrees with it on the others."""
        own, shared = self.point(trial), json.dumps(NOT_APPLICABLE)
        return [p for p in self.points if all(v == shared or v == w for v, w in zip(own, p))]

    def title(self, point: tuple[str, ...]) -> str:
        """'lam=5, alpha_kl=1' (empty for a sweep without a grid)."""
        names = self.names
        return ", ".join(f"{names[k]}={fmt_value(v)}" for k, v in zip(self.keys, self.values[point]))

    def shape(self) -> tuple[int, int]:
        """(rows, columns): a full two-setting grid as its table (rows by the first setting), else
        up to 3 (4 beyond 9 panels) per row."""
        n = len(self.points)
        counts = [len({p[i] for p in self.points}) for i in range(len(self.keys))]
        if len(self.keys) >= 2 and math.prod(counts) == n and counts[-1] <= 4:
            cols = counts[-1]
        else:
            cols = min(n, 4 if n > 9 else 3 if n > 4 else 2 if n > 1 else 1)
        return math.ceil(n / cols), cols


def make_panels(trials: list[TrialRecord], keys: list[str]) -> Panels:
    """The grid points `trials` fall on, ordered setting by setting (numbers numerically)."""
    values: dict[tuple[str, ...], tuple[Any, ...]] = {}
    for trial in trials:
        settings = trial_settings(trial)
        point = tuple(json.dumps(settings.get(k), sort_keys=True) for k in keys)
        values.setdefault(point, tuple(settings.get(k) for k in keys))
    own = {p: v for p, v in values.items() if NOT_APPLICABLE not in v}
    values = own or values  # a shared trial is drawn in the panels of the trials it serves
    points = sorted(values, key=lambda p: tuple(_sort_value(v) for v in values[p]))
    return Panels(keys, points, values)


class Markers:
    """Markers for the sweep parameters a panel does not fix (when `panels` names one setting of a
    grid of several): one marker per combination of the others, e.g. alpha_kl=1 'o', alpha_kl=2 's'."""

    def __init__(self, sweep: Sweep, trials: list[TrialRecord], grid: Panels) -> None:
        self.rest = [k for k in panel_keys(sweep) if k not in grid.keys]
        self.runs = make_panels(trials, self.rest)

    def __bool__(self) -> bool:
        return bool(self.rest)

    def marker(self, trial: TrialRecord, default: str) -> str:
        point = self.runs.point(trial)
        if not self.rest or point not in self.runs.points:  # a trial these settings do not apply to
            return default
        return RUN_MARKERS[self.runs.points.index(point) % len(RUN_MARKERS)]

    def handles(self) -> list[Any]:
        if not self.rest:
            return []
        return [header("marker: " + ", ".join(short_names(self.rest).values()))] + [
            Line2D([], [], color="0.25", linestyle="none", marker=RUN_MARKERS[i % len(RUN_MARKERS)], markersize=5,
                   label=self.runs.title(p)) for i, p in enumerate(self.runs.points)]


def panel_figure(panels: Panels, title: str) -> tuple[Figure, dict[tuple[str, ...], Axes]]:
    """A constrained-layout figure of two subfigures: the panels (one axes per grid point, shared
    axes, tick labels on each) under their title, and beside them a column for the legend
    (`add_legend`), so that neither the title nor the legend can cover a curve."""
    rows, cols = panels.shape()
    width = cols * PANEL_SIZE[0] + LEGEND_WIDTH
    fig = Figure(figsize=(width, rows * PANEL_SIZE[1] + 0.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    plots, _ = fig.subfigures(1, 2, width_ratios=[cols * PANEL_SIZE[0], LEGEND_WIDTH], wspace=0.0)
    grid = plots.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    axes = {}
    for i, ax in enumerate(grid.flat):
        if i >= len(panels.points):
            ax.set_visible(False)
            continue
        axes[panels.points[i]] = ax
        ax.tick_params(labelbottom=True, labelleft=True)
        ax.grid(alpha=0.3)
    fit(plots.suptitle(title, fontsize=12), cols * PANEL_SIZE[0])
    return fig, axes


def fit(text: Text, width_in: float) -> Text:
    """Wrap a title until the renderer finds it no wider than `width_in` inches (less a margin)."""
    fig, words = text.get_figure(root=True), text.get_text()
    renderer = (fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)).get_renderer()
    chars = len(words)
    while chars > 10:
        if text.get_window_extent(renderer).width <= (width_in - 0.2) * fig.dpi:
            break
        chars = int(chars * 0.9)
        text.set_text("\n".join(textwrap.wrap(words, chars)))
    return text


def add_legend(fig: Figure, handles: list[Any]) -> None:
    """One legend for the whole figure in its legend column (the second subfigure), top left; the
    figure grows where the legend needs more room than the panels leave it."""
    column = fig.subfigs[1]
    legend = column.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=8,
                           frameon=False, handlelength=3.2, borderaxespad=0.3)
    for handle, text in zip(handles, legend.get_texts()):  # the legend's own handles are copies, without gid
        if handle.get_gid() == HEADER:
            text.set_fontweight("bold")
    fig.canvas.draw()
    extent = legend.get_window_extent(fig.canvas.get_renderer())
    need_w, need_h = extent.width / fig.dpi + 0.15, extent.height / fig.dpi + 0.3
    if need_w > LEGEND_WIDTH:
        panels_w = fig.get_figwidth() - LEGEND_WIDTH
        fig.set_figwidth(panels_w + need_w)
        column.get_subplotspec().get_gridspec().set_width_ratios([panels_w, need_w])
    if need_h > fig.get_figheight():
        fig.set_figheight(need_h)


def seed_handles(sweep: Sweep, seeds: list[int | None]) -> list[Any]:
    """A colour patch per seed: 'seed 0', 'seed 2 (stress case)'."""
    colors, labels = seed_colors(sweep), seed_labels(sweep)
    return [Patch(color=colors[s], label=f"seed {s}{labels.get(s, '')}" if s is not None else "seed unknown")
            for s in sorted(seeds, key=lambda s: (s is None, s or 0))]


def header(text: str) -> Line2D:
    """A legend row that only names the group below it (in bold)."""
    return Line2D([], [], linestyle="none", label=text, gid=HEADER)


def boundary(ax: Axes) -> None:
    """The certificate boundary: the margin is positive exactly where the certificate holds."""
    ax.axhline(0.0, color="black", linewidth=1.1)


def band(ax: Axes, trial: TrialRecord, color: str) -> bool:
    """The statistical certificate's bounds [G_lower, G_upper] on the bare margin G as a shaded band
    (certified where the band is above 0); whether there was one."""
    points = [(r["step"], r["G_lower"], r["G_upper"]) for r in trial.history
              if isinstance(r.get("G_lower"), (int, float)) and isinstance(r.get("G_upper"), (int, float))
              and isinstance(r.get("step"), (int, float))]
    if not points:
        return False
    steps, lower, upper = (np.asarray(v, dtype=float) for v in zip(*points))
    ax.fill_between(steps, lower, upper, color=color, alpha=0.10, linewidth=0)
    return True


def drawn_texts(fig: Figure) -> list[Text]:
    """The texts a drawing of `fig` shows: visible, not empty, not in a hidden axes, and no tick
    label of a tick outside its axis's view (matplotlib keeps those, undrawn)."""
    skip: set[int] = set()
    for ax in fig.axes:
        if not ax.get_visible():
            skip |= {id(t) for t in ax.findobj(Text)}
            continue
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(hi - lo, 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not lo - tol <= loc <= hi + tol:
                    skip |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if id(t) not in skip and t.get_visible() and t.get_text().strip()]


def texts_outside(fig: Figure) -> list[str]:
    """The texts of `fig`, drawn, whose window extent (the renderer's word) leaves the canvas."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    out = []
    for text in drawn_texts(fig):
        e = text.get_window_extent(renderer)
        if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5:
            out.append(text.get_text())
    return out


# --- margin curves ----------------------------------------------------------------------------------


def margin_figure(sweep: Sweep, panels: str | None = None) -> Figure | None:
    """The margin curves as small multiples; None when no trial has a curve."""
    trials = [t for t in sweep.trials if len(curve(t, t.margin)[0])]
    if not trials:
        return None
    keys = {t.margin for t in trials}
    key = keys.pop() if len(keys) == 1 else margin_name("")  # a sweep that mixes targets plots on G_tau's axis label
    grid = make_panels(trials, panel_keys(sweep, panels))
    markers = Markers(sweep, trials, grid)  # the settings a panel does not fix
    colors = seed_colors(sweep)
    styles = variant_styles(sorted({style_name(t) for t in trials}, key=_style_order))
    fig, axes = panel_figure(grid, f"{sweep.name}: certificate margin {key} = I_T - L_align - tau over training "
                                   "(certified where it is above 0)")
    banded = running = False
    for trial in trials:
        steps, values = curve(trial, trial.margin)
        linestyle, marker = styles[style_name(trial)]
        marker = markers.marker(trial, marker)
        hollow = trial.status == "running"
        running |= hollow
        color = colors.get(trial.seed, "black")
        for point in grid.matching(trial):
            ax = axes[point]
            ax.plot(steps, values, color=color, linestyle=linestyle, marker=marker, markersize=4, linewidth=1.5,
                    markerfacecolor="white" if hollow else color, gid=trial.trial_id)
            banded |= band(ax, trial, color)
    for point, ax in axes.items():
        boundary(ax)
        ax.set_title(grid.title(point), fontsize=10)
        ax.set_xlabel(STEP_LABEL, fontsize=9)
        ax.set_ylabel(f"{key} (nats)", fontsize=9)
    handles = [header("colour: seed"), *seed_handles(sweep, list({t.seed for t in trials})),
               header("line: variant")]
    handles += [Line2D([], [], color="0.25", linestyle=ls, marker=None if markers else m, markersize=4, label=name)
                for name, (ls, m) in styles.items()]
    handles += markers.handles()
    handles += [header(""), Line2D([], [], color="black", linewidth=1.1, label=f"certificate boundary ({key} = 0)")]
    if banded:
        handles.append(Patch(color="0.5", alpha=0.25, label="bounds [G_lower, G_upper]\non the bare margin G"))
    if running:
        handles.append(Line2D([], [], color="0.25", marker="o", markerfacecolor="white", linestyle="none",
                              label="hollow: still running"))
    add_legend(fig, handles)
    return fig


def _style_order(name: str) -> tuple:
    order = list(VARIANT_STYLES)
    return (order.index(name) if name in order else len(order), name)


def plot_margins(sweep: Sweep, path: Path, panels: str | None = None) -> bool:
    """margin_curves.png; False (nothing written) when no trial has a curve."""
    return save(margin_figure(sweep, panels), path)


# --- rescue transition ------------------------------------------------------------------------------


def rescue_pairs(sweep: Sweep) -> list[tuple[int | None, TrialRecord | None, TrialRecord]]:
    """(seed, parent trial or None, rescue trial) for every rescue with a curve: the parent its
    trial.json names (a fork's too), else the noalign trial of its seed and settings (a sweep
    written before trial.json)."""
    by_id = {t.trial_id: t for t in sweep.trials}
    plain = lambda t: {k: v for k, v in trial_settings(t).items() if k != FORK_SETTING}  # noqa: E731
    pairs = []
    for t in sweep.trials:
        if t.variant == "rescue" and len(curve(t, t.margin)[0]):
            parent = (t.info.get("parent") or {}).get("trial")
            if parent:
                found = by_id.get(parent)
            else:
                found = next((n for n in sweep.trials if n.variant == "noalign" and n.seed == t.seed
                              and plain(n) == plain(t)), None)
            pairs.append((t.seed, found, t))
    return pairs


def start_of(parent: TrialRecord, rescue: TrialRecord, key: str) -> tuple[float, float] | None:
    """Where a rescue's curve starts: its parent's report at the step it was forked from (its
    trial.json), else the parent's last report; None when the parent has no curve."""
    steps, values = curve(parent, key)
    if not len(steps):
        return None
    step = (rescue.info.get("parent") or {}).get("step")
    at = np.flatnonzero(steps <= step)[-1] if isinstance(step, int) and (steps <= step).any() else len(steps) - 1
    return steps[at], values[at]


def lineage(parent: TrialRecord | None, rescue: TrialRecord) -> str:
    """Where a rescue starts, as its trial.json says: 'forked at step 471', 'forked at step 471 by
    hand', 'from the noalign endpoint (step 1256)'; a sweep without trial.json: 'after the noalign
    endpoint'."""
    info = rescue.info.get("parent") or {}
    step, reason = info.get("step"), str(info.get("reason") or "")
    name = parent.variant if parent is not None else "noalign"
    if not isinstance(step, int):
        return f"after the {name} endpoint (no lineage recorded)"
    if reason == "endpoint":
        return f"from the {name} endpoint (step {step})"
    if rescue.info.get(FORK_SETTING):  # a fork by hand carries its label (sweep/grow.py)
        return f"forked at step {step} by hand"
    return f"forked at step {step}"


def lineage_summary(groups: dict[str, list[int | None]]) -> str:
    """'forked at step 471: seeds 0, 1, 2' per kind of start, one line each."""
    lines = []
    for text, seeds in groups.items():
        seeds = sorted(set(seeds), key=lambda s: (s is None, s or 0))
        named = ", ".join("?" if s is None else str(s) for s in seeds)
        lines.append(f"{text}: seed{'s' if len(seeds) > 1 else ''} {named}")
    return "\n".join(lines)


def rescue_figure(sweep: Sweep, panels: str | None = None) -> Figure | None:
    """The rescue transitions as small multiples (panels as the margin curves'); None without a
    rescue curve."""
    pairs = rescue_pairs(sweep)
    if not pairs:
        return None
    key = pairs[0][2].margin
    grid = make_panels([r for _, _, r in pairs], panel_keys(sweep, panels))
    markers = Markers(sweep, [r for _, _, r in pairs], grid)  # the settings a panel does not fix
    colors = seed_colors(sweep)
    names = sorted({style_name(r) for _, _, r in pairs} | {p.variant for _, p, _ in pairs if p is not None},
                   key=_style_order)
    styles = variant_styles(names)
    fig, axes = panel_figure(grid, f"{sweep.name}: rescue transition, each rescue after its parent on one "
                                   f"step axis ({key}; certified above 0)")
    drawn: set[tuple[tuple[str, ...], str]] = set()
    starts: dict[tuple[str, ...], dict[str, list[int | None]]] = {p: {} for p in grid.points}
    forked = False
    for seed, parent, rescue in pairs:
        point = grid.point(rescue)
        ax, color = axes[point], colors.get(seed, "black")
        steps, values = curve(rescue, key)
        start = start_of(parent, rescue, key) if parent is not None else None
        if parent is not None and (point, parent.trial_id) not in drawn and start is not None:
            drawn.add((point, parent.trial_id))
            p_steps, p_values = curve(parent, key)
            ls, m = styles[parent.variant]
            ax.plot(p_steps, p_values, color=color, linestyle=ls, marker=markers.marker(rescue, m), markersize=3.5,
                    linewidth=1.3, alpha=0.9, gid=parent.trial_id)
        if start is not None:
            steps, values = np.r_[start[0], steps], np.r_[start[1], values]  # the rescue starts at that report
            ax.plot(*start, linestyle="none", marker="o", markersize=9, markerfacecolor="none",
                    markeredgecolor="black", markeredgewidth=1.2, zorder=5)
            forked = True
        ls, m = styles[style_name(rescue)]
        ax.plot(steps, values, color=color, linestyle=ls, marker=markers.marker(rescue, m), markersize=4, linewidth=1.6,
                markerfacecolor="white" if rescue.status == "running" else color, gid=rescue.trial_id)
        starts[point].setdefault(lineage(parent, rescue), []).append(seed)
    for point, ax in axes.items():
        boundary(ax)
        title = grid.title(point)
        ax.set_title("\n".join(filter(None, [title, lineage_summary(starts[point])])), fontsize=9)
        ax.set_xlabel(STEP_LABEL + " (a rescue continues its parent's)", fontsize=9)
        ax.set_ylabel(f"{key} (nats)", fontsize=9)
    handles = [header("colour: seed"), *seed_handles(sweep, list({s for s, _, _ in pairs})), header("line: variant")]
    handles += [Line2D([], [], color="0.25", linestyle=ls, marker=None if markers else m, markersize=4,
                       label=f"{n} (parent)" if n in {p.variant for _, p, _ in pairs if p is not None}
                       and n not in {style_name(r) for _, _, r in pairs} else n)
                for n, (ls, m) in styles.items()]
    handles += markers.handles() + [header("")]
    if forked:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=9, markerfacecolor="none",
                              markeredgecolor="black", label="where the rescue starts\n(its parent's checkpoint)"))
    handles.append(Line2D([], [], color="black", linewidth=1.1, label=f"certificate boundary ({key} = 0)"))
    add_legend(fig, handles)
    return fig


def plot_rescue(sweep: Sweep, path: Path, panels: str | None = None) -> bool:
    """rescue_transition.png; False when the sweep has no rescue curve."""
    return save(rescue_figure(sweep, panels), path)


# --- baselines --------------------------------------------------------------------------------------


def _bars(ax: Axes, names: list[str], raw: tuple, posthoc: tuple, ylabel: str) -> None:
    """Raw and post-hoc bars (mean, sample-std error bars) side by side per method."""
    x = np.arange(len(names))
    ax.bar(x - 0.2, raw[0], 0.4, yerr=np.nan_to_num(raw[1]), capsize=3, color="tab:gray", label="raw z-only witness")
    ax.bar(x + 0.2, posthoc[0], 0.4, yerr=np.nan_to_num(posthoc[1]), capsize=3, color="tab:blue",
           label="post-hoc head on frozen mu(x)")
    ax.axhline(0.0, color="black", linewidth=1.0)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def baselines_figure(sweep: Sweep, panels: str | None = None) -> Figure | None:
    """Raw against post-hoc G_tau and MI per method (one bar group per method and grid point);
    None without baseline rows. `panels` is accepted for symmetry: the bars are grouped already."""
    values = baseline_table(sweep).values
    if values.empty:
        return None
    keys = list(values.columns[1:list(values.columns).index("seeds")])  # method, [variant], sweep parameters
    names = [" / ".join(str(row[k]) for k in keys) + ("" if row["QC"] == "feasible" else f"\nseed {row['seeds']} ({row['QC']})")
             for _, row in values.iterrows()]
    pair = lambda name: (values[f"{name} mean"].to_numpy(float), values[f"{name} std"].to_numpy(float))  # noqa: E731
    width = max(8, 1.3 * len(names) + 4)
    fig = Figure(figsize=(width, 5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _bars(left, names, pair("raw G_tau"), pair("post-hoc G_tau"), "G_tau (nats); certified above 0")
    _bars(right, names, pair("raw MI"), pair("post-hoc MI"), "student MI I_S (nats)")
    left.set_title("certificate margin")
    right.set_title("student mutual information")
    left.legend(fontsize=8)
    fit(fig.suptitle(f"{sweep.name}: baselines, raw vs post-hoc certificate (mean ± std over feasible seeds)"), width)
    return fig


def plot_baselines(sweep: Sweep, path: Path, panels: str | None = None) -> bool:
    """baselines.png; False without baseline rows."""
    return save(baselines_figure(sweep, panels), path)


# --- files ------------------------------------------------------------------------------------------


def save(fig: Figure | None, path: Path) -> bool:
    """Write a figure (False, nothing written, for None)."""
    if fig is None:
        return False
    fig.savefig(path, dpi=DPI)
    return True


FIGURES: dict[str, tuple[Callable[[Sweep, str | None], Figure | None], str]] = {
    "margin_curves.png": (margin_figure, "no trial has a metrics.jsonl curve"),
    "rescue_transition.png": (rescue_figure, "no rescue trial with a curve"),
    "baselines.png": (baselines_figure, "no baseline rows (method other than certificate) in results.csv")}


def write_figures(sweep: Sweep, folder: Path, panels: str | None = None) -> tuple[list[Path], list[str], list[Problem]]:
    """Every figure that has data into `folder`.

    Args:
        sweep: The collected sweep.
        folder: Where the PNG files go (DIR/analysis).
        panels: One panel per value of this setting (a dotted config key such as "train.lam", or its
            last part when that is unambiguous); None: one panel per grid point of the sweep.

    Returns:
        The PNG files written, notes on figures left out for lack of data (or with a text outside
        the canvas), and problems.

    Raises:
        PanelError: `panels` names no setting of the sweep's trials (`panel_keys`), before anything
            is written.
    """
    panel_keys(sweep, panels)  # refuse an unknown setting before any file is touched
    files, notes = [], []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, (draw, missing) in FIGURES.items():
            (folder / name).unlink(missing_ok=True)  # never leave a stale figure of older data
            fig = draw(sweep, panels)
            if fig is None:
                notes.append(f"{name} not drawn: {missing}")
                continue
            if outside := texts_outside(fig):
                notes.append(f"{name}: text reaches beyond the canvas: " + "; ".join(repr(t) for t in outside[:3]))
            fig.savefig(folder / name, dpi=DPI)
            files.append(folder / name)
    except OSError as err:
        return files, notes, [Problem(rel(sweep.root, folder), f"cannot write figures ({err})")]
    return files, notes, []
