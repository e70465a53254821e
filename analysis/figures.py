"""Figures of a sweep as PNG files in DIR/analysis/ (matplotlib's Agg canvas: no display needed).

  margin_curves.png      G_tau (G_fix for a fixed target) against optimizer step, one line per variant
                         and seed, with the certificate boundary at 0 (docs/method.md, "Certificate":
                         certified iff G_tau > 0) and, where the sweep has them, the bounds
                         [G_lower, G_upper] on the bare margin as a band; running trials included
  rescue_transition.png  each rescue (the scheduler's and every fork) after its parent on one
                         continuous step axis: it starts from the parent's checkpoint at the step it
                         was forked from and continues its step axis
  baselines.png          raw against post-hoc G_tau and student MI per baseline method (paper Table 3)

Each figure is titled with the sweep's name; axes carry their units (nats, optimizer steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.collect import Sweep, TrialRecord
from analysis.readers import Problem, rel
from analysis.tables import baseline_table

VARIANT_COLORS = {"full": "tab:blue", "noalign": "tab:red", "rescue": "tab:green"}
OTHER_COLORS = ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
SEED_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
STEP_LABEL = "optimizer step (parameter updates)"


def margin_key(trial: TrialRecord) -> str:
    """'G_fix' for a fixed-target trial, else 'G_tau'."""
    return "G_fix" if trial.fixed_target else "G_tau"


def curve(trial: TrialRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metrics.jsonl column, report points without a number left out."""
    points = [(r["step"], r[key]) for r in trial.history if isinstance(r.get(key), (int, float))]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def variant_color(variant: str, variants: list[str]) -> str:
    """Fixed colours for the protocol's variants, a palette for the rest."""
    others = [v for v in variants if v not in VARIANT_COLORS]
    return VARIANT_COLORS.get(variant) or OTHER_COLORS[others.index(variant) % len(OTHER_COLORS)]


def seed_labels(sweep: Sweep) -> dict[int, str]:
    """' (stress case)' / ' (unknown QC)' for seeds whose teacher is not strict-feasible."""
    qc = dict(zip(sweep.results["seed"], sweep.results["qc"]))
    return {s: "" if q == "feasible" else f" ({q})" for s, q in qc.items()}


def boundary(ax: Axes, key: str) -> None:
    """The certificate boundary: the margin is positive exactly where the certificate holds."""
    ax.axhline(0.0, color="black", linewidth=1.3, label=f"certificate boundary ({key} = 0)")


def band(ax: Axes, trial: TrialRecord, color: str, labelled: bool) -> bool:
    """The statistical certificate's bounds [G_lower, G_upper] on the bare margin G as a shaded band
    (certified where the band is above 0); returns whether a band has been labelled so far."""
    points = [(r["step"], r["G_lower"], r["G_upper"]) for r in trial.history
              if isinstance(r.get("G_lower"), (int, float)) and isinstance(r.get("G_upper"), (int, float))]
    if not points:
        return labelled
    steps, lower, upper = (np.asarray(v, dtype=float) for v in zip(*points))
    ax.fill_between(steps, lower, upper, color=color, alpha=0.12, linewidth=0,
                    label=None if labelled else "bounds [G_lower, G_upper] on G (eval.alpha; certified above 0)")
    return True


def plot_margins(sweep: Sweep, path: Path) -> bool:
    """margin_curves.png; False (nothing written) when no trial has a curve."""
    trials = [t for t in sweep.trials if len(curve(t, margin_key(t))[0])]
    if not trials:
        return False
    key = "G_fix" if all(margin_key(t) == "G_fix" for t in trials) else "G_tau"
    seeds = sorted({t.seed for t in trials if t.seed is not None})
    variants = sorted({t.variant for t in trials})
    labels = seed_labels(sweep)
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax = fig.subplots()
    banded = False
    for trial in trials:
        steps, values = curve(trial, margin_key(trial))
        i = seeds.index(trial.seed) if trial.seed in seeds else 0
        running = " (running)" if trial.status == "running" else ""
        ax.plot(steps, values, color=variant_color(trial.variant, variants), linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.6,
                label=f"{trial.variant}, seed {trial.seed}{labels.get(trial.seed, '')}{running}")
        banded = band(ax, trial, variant_color(trial.variant, variants), banded)
    boundary(ax, key)
    ax.set(xlabel=STEP_LABEL, ylabel=f"{key} = I_T - L_align - tau (line), bounds on G (band), nats",
           title=f"{sweep.name}: certificate margin {key} over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(trials) > 16 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)
    return True


def rescue_pairs(sweep: Sweep) -> list[tuple[int | None, TrialRecord | None, TrialRecord]]:
    """(seed, parent trial or None, rescue trial) for every rescue with a curve: the parent its
    trial.json names (a fork's too), else its seed's noalign (a sweep written before trial.json)."""
    by_id = {t.trial_id: t for t in sweep.trials}
    by = {(t.seed, t.variant): t for t in sweep.trials}
    pairs = []
    for t in sweep.trials:
        if t.variant == "rescue" and len(curve(t, margin_key(t))[0]):
            parent = (t.info.get("parent") or {}).get("trial")
            pairs.append((t.seed, by_id.get(parent) if parent else by.get((t.seed, "noalign")), t))
    return pairs


def start_of(parent: TrialRecord, rescue: TrialRecord, key: str) -> tuple[float, float]:
    """Where a rescue's curve starts: its parent's report at the step it was forked from (its
    trial.json), else the parent's last report."""
    steps, values = curve(parent, key)
    step = (rescue.info.get("parent") or {}).get("step")
    at = np.flatnonzero(steps <= step)[-1] if isinstance(step, int) and (steps <= step).any() else len(steps) - 1
    return steps[at], values[at]


def plot_rescue(sweep: Sweep, path: Path) -> bool:
    """rescue_transition.png; False when the sweep has no rescue curve. Each parent is drawn once;
    each rescue (the scheduler's, and every fork) starts at its parent's step."""
    pairs = rescue_pairs(sweep)
    if not pairs:
        return False
    key, labels = margin_key(pairs[0][2]), seed_labels(sweep)
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    starts, drawn = [], set()
    for i, (seed, parent, rescue) in enumerate(pairs):
        color = SEED_COLORS[i % len(SEED_COLORS)]
        steps, values = curve(rescue, key)
        name = rescue.trial_id.split("/", 1)[-1]
        if parent is not None and len(curve(parent, key)[0]):
            if parent.trial_id not in drawn:
                drawn.add(parent.trial_id)
                n_steps, n_values = curve(parent, key)
                ax.plot(n_steps, n_values, color="0.35", linestyle="--", marker="o", markersize=3,
                        label=f"seed {seed}{labels.get(seed, '')}: {parent.trial_id.split('/', 1)[-1]}")
            start = start_of(parent, rescue, key)
            steps, values = np.r_[start[0], steps], np.r_[start[1], values]  # the rescue starts at that report
            starts.append(start[0])
        ax.plot(steps, values, color=color, linestyle="-", marker="s", markersize=3,
                label=f"seed {seed}{labels.get(seed, '')}: {name}")
    for j, start in enumerate(sorted(set(starts))):
        ax.axvline(start, color="0.4", linestyle=":", linewidth=1.2, label="rescue starts" if j == 0 else None)
    boundary(ax, key)
    ax.set(xlabel=f"{STEP_LABEL}; a rescue continues its parent's step axis",
           ylabel=f"{key} (nats)", title=f"{sweep.name}: rescue transition, noalign then rescue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=120)
    return True


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


def plot_baselines(sweep: Sweep, path: Path) -> bool:
    """baselines.png: raw against post-hoc G_tau and MI per method; False without baseline rows."""
    values = baseline_table(sweep).values
    if values.empty:
        return False
    keys = list(values.columns[1:list(values.columns).index("seeds")])  # method, [variant], sweep parameters
    names = [" / ".join(str(row[k]) for k in keys) + ("" if row["QC"] == "feasible" else f"\nseed {row['seeds']} ({row['QC']})")
             for _, row in values.iterrows()]
    pair = lambda name: (values[f"{name} mean"].to_numpy(float), values[f"{name} std"].to_numpy(float))  # noqa: E731
    fig = Figure(figsize=(max(8, 1.3 * len(names) + 4), 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    _bars(left, names, pair("raw G_tau"), pair("post-hoc G_tau"), "G_tau (nats); certified above 0")
    _bars(right, names, pair("raw MI"), pair("post-hoc MI"), "student MI I_S (nats)")
    left.set_title("certificate margin")
    right.set_title("student mutual information")
    left.legend(fontsize=8)
    fig.suptitle(f"{sweep.name}: baselines, raw vs post-hoc certificate (mean ± std over feasible seeds)")
    fig.savefig(path, dpi=120)
    return True


def write_figures(sweep: Sweep, folder: Path) -> tuple[list[Path], list[str], list[Problem]]:
    """Every figure that has data into `folder`.

    Returns:
        The PNG files written, notes on figures left out for lack of data, and problems.
    """
    plots = {"margin_curves.png": (plot_margins, "no trial has a metrics.jsonl curve"),
             "rescue_transition.png": (plot_rescue, "no rescue trial with a curve"),
             "baselines.png": (plot_baselines, "no baseline rows (method other than certificate) in results.csv")}
    files, notes = [], []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, (plot, missing) in plots.items():
            (folder / name).unlink(missing_ok=True)  # never leave a stale figure of older data
            if plot(sweep, folder / name):
                files.append(folder / name)
            else:
                notes.append(f"{name} not drawn: {missing}")
    except OSError as err:
        return files, notes, [Problem(rel(sweep.root, folder), f"cannot write figures ({err})")]
    return files, notes, []
