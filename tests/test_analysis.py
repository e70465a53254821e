"""Analysis of sweep directories (analysis/): the paper's tables from hand-written results.csv
fixtures asserted exactly, stress-case seeds kept out of the feasible mean, tau sensitivity from the
bare margin, fixed-target G_fix, baselines with and without their columns, one problem line per bad
file, and the real smoke sweep through TensorBoard's own EventAccumulator and the figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from analysis.__main__ import main
from analysis.collect import collect
from analysis.render import to_csv, to_latex, to_markdown
from analysis.report import analyse
from analysis.tables import aggregate_table, baseline_table, diagnostics_table, per_seed_table, tau_table
from sweep.config import load_config
from sweep.schema import RESULT_COLUMNS
from sweep.runner import run_config

TAU = 0.25  # a binary fraction: G_tau = G - TAU and every mean / std below are exact in floating point
I_T = 1.5
# (seed, variant, feasible, bare G, student MI): feasible seeds 0, 1, 3; seed 2 is a stress case.
# Feasible full G = 1.0, 1.25, 0.75 -> G_tau mean 0.75, sample std 0.25 (population std would be 0.2041).
ROWS = [(0, "full", True, 1.0, 1.0), (0, "noalign", True, -0.5, 0.0),
        (1, "full", True, 1.25, 1.25), (1, "noalign", True, -0.25, 0.0),
        (2, "full", False, -1.5, 0.125), (2, "noalign", False, -2.0, 0.0),
        (3, "full", True, 0.75, 0.75), (3, "noalign", True, -0.75, 0.0)]
DIAG = {0: (20.0, 4, 10.0, 2.0, 0.75), 1: (20.5, 4, 11.0, 2.0, 0.5), 2: (18.0, 2, 3.0, 1.0, 0.25),
        3: (19.5, 4, 12.0, 2.0, 1.0)}  # psnr, active units, kl, E||mu||^2, probe accuracy


def result_row(seed: int, variant: str, feasible: bool, g: float, mi: float, target: str = "search",
               **extra: object) -> dict[str, object]:
    """One results.csv row as the runner writes it (I_T, L = I_T - G, G_tau = G - tau)."""
    i_t = I_T if feasible else 0.5
    psnr, au, kl, mu_sq, probe = DIAG[seed]
    row = {c: "" for c in RESULT_COLUMNS} | {
        "dataset": "fixture", "seed": seed, "variant": variant, "target": target, "teacher_feasible": feasible,
        "teacher_k": 4, "I_T": i_t, "L_align": i_t - g, "G": g, "G_tau": g - TAU, "G_fix": math.nan,
        "student_mi": mi, "psnr": psnr, "active_units": au, "kl": kl, "mu_sq": mu_sq, "probe_acc": probe,
        "lam": 0.0 if variant == "noalign" else 5.0, "alpha_kl": 1.0, "tau": TAU,
        "trial_id": f"seed_{seed}/{variant}", "trial_dir": f"seed_{seed}/{variant}"}
    return row | extra


def write_csv(root: Path, rows: list[dict[str, object]]) -> Path:
    """results.csv with the union of the rows' columns."""
    root.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "sweep", [result_row(*r) for r in ROWS])


def text_rows(table) -> list[list[str]]:
    return [list(r) for r in table.text.itertuples(index=False)]


def test_per_seed_table_is_table_1(sweep_dir: Path) -> None:
    table = per_seed_table(collect(sweep_dir))
    assert list(table.text.columns) == ["seed", "QC", "variant", "I_T", "L_align", "G_tau", "student MI"]
    assert text_rows(table) == [
        ["0", "feasible", "full", "1.5000", "0.5000", "0.7500", "1.0000"],
        ["0", "feasible", "noalign", "1.5000", "2.0000", "-0.7500", "0.0000"],
        ["1", "feasible", "full", "1.5000", "0.2500", "1.0000", "1.2500"],
        ["1", "feasible", "noalign", "1.5000", "1.7500", "-0.5000", "0.0000"],
        ["2", "stress case", "full", "0.5000", "2.0000", "-1.7500", "0.1250"],
        ["2", "stress case", "noalign", "0.5000", "2.5000", "-2.2500", "0.0000"],
        ["3", "feasible", "full", "1.5000", "0.7500", "0.5000", "0.7500"],
        ["3", "feasible", "noalign", "1.5000", "2.2500", "-1.0000", "0.0000"]]
    assert table.values["G_tau"].tolist() == [0.75, -0.75, 1.0, -0.5, -1.75, -2.25, 0.5, -1.0]


def test_aggregate_pools_feasible_seeds_only_with_sample_std(sweep_dir: Path) -> None:
    table = aggregate_table(collect(sweep_dir))
    assert text_rows(table) == [
        ["feasible", "full", "0, 1, 3", "3", "0.7500 ± 0.2500", "1.0000 ± 0.2500", "0.5000 ± 0.2500"],
        ["feasible", "noalign", "0, 1, 3", "3", "-0.7500 ± 0.2500", "0.0000 ± 0.0000", "2.0000 ± 0.2500"],
        ["stress case", "full", "2", "1", "-1.7500", "0.1250", "2.0000"],
        ["stress case", "noalign", "2", "1", "-2.2500", "0.0000", "2.5000"]]
    full = table.values.iloc[0]
    assert full["G_tau mean"] == 0.75  # pooling the stress seed (-1.75) would give 0.125
    assert full["G_tau std"] == 0.25  # sample std, ddof = 1 (the population std is 0.2041)
    assert full["n"] == 3 and full["seeds"] == "0, 1, 3"
    stress = table.values.iloc[2]
    assert (stress["QC"], stress["G_tau mean"], stress["n"]) == ("stress case", -1.75, 1)
    assert math.isnan(stress["G_tau std"])  # one seed: no std, an empty cell


def test_table_files_csv_latex_markdown(sweep_dir: Path) -> None:
    table = aggregate_table(collect(sweep_dir))
    assert to_csv(table).splitlines()[:2] == [
        "QC,variant,seeds,n,G_tau mean,G_tau std,student MI mean,student MI std,L_align mean,L_align std",
        'feasible,full,"0, 1, 3",3,0.7500,0.2500,1.0000,0.2500,0.5000,0.2500']
    latex = to_latex(table)
    assert r"QC & variant & seeds & n & $G_\tau$ & student MI & $L_{\mathrm{align}}$ \\" in latex
    assert r"feasible & full & 0, 1, 3 & $3$ & $0.7500 \pm 0.2500$ & $1.0000 \pm 0.2500$ & $0.5000 \pm 0.2500$ \\" in latex
    assert "| stress case | full | 2 | 1 | -1.7500 | 0.1250 | 2.0000 |" in to_markdown(table)


def test_tau_table_shifts_the_bare_margin(sweep_dir: Path) -> None:
    sweep = collect(sweep_dir)
    exact = tau_table(sweep, (0.0, 0.25, 0.5))
    assert list(exact.text.columns)[4:] == ["G_tau (tau=0)", "G_tau (tau=0.25)", "G_tau (tau=0.5)"]
    assert exact.values.iloc[0][["G_tau (tau=0) mean", "G_tau (tau=0.25) mean", "G_tau (tau=0.5) mean"]].tolist() \
        == [1.0, 0.75, 0.5]  # mean bare G of feasible full is 1.0; tau = 0.25 is the logged G_tau
    default = tau_table(sweep)
    assert text_rows(default)[0][4:] == ["1.0000 ± 0.2500", "0.9500 ± 0.2500", "0.8500 ± 0.2500"]
    assert text_rows(default)[2][4:] == ["-1.5000", "-1.5500", "-1.6500"]  # stress seed on its own


def test_diagnostics_table(sweep_dir: Path) -> None:
    table = diagnostics_table(collect(sweep_dir))
    assert list(table.text.columns)[4:] == ["PSNR (dB)", "active units", "KL", "E||mu||^2", "probe acc"]
    assert text_rows(table)[0][4:] == ["20.0000 ± 0.5000", "4.0000 ± 0.0000", "11.0000 ± 1.0000",
                                       "2.0000 ± 0.0000", "0.7500 ± 0.2500"]
    assert text_rows(table)[2][4:] == ["18.0000", "2.0000", "3.0000", "1.0000", "0.2500"]


def test_fixed_target_sweep_reports_G_fix(tmp_path: Path) -> None:
    rows = [result_row(*r, target="fixed") | {"G_tau": math.nan, "G_fix": r[3] - TAU} for r in ROWS]
    sweep = collect(write_csv(tmp_path / "fixed", rows))
    table = aggregate_table(sweep)
    assert list(table.text.columns)[4] == "G_fix"
    assert table.values.iloc[0]["G_fix mean"] == 0.75 and table.values.iloc[0]["G_fix std"] == 0.25
    assert per_seed_table(sweep).text.columns[5] == "G_fix"
    assert list(tau_table(sweep).text.columns)[4] == "G_fix (tau=0)"
    assert text_rows(tau_table(sweep))[0][5] == "0.9500 ± 0.2500"  # G_fix at tau' = G - tau'


def test_baseline_table_without_and_with_its_columns(sweep_dir: Path, tmp_path: Path) -> None:
    empty = baseline_table(collect(sweep_dir))
    assert list(empty.text.columns) == ["QC", "method", "seeds", "n", "raw G_tau", "raw MI", "post-hoc G_tau",
                                        "post-hoc MI"]
    assert len(empty.text) == 0 and to_markdown(empty).count("\n") == 3  # heading, blank, header, rule

    rows = [result_row(*r, method="certificate") for r in ROWS]
    rows += [result_row(s, "full", s != 2, g, mi, method="vae", posthoc_G_tau=post, posthoc_student_mi=0.5,
                        trial_dir=f"seed_{s}/vae")
             for s, g, mi, post in ((0, -1.75, 0.125, 0.5), (1, -2.25, 0.125, 0.25), (2, -9.75, 0.0, -4.0),
                                    (3, -1.25, 0.125, 0.75))]
    sweep = collect(write_csv(tmp_path / "baselines", rows))
    table = baseline_table(sweep)
    assert text_rows(table) == [
        ["feasible", "vae", "full", "0, 1, 3", "3", "-2.0000 ± 0.5000", "0.1250 ± 0.0000", "0.5000 ± 0.2500",
         "0.5000 ± 0.0000"],
        ["stress case", "vae", "full", "2", "1", "-10.0000", "0.0000", "-4.0000", "0.5000"]]
    assert len(per_seed_table(sweep).text) == len(ROWS)  # baseline rows stay out of Tables 1 and 2


def test_missing_posthoc_columns_leave_empty_cells(sweep_dir: Path, tmp_path: Path) -> None:
    rows = [result_row(*r) for r in ROWS] + [result_row(0, "full", True, -2.0, 0.25, method="beta_vae",
                                                        trial_dir="seed_0/beta_vae")]
    table = baseline_table(collect(write_csv(tmp_path / "raw_only", rows)))
    assert text_rows(table) == [["feasible", "beta_vae", "full", "0", "1", "-2.2500", "0.2500", "", ""]]


def problems_of(root: Path) -> list[str]:
    return [str(p) for p in collect(root).problems]


def test_empty_results_csv_is_one_problem_and_empty_tables(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "results.csv").write_text("")
    assert problems_of(root) == ["problem: config.yaml: missing; the sweep is named after its directory",
                                 "problem: results.csv: is empty: no finished trial yet"]
    report = analyse(root, tensorboard=False, figures=False)
    assert all(len(t.text) == 0 for t in report.tables)
    assert (root / "analysis" / "aggregate.csv").read_text().startswith("QC,variant,seeds,n,G_tau mean")


def test_malformed_results_csv_keeps_the_good_rows(sweep_dir: Path) -> None:
    path = sweep_dir / "results.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("fixture,0,full", "fixture,zero,full")  # seed is not a number
    lines.append("fixture,9,full,search")  # a row cut off mid-write
    lines.append('"\x00\x01 binary junk')
    path.write_text("\n".join(lines) + "\n")
    problems = problems_of(sweep_dir)
    assert f"problem: results.csv: line 10 has 4 fields, the header {len(RESULT_COLUMNS)}; skipped" in problems
    assert "problem: results.csv: line 2: seed = 'zero' is not a number" in problems
    assert "problem: results.csv: line 2: no integer seed or no variant; row skipped" in problems
    assert len(per_seed_table(collect(sweep_dir)).text) == len(ROWS) - 1


def write_trial(root: Path, seed: int, variant: str, finished: bool) -> Path:
    """A trial folder as the runner leaves it: config.json, metrics.jsonl (+ result.json when finished)."""
    folder = root / f"seed_{seed}" / variant
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "fixture", "seed": seed, "variant": variant,
                                                    "teacher": {"target": "search"}, "train": {"lam": 5.0}}))
    points = [{"step": 10 * i, "G": 0.25 * i, "G_tau": 0.25 * i - TAU, "L_align": 1.0, "lam": 5.0} for i in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    if finished:
        (folder / "result.json").write_text(json.dumps(points[-1]))
    return folder


def test_corrupt_event_file_is_a_problem_and_its_scalars_are_rebuilt(sweep_dir: Path) -> None:
    folder = write_trial(sweep_dir, 0, "full", finished=True)
    bad = folder / "events.out.tfevents.1700000000.host.1.0"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    assert f"problem: {bad.relative_to(sweep_dir)}: corrupt event file: record 1 is damaged " \
           "(0 records readable before it)" in problems_of(sweep_dir)
    report = analyse(sweep_dir, images=False, figures=False)
    assert "seed_0/full: 8 scalars rebuilt from metrics.jsonl (no readable training event file held them)" \
        in report.notes
    events = EventAccumulator(str(folder)).Reload()
    assert [s.value for s in events.Scalars("certificate/G_tau")] == [0.0, 0.25]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_running_trial_has_a_curve_but_no_endpoint_row(sweep_dir: Path) -> None:
    write_trial(sweep_dir, 0, "full", finished=True)
    write_trial(sweep_dir, 0, "rescue", finished=False)
    sweep = collect(sweep_dir)
    assert [(t.trial_id, t.status) for t in sweep.trials] == [("seed_0/full", "finished"), ("seed_0/rescue", "running")]
    report = analyse(sweep_dir, images=False)
    trials = {r[0]: r for r in text_rows(report.tables[-1])}
    assert trials["seed_0/rescue"] == ["seed_0/rescue", "0", "rescue", "running", "2", "20", "0.2500"]
    assert "rescue" not in set(per_seed_table(sweep).text["variant"])
    assert (sweep_dir / "analysis" / "margin_curves.png").stat().st_size > 10_000
    assert [str(p) for p in report.problems] == ["problem: config.yaml: missing; the sweep is named after its directory"]


def test_finished_trial_missing_from_results_csv_gets_its_row_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "no_csv"
    write_trial(root, 4, "full", finished=True)
    (root / "seed_4" / "teacher").mkdir()
    (root / "seed_4" / "teacher" / "teacher.json").write_text(json.dumps({"selected": {"feasible": False, "k": 3}}))
    sweep = collect(root)
    assert "problem: seed_4/full/result.json: finished but not in results.csv; row rebuilt from result.json, " \
           "config.json and teacher.json" in [str(p) for p in sweep.problems]
    assert text_rows(per_seed_table(sweep)) == [["4", "stress case", "full", "", "1.0000", "0.2500", ""]]


def test_cli_exit_codes_and_problem_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "is not a sweep directory" in err
    root = tmp_path / "running"
    root.mkdir()
    (root / "results.csv").write_text("")
    assert main([str(root), "--no-images"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("### Table 1: per-seed certificate")
    assert "problem: results.csv: is empty: no finished trial yet\n" in err


def test_smoke_sweep_end_to_end_tensorboard_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    run_config(load_config(Path(__file__).parents[1] / "configs" / "smoke_digits.yaml"), out, log=lambda _: None)
    report = analyse(out)
    assert report.problems == []
    assert text_rows(report.tables[0])[0][:3] == ["0", text_rows(report.tables[0])[0][1], "full"]
    for variant in ("full", "noalign", "rescue"):
        events = EventAccumulator(str(out / "seed_0" / variant)).Reload()
        tags = events.Tags()
        for tag in ("certificate/G_tau", "certificate/L_align", "loss/recon", "collapse/active_units",
                    "teacher/teacher_mi"):
            assert tag in tags["scalars"], (variant, tag)
        assert tags["images"] == ["reconstruction/eval"]
        assert "teacher/candidates/text_summary" in tags["tensors"]
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["variant"].string_value == variant
        assert start.session_start_info.hparams["seed"].number_value == 0
        assert "_hparams_/session_end_info" in content
    experiment = EventAccumulator(str(out)).Reload().PluginTagToContent("hparams")["_hparams_/experiment"]
    metrics = [m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(experiment).experiment.metric_infos]
    assert metrics[0] == "certificate/G_tau"
    for name in ("margin_curves.png", "rescue_transition.png"):
        image = imread(out / "analysis" / name)
        assert image.shape[0] > 400 and image.shape[1] > 600 and image.std() > 0.05, name
    assert not (out / "analysis" / "baselines.png").exists()
    assert "baselines.png not drawn: no baseline rows (method other than certificate) in results.csv" in report.notes
    again = analyse(out, images=False)  # a second analysis replaces its own event files, adds none
    assert len(list((out / "seed_0" / "full").glob("events.out.tfevents.*"))) == 2 and again.problems == []


def test_sweep_parameters_from_config_json_split_the_groups(tmp_path: Path) -> None:
    """A grid over train.lam (as the Ray engine writes it): one aggregate row per lam, never pooled."""
    root = tmp_path / "grid"
    rows = []
    for seed, lam, g in ((0, 1.0, 0.5), (1, 1.0, 1.0), (0, 2.0, 2.0), (1, 2.0, 3.0)):
        folder = root / f"trial_{seed}_{lam:g}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"seed": seed, "variant": "full", "train": {"lam": lam},
                                                        "eval": {"tau": TAU}}))
        (folder / "result.json").write_text("{}")
        rows.append(result_row(seed, "full", True, g, 0.5, trial_dir=folder.name))
    sweep = collect(write_csv(root, rows))
    assert sweep.settings == ["train.lam"]
    table = aggregate_table(sweep)
    assert text_rows(table) == [["feasible", "full", "1", "0, 1", "2", "0.5000 ± 0.3536", "0.5000 ± 0.0000",
                                 "0.7500 ± 0.3536"],
                                ["feasible", "full", "2", "0, 1", "2", "2.2500 ± 0.7071", "0.5000 ± 0.0000",
                                 "-1.0000 ± 0.7071"]]
    assert [r[:4] for r in text_rows(per_seed_table(sweep))] == [["0", "feasible", "full", "1"], ["0", "feasible", "full", "2"],
                                                               ["1", "feasible", "full", "1"], ["1", "feasible", "full", "2"]]


def test_baseline_figure_is_drawn_from_baseline_rows(tmp_path: Path) -> None:
    rows = [result_row(s, "vae", s != 2, -1.0, 0.0, method="vae", posthoc_G_tau=0.5, posthoc_student_mi=0.25)
            for s in (0, 1, 2)]
    root = write_csv(tmp_path / "vae_only", rows)
    report = analyse(root, tensorboard=False)
    assert imread(root / "analysis" / "baselines.png").std() > 0.05
    assert report.notes == ["margin_curves.png not drawn: no trial has a metrics.jsonl curve",
                            "rescue_transition.png not drawn: no rescue trial with a curve"]


def test_absolute_trial_dir_in_results_csv_matches_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "abs"
    folder = write_trial(root, 0, "full", finished=True)
    write_csv(root, [result_row(0, "full", True, 1.0, 0.5, trial_dir=str(folder.resolve()))])
    sweep = collect(root)
    assert [p.file for p in sweep.problems] == ["config.yaml"]  # no row rebuilt: the trial is listed
    assert len(sweep.results) == 1 and sweep.results.at[0, "trial_dir"] == "seed_0/full"


def test_tau_table_defaults_to_the_sweeps_taus(tmp_path) -> None:
    from analysis.__main__ import config_taus

    (tmp_path / "config.yaml").write_text("eval: {tau: 0.05, taus: [0.3]}\nsweep: {grid: {eval.tau: [0.1]}}\n")
    assert config_taus(tmp_path) == [0.05, 0.1, 0.3]
    (tmp_path / "config.yaml").write_text("eval: {tau: 0.05, taus: []}\n")
    assert config_taus(tmp_path) == [0.0, 0.05, 0.15]  # no list of its own: the paper's Table 5 taus
    (tmp_path / "config.yaml").write_text(": not yaml [")
    assert config_taus(tmp_path) == [0.0, 0.05, 0.15]


def test_the_statistical_certificate_beside_g_tau_with_sweep_wide_fdr(tmp_path: Path) -> None:
    """Rows that carry the bounds get them in Table 1, the certified fraction per group in Table 2,
    a data-driven column in Table 5, and a Benjamini-Hochberg decision over every endpoint claim."""
    # p-values of the 8 claims; BH at 0.05 over m = 8: sorted p 0.001, 0.004, 0.02, 0.024, 0.2, ... scale
    # to 0.008, 0.016, 0.0533, 0.048, 0.32, ...; step-up takes the running minimum from the top, so
    # 0.02 is adjusted to 0.048 too and the four smallest are discoveries (0.02 alone, at rank 3, is not).
    ps = {(0, "full"): 0.001, (1, "full"): 0.004, (3, "full"): 0.024, (2, "full"): 0.02,
          (0, "noalign"): 0.2, (1, "noalign"): 0.9, (2, "noalign"): 1.0, (3, "noalign"): 0.6}
    rows = []
    for seed, variant, feasible, g, mi in ROWS:
        lower = g - 0.9  # full: 0.1, 0.35, -0.15 on the feasible seeds 0, 1, 3
        rows.append(result_row(seed, variant, feasible, g, mi, G_lower=lower, G_upper=g + 0.5,
                               certified=lower > 0, p_certified=ps[(seed, variant)], alpha=0.05))
    sweep = collect(write_csv(tmp_path / "stat", rows))
    assert sweep.results["certified_fdr"].tolist() == [True, False, True, False, True, False, True, False]
    by = {(r.seed, r.variant): r for r in sweep.results.itertuples()}
    assert by[(3, "full")].p_bh == pytest.approx(0.048) and by[(2, "full")].p_bh == pytest.approx(0.048)
    assert by[(1, "noalign")].p_bh == pytest.approx(1.0)
    table = per_seed_table(sweep)
    assert list(table.text.columns)[-6:] == ["G_lower", "G_upper", "certified", "p", "p (BH)", "certified (FDR)"]
    assert text_rows(table)[0][-6:] == ["0.1000", "1.5000", "yes", "0.0010", "0.0080", "yes"]
    aggregate = aggregate_table(sweep)
    assert text_rows(aggregate)[0][-3:] == ["0.1000 ± 0.2500", "2/3", "3/3"]  # full, feasible seeds 0, 1, 3
    assert aggregate.values.iloc[0]["certified"] == pytest.approx(2 / 3)
    tau = tau_table(sweep, (0.0, 0.25))
    assert list(tau.text.columns)[-1] == "G_lower (alpha=0.05)" and text_rows(tau)[0][-1] == "0.1000 ± 0.2500"
    assert r"$G_{\mathrm{lower}}$" in to_latex(table)
