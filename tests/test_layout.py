"""The Custom Scalars layout of a trial's event files (sweep/layout.py): one category per variant with
a margin chart of G in [G_lower, G_upper], read back as TensorBoard reads it. No Ray, no training."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import metadata
from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

from sweep.trial_log import TrialLog
from sweep.layout import CHART_TITLE, read_layout, variant_tag

REPORTS = [{"step": 23, "epoch": 1, "G": 0.20, "G_lower": -0.10, "G_upper": 0.45, "G_tau": 0.15, "recon": 30.0,
            "certified": False},
           {"step": 46, "epoch": 2, "G": 0.30, "G_lower": 0.02, "G_upper": 0.55, "G_tau": 0.25, "recon": 28.0,
            "certified": True}]


def write_trial(folder: Path, variant: str | None, reports: list[dict] = REPORTS, shift: float = 0.0,
                purge_step: int | None = None) -> None:
    """A trial's logs as the stage writes them: TrialLog, its reports, its close."""
    log = TrialLog(folder, {"name": "t"}, purge_step=purge_step, variant=variant)
    for metrics in reports:
        log.report({k: v + shift if k.startswith("G") else v for k, v in metrics.items()})
    log.close(reports[-1] | {"status": "finished"} if reports else {"status": "finished"})


def run_layouts(folder: Path) -> list:
    """Every custom-scalars layout in the run's event files (one per writer that wrote one)."""
    acc = EventAccumulator(str(folder)).Reload()
    if metadata.CONFIG_SUMMARY_TAG not in acc.Tags()["tensors"]:
        return []
    return [read_layout(e.tensor_proto.string_val[0]) for e in acc.Tensors(metadata.CONFIG_SUMMARY_TAG)]


def merged_layout(root: Path) -> dict:
    """The layout the Custom Scalars tab gets for `root` as its logdir: the plugin's own merge."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(root))
    plugin = CustomScalarsPlugin(base_plugin.TBContext(logdir=str(root), multiplexer=multiplexer,
                                                       data_provider=provider))
    merged = plugin.layout_impl(context.RequestContext(), experiment="")  # JSON text, or {} for none
    return json.loads(merged) if isinstance(merged, str) else merged


def test_each_variant_run_has_one_category_with_a_margin_chart_of_its_own_scalars(tmp_path: Path) -> None:
    for i, variant in enumerate(("full", "noalign")):
        folder = tmp_path / "seed_0" / variant
        write_trial(folder, variant, shift=-0.5 * i)
        layouts = run_layouts(folder)
        assert len(layouts) == 1, variant
        (category,) = layouts[0].category
        assert category.title == variant
        (chart,) = category.chart
        assert chart.title == CHART_TITLE
        (series,) = chart.margin.series
        assert (series.value, series.lower, series.upper) == tuple(variant_tag(variant, m)
                                                                    for m in ("G", "G_lower", "G_upper"))
        acc = EventAccumulator(str(folder)).Reload()
        for name, metric in zip((series.value, series.lower, series.upper), ("G", "G_lower", "G_upper")):
            assert name in acc.Tags()["scalars"], (variant, name)
            assert [(e.step, round(e.value, 6)) for e in acc.Scalars(name)] == \
                   [(r["step"], round(r[metric] - 0.5 * i, 6)) for r in REPORTS]
        assert "certificate/G" in acc.Tags()["scalars"]  # the namespaced tags are still written
        other = "noalign" if variant == "full" else "full"
        assert not any(t.startswith(f"variant/{other}/") for t in acc.Tags()["scalars"])


def test_many_trials_merge_into_one_clean_category_per_variant(tmp_path: Path) -> None:
    """Seeds, grid points and a resumed trial: TensorBoard's merge gives each variant one category
    with one chart, in the order of the first run that has it."""
    trials = [f"seed_{s}/{v}" for s in (0, 1) for v in ("full", "noalign", "rescue")] + ["seed_0/full-lam=10"]
    for trial in trials:
        write_trial(tmp_path / trial, trial.split("/")[1].split("-")[0])
    write_trial(tmp_path / "seed_0" / "warmup", "warmup", reports=[{"step": 23, "epoch": 1, "recon": 40.0}])
    write_trial(tmp_path / "seed_1" / "rescue", "rescue", reports=REPORTS[1:], purge_step=24)  # a restart
    layout = merged_layout(tmp_path)
    assert [c["title"] for c in layout["category"]] == ["full", "noalign", "rescue"]
    for category in layout["category"]:
        variant = category["title"]
        assert category["chart"] == [{"title": CHART_TITLE, "margin": {"series": [
            {"value": variant_tag(variant, "G"), "lower": variant_tag(variant, "G_lower"),
             "upper": variant_tag(variant, "G_upper")}]}}]
    assert len(run_layouts(tmp_path / "seed_1" / "rescue")) == 2  # each writer once; the plugin reads one


def test_no_layout_without_a_variant_or_without_a_certificate(tmp_path: Path) -> None:
    write_trial(tmp_path / "old", None)  # a caller that does not say its variant: logs as before
    write_trial(tmp_path / "warmup", "warmup", reports=[{"step": 23, "epoch": 1, "recon": 40.0}])
    for name in ("old", "warmup"):
        acc = EventAccumulator(str(tmp_path / name)).Reload()
        assert run_layouts(tmp_path / name) == []
        assert not any(t.startswith("variant/") for t in acc.Tags()["scalars"])
    assert merged_layout(tmp_path) == {}


def test_non_finite_margins_are_not_plotted(tmp_path: Path) -> None:
    """An infinite L makes G -inf: like certificate/G it is left out, the layout is still written."""
    reports = [{"step": 23, "G": -math.inf, "G_lower": math.nan, "G_upper": 0.1}, REPORTS[1]]
    write_trial(tmp_path / "full", "full", reports=reports)
    acc = EventAccumulator(str(tmp_path / "full")).Reload()
    assert [e.step for e in acc.Scalars("variant/full/G")] == [46]
    assert [e.step for e in acc.Scalars("variant/full/G_upper")] == [23, 46]
    assert len(run_layouts(tmp_path / "full")) == 1
