"""The figures of a grid sweep (analysis/figures.py, issue 19): small multiples, one panel per grid
point (or per value of the setting `panels` names), each titled with its grid point; curves coloured
by seed, the same colour in every panel and figure; one legend beside the panels that names each
seed and each variant once and covers no curve; every text inside the canvas (the renderer's
extents); rescue panels that say where each rescue starts ("forked at step N"). Synthetic sweep
directories as the Ray engine writes them; no Ray, no training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from analysis.collect import collect
from analysis.figures import (baselines_figure, drawn_texts, margin_figure, panel_keys, rescue_figure, texts_outside,
                              write_figures)

TAU = 0.25
SEEDS = (0, 1)  # seed 1's teacher is a stress case
LAMS = (1.0, 5.0)
ALPHAS = (1.0, 2.0)
FORK_STEP = 471
COLLAPSED = "collapsed: G_upper <= 0 for 3 consecutive reports (last G_upper -0.0689)"
GRID_TITLES = ["lam=1, alpha_kl=1", "lam=1, alpha_kl=2", "lam=5, alpha_kl=1", "lam=5, alpha_kl=2"]


def result_row(seed: int, variant: str, feasible: bool, g: float, **extra: object) -> dict[str, object]:
    """The results.csv columns the figures read (the rest are filled in by the reader)."""
    return {"dataset": "fixture", "seed": seed, "variant": variant, "target": "search", "teacher_feasible": feasible,
            "G": g, "G_tau": g - TAU, "student_mi": 0.5, "tau": TAU, "trial_id": f"seed_{seed}/{variant}",
            "trial_dir": f"seed_{seed}/{variant}"} | extra


def write_csv(root: Path, rows: list[dict[str, object]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    return root


def trial_id(seed: int, variant: str, lam: float | None, alpha: float | None) -> str:
    point = f"-lam={lam},alpha_kl={alpha}" if lam is not None else ""
    return f"seed_{seed}/{variant}{point}"


def shared_noalign(seed: int, alpha: float) -> str:
    """The one noalign trial of a seed and alpha_kl that every lambda shares."""
    return f"seed_{seed}/noalign-alpha_kl={alpha}"


def write_grid_trial(root: Path, seed: int, variant: str, lam: float | None = None, alpha: float | None = None,
                     parent: dict | None = None, fork: str = "", name: str = "") -> tuple[str, float]:
    """One trial folder: config.json, trial.json, metrics.jsonl and result.json; (its id, its last G)."""
    tid = name or trial_id(seed, variant, lam, alpha)
    folder = root / tid
    folder.mkdir(parents=True)
    train = {"lam": 5.0 if lam is None else lam, "alpha_kl": 1.0 if alpha is None else alpha, "epochs": 8}
    overrides = {k: v for k, v in (("train.lam", lam), ("train.alpha_kl", alpha)) if v is not None}
    (folder / "config.json").write_text(json.dumps({"name": "grid_fixture", "seeds": list(SEEDS),
                                                    "teacher": {"target": "search"}, "train": train,
                                                    "eval": {"tau": TAU}}))
    info = {"trial": tid, "variant": variant, "seed": seed, "overrides": overrides, "parent": parent}
    (folder / "trial.json").write_text(json.dumps(info | ({"fork": fork} if fork else {})))
    steps = {"full": range(157, 1257, 157), "noalign": (157, 314, 471)}.get(variant, range(628, 1413, 157))
    scale = 0.1 * seed + 0.05 * (lam or 1.0) - 0.1 * (alpha or 1.0)
    points = []
    for i, step in enumerate(steps):
        g = -0.1 - 0.01 * seed if variant == "noalign" else 0.3 + 0.15 * i + scale
        points.append({"step": step, "G": g + TAU, "G_tau": g, "G_lower": g - 0.05, "G_upper": g + 0.05,
                       "L_align": 1.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (folder / "result.json").write_text(json.dumps(points[-1]))
    return tid, points[-1]["G"]


def grid_config(root: Path) -> None:
    (root / "config.yaml").write_text("name: grid_fixture\nseeds: [0, 1]\nvariants: [full, noalign, rescue]\n"
                                      "sweep:\n  grid:\n    train.lam: [1.0, 5.0]\n    train.alpha_kl: [1.0, 2.0]\n")


@pytest.fixture
def grid_dir(tmp_path: Path) -> Path:
    """2 seeds x train.lam {1, 5} x train.alpha_kl {1, 2} x (full, noalign, rescue), as the plan
    lays it out: one noalign per seed and alpha_kl (lambda is none of its settings), whose collapse
    the scheduler forked at step 471 into one rescue per lambda."""
    root = tmp_path / "grid"
    rows = []
    for seed in SEEDS:
        for alpha in ALPHAS:
            noalign, g = write_grid_trial(root, seed, "noalign", alpha=alpha, name=shared_noalign(seed, alpha))
            rows.append(result_row(seed, "noalign", seed != 1, g, trial_id=noalign, trial_dir=noalign))
            for lam in LAMS:
                parent = {"trial": noalign, "checkpoint": f"{noalign}/checkpoint-step{FORK_STEP}.pt",
                          "step": FORK_STEP, "reason": COLLAPSED}
                for variant in ("full", "rescue"):
                    tid, g = write_grid_trial(root, seed, variant, lam, alpha,
                                              parent=parent if variant == "rescue" else None)
                    rows.append(result_row(seed, variant, seed != 1, g, trial_id=tid, trial_dir=tid))
    write_csv(root, rows)
    grid_config(root)
    return root


def panels_of(fig: Figure) -> list:
    """The visible axes that hold curves, in reading order."""
    return [ax for ax in fig.axes if ax.get_visible()]


def legend_labels(fig: Figure) -> list[str]:
    (legend,) = [leg for sub in fig.subfigs for leg in sub.legends] or fig.legends
    return [t.get_text() for t in legend.get_texts() if t.get_text()]


def line_colors(fig: Figure) -> dict[str, str]:
    """trial id -> colour of its line (every curve carries its trial's id as gid)."""
    return {line.get_gid(): line.get_color() for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def assert_no_overlap(fig: Figure) -> None:
    """The legend and the figure title lie clear of every panel (they never cover a curve)."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    legend = [leg for sub in fig.subfigs for leg in sub.legends][0].get_window_extent(renderer)
    titles = [t.get_window_extent(renderer) for sub in fig.subfigs for t in [sub._suptitle] if t is not None]
    for ax in panels_of(fig):
        box = ax.get_window_extent(renderer)
        assert not box.overlaps(legend), "the legend covers a panel"
        for title in titles:
            assert not box.overlaps(title), "the figure title covers a panel"
    for title in titles:
        assert not title.overlaps(legend), "the legend covers the figure title"


def test_margin_curves_one_panel_per_grid_point(grid_dir: Path) -> None:
    sweep = collect(grid_dir)
    assert panel_keys(sweep) == ["train.lam", "train.alpha_kl"]  # the config's grid order
    fig = margin_figure(sweep)
    panels = panels_of(fig)
    assert [ax.get_title() for ax in panels] == GRID_TITLES
    for ax, (lam, alpha) in zip(panels, [(lam, alpha) for lam in LAMS for alpha in ALPHAS]):
        ids = {line.get_gid() for line in ax.get_lines() if line.get_gid()}
        assert ids == ({trial_id(s, v, lam, alpha) for s in SEEDS for v in ("full", "rescue")}
                       | {shared_noalign(s, alpha) for s in SEEDS})  # the shared noalign in each lambda's panel
        assert ax.get_ylabel() == "G_tau (nats)" and ax.get_xlabel() == "optimizer step"
    assert texts_outside(fig) == []
    assert_no_overlap(fig)


def test_margin_legend_names_seeds_and_variants_once(grid_dir: Path) -> None:
    labels = legend_labels(margin_figure(collect(grid_dir)))
    assert len(labels) == len(set(labels)), labels
    assert labels[:3] == ["colour: seed", "seed 0", "seed 1 (stress case)"]
    assert labels[3:7] == ["line: variant", "full", "noalign", "rescue"]
    assert "certificate boundary (G_tau = 0)" in labels
    assert len(labels) <= 10  # not one entry per curve (24 curves)


def test_seed_colours_agree_across_panels_and_figures(grid_dir: Path) -> None:
    sweep = collect(grid_dir)
    margins, rescues = line_colors(margin_figure(sweep)), line_colors(rescue_figure(sweep))
    for colors in (margins, rescues):
        by_seed = {}
        for tid, color in colors.items():
            by_seed.setdefault(tid.split("/")[0], set()).add(color)
        assert all(len(c) == 1 for c in by_seed.values()), by_seed  # one colour per seed
        assert len({next(iter(c)) for c in by_seed.values()}) == len(SEEDS)  # and seeds apart
    assert all(margins[tid] == color for tid, color in rescues.items())


def test_panels_names_one_setting(grid_dir: Path) -> None:
    sweep = collect(grid_dir)
    fig = margin_figure(sweep, panels="train.lam")
    panels = panels_of(fig)
    assert [ax.get_title() for ax in panels] == ["lam=1", "lam=5"]
    for ax, lam in zip(panels, LAMS):
        ids = {line.get_gid() for line in ax.get_lines() if line.get_gid()}
        assert ids == ({trial_id(s, v, lam, a) for s in SEEDS for v in ("full", "rescue") for a in ALPHAS}
                       | {shared_noalign(s, a) for s in SEEDS for a in ALPHAS})
        markers = {line.get_marker() for line in ax.get_lines() if line.get_gid()}
        assert len(markers) == len(ALPHAS)  # alpha_kl, the other axis, by marker
    labels = legend_labels(fig)
    assert len(labels) == len(set(labels))
    assert {"marker: alpha_kl", "alpha_kl=1", "alpha_kl=2"} <= set(labels)
    assert texts_outside(fig) == []
    assert_no_overlap(fig)
    assert [ax.get_title() for ax in panels_of(margin_figure(sweep, panels="lam"))] == ["lam=1", "lam=5"]
    rescues = rescue_figure(sweep, panels="train.alpha_kl")
    assert [ax.get_title().splitlines()[0] for ax in panels_of(rescues)] == ["alpha_kl=1", "alpha_kl=2"]
    for ax in panels_of(rescues):  # lam, the other axis, by marker (a rescue and its parent alike)
        by_lam, parents = {}, []
        for line in ax.get_lines():
            if line.get_gid() and "/noalign" in line.get_gid():
                parents.append(line.get_gid())
            elif line.get_gid():
                by_lam.setdefault("lam=1" in line.get_gid(), set()).add(line.get_marker())
        assert len(parents) == len(set(parents)) == len(SEEDS)  # each shared parent drawn once
        assert len(by_lam[True]) == len(by_lam[False]) == 1 and by_lam[True] != by_lam[False]
    assert {"marker: lam", "lam=1", "lam=5"} <= set(legend_labels(rescues))
    assert texts_outside(rescues) == []
    with pytest.raises(ValueError, match="'train.nope' is no setting"):
        margin_figure(sweep, panels="train.nope")


def test_rescue_transition_panels_say_forked_at_step(grid_dir: Path) -> None:
    fig = rescue_figure(collect(grid_dir))
    panels = panels_of(fig)
    assert [ax.get_title().splitlines()[0] for ax in panels] == GRID_TITLES
    for ax in panels:
        assert ax.get_title().splitlines()[1] == f"forked at step {FORK_STEP}: seeds 0, 1"
    texts = " ".join(t.get_text() for t in drawn_texts(fig))
    assert "endpoint" not in texts
    labels = legend_labels(fig)
    assert len(labels) == len(set(labels))
    assert {"seed 0", "seed 1 (stress case)", "noalign (parent)", "rescue"} <= set(labels)
    ids = {line.get_gid() for line in panels[0].get_lines() if line.get_gid()}
    assert ids == {trial_id(s, "rescue", 1.0, 1.0) for s in SEEDS} | {shared_noalign(s, 1.0) for s in SEEDS}
    rescue = next(line for line in panels[0].get_lines() if line.get_gid() == trial_id(0, "rescue", 1.0, 1.0))
    assert rescue.get_xdata()[0] == FORK_STEP  # it starts at its parent's report at the fork step
    assert texts_outside(fig) == []
    assert_no_overlap(fig)


def test_rescue_from_an_endpoint_and_a_fork_by_hand_say_so(tmp_path: Path) -> None:
    """A rescue of the sequential engine starts from its noalign's endpoint; a fork by hand
    (`python -m sweep fork`) is told apart from the scheduler's. One panel: no grid."""
    root = tmp_path / "lineage"
    write_grid_trial(root, 0, "noalign")
    write_grid_trial(root, 0, "rescue", parent={"trial": "seed_0/noalign", "checkpoint": "x.pt", "step": 471,
                                                "reason": "endpoint"})
    write_grid_trial(root, 0, "rescue", parent={"trial": "seed_0/noalign", "checkpoint": "y.pt", "step": 314,
                                                "reason": "fork"},
                     fork="noalign@314", name="seed_0/rescue-from-noalign-step314")
    fig = rescue_figure(collect(root))
    (panel,) = panels_of(fig)
    assert panel.get_title() == "from the noalign endpoint (step 471): seed 0\nforked at step 314 by hand: seed 0"
    fork = next(line for line in panel.get_lines() if line.get_gid() == "seed_0/rescue-from-noalign-step314")
    assert fork.get_xdata()[0] == 314
    labels = legend_labels(fig)
    assert {"rescue", "rescue (fork noalign@314)", "noalign (parent)"} <= set(labels)
    assert texts_outside(fig) == []


def test_sweep_without_a_grid_keeps_one_panel(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for seed in SEEDS:
        for variant in ("full", "noalign"):
            write_grid_trial(root, seed, variant)
    sweep = collect(root)
    assert sweep.settings == [] and panel_keys(sweep) == []
    fig = margin_figure(sweep)
    (panel,) = panels_of(fig)
    assert panel.get_title() == "" and len([ln for ln in panel.get_lines() if ln.get_gid()]) == 4
    assert rescue_figure(sweep) is None
    assert texts_outside(fig) == []


def test_many_seeds_and_a_long_name_stay_inside_the_canvas(tmp_path: Path) -> None:
    root = tmp_path / "long"
    for seed in range(9):
        write_grid_trial(root, seed, "full", 1.0, 1.0)
        write_grid_trial(root, seed, "full", 5.0, 1.0)
    (root / "config.yaml").write_text("name: " + "a_rather_long_sweep_name_" * 6 + "\n")
    fig = margin_figure(collect(root))
    assert [ax.get_title() for ax in panels_of(fig)] == ["lam=1", "lam=5"]
    assert len([label for label in legend_labels(fig) if label.startswith("seed ")]) == 9
    assert texts_outside(fig) == []
    assert_no_overlap(fig)


def test_write_figures_with_panels_and_the_baselines_figure(grid_dir: Path, tmp_path: Path) -> None:
    sweep = collect(grid_dir)
    files, notes, problems = write_figures(sweep, grid_dir / "analysis", panels="train.lam")
    assert [f.name for f in files] == ["margin_curves.png", "rescue_transition.png"] and problems == []
    assert notes == ["baselines.png not drawn: no baseline rows (method other than certificate) in results.csv"]
    for file in files:
        image = imread(file)
        assert image.shape[0] > 300 and image.shape[1] > 900 and image.std() > 0.05
    with pytest.raises(ValueError):
        write_figures(sweep, grid_dir / "analysis", panels="no.such")
    rows = [result_row(s, "full", s != 1, -1.0, method="vae", posthoc_G_tau=0.5, posthoc_student_mi=0.25,
                       trial_dir=f"seed_{s}/vae") for s in (0, 1, 2)]
    baselines = baselines_figure(collect(write_csv(tmp_path / "vae", rows)))
    assert baselines is not None and texts_outside(baselines) == []
