"""The protocol function and the sequential runner on scikit-learn digits: exact resume, the
run directory (results.csv, TensorBoard tags), fixed-target caches, and failure paths."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models.vae import ModelConfig, build
from sweep.checkpoint import load_checkpoint
from sweep.data import ImageData
from sweep.metrics import escape_force
from sweep.config import from_dict
from sweep.protocol import NonFiniteLossError, new_trial, restore, run_trial
from sweep.schema import CHECKPOINT_FILE, RESULT_COLUMNS
from sweep.runner import run_config
from sweep.stage import train_warmup
from teachers.artifact import TeacherCacheError
from tests.conftest import tiny_raw


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(tiny_cfg, digits, tmp_path) -> None:
    w = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    warm, teacher = w.state, w.teacher
    straight = new_trial(tiny_cfg, "full", 3, digits, teacher, warm)
    end = run_trial(straight, tmp_path / "straight")

    cut = from_dict(tiny_raw(epochs=1))  # stop after one epoch, as if the process died there
    first = new_trial(cut, "full", 3, digits, teacher, warm)
    run_trial(first, tmp_path / "cut")
    resumed = new_trial(tiny_cfg, "full", 3, digits, teacher, warm)
    restore(resumed, load_checkpoint(tmp_path / "cut" / CHECKPOINT_FILE))
    assert resumed.epoch == 1 and resumed.step == first.step
    end_resumed = run_trial(resumed, tmp_path / "resumed")

    assert _same_state(straight.model.state_dict(), resumed.model.state_dict())
    for key in ("G_tau", "L_align", "recon", "escape_force", "probe_acc", "train_total"):
        assert end[key] == end_resumed[key], key


def test_restore_refuses_another_trials_checkpoint(tiny_cfg, digits, tmp_path) -> None:
    w = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    warm, teacher = w.state, w.teacher
    noalign = new_trial(tiny_cfg, "noalign", 3, digits, teacher, warm)
    run_trial(noalign, tmp_path / "noalign")
    full = new_trial(tiny_cfg, "full", 3, digits, teacher, warm)
    with pytest.raises(ValueError, match="another trial: variant"):
        restore(full, load_checkpoint(tmp_path / "noalign" / CHECKPOINT_FILE))


def test_run_directory_rows_and_tensorboard(tiny_cfg, digits, tmp_path) -> None:
    out = tmp_path / "run"
    rows = run_config(tiny_cfg, out, log=lambda _: None)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["full", "noalign", "rescue"]
    assert set(RESULT_COLUMNS) <= set(table[0])
    by = {r["variant"]: r for r in rows}
    assert by["rescue"]["parent_trial"] == "seed_3/noalign"
    assert by["rescue"]["parent_checkpoint"] == f"seed_3/noalign/checkpoint-step{by['noalign']['step']}.pt"  # pinned
    assert math.isnan(by["full"]["G_fix"])  # teacher-search protocol: no fixed target
    for row in rows:  # G_tau is I_T - L - tau with the logged numbers
        assert row["G_tau"] == pytest.approx(row["I_T"] - row["L_align"] - 0.05, abs=1e-12)
        assert row["G_lower"] <= row["G_upper"] and row["certified"] == (row["G_lower"] > 0)
        assert 0 < row["p_certified"] <= 1 and row["alpha"] == tiny_cfg.eval.alpha
    # noalign never trains its (uniform) witness: L = log K - mean H(T), so G = -KL(Tbar || U) <= 0
    assert by["noalign"]["G"] <= 1e-12 and by["noalign"]["student_mi"] < 1e-9
    acc = EventAccumulator(str(out / "seed_3" / "full")).Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("certificate/I_T", "certificate/L_align", "certificate/G", "certificate/G_tau", "certificate/G_lower",
                "certificate/G_upper",
                "loss/recon", "collapse/active_units", "collapse/escape_force"):
        assert tag in tags, tag
    assert len(acc.Scalars("certificate/G_tau")) == tiny_cfg.train.epochs
    assert acc.Scalars("certificate/G_tau")[-1].value == pytest.approx(by["full"]["G_tau"], abs=1e-5)
    rescue_steps = [e.step for e in EventAccumulator(str(out / "seed_3" / "rescue")).Reload()
                    .Scalars("certificate/G_tau")]
    assert rescue_steps[0] > by["noalign"]["step"]  # the rescue continues the noalign step axis


def test_out_dir_is_never_reused(tiny_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    with pytest.raises(FileExistsError, match="not empty"):
        run_config(tiny_cfg, out, log=lambda _: None)
    assert (out / "results.csv").read_text() == "precious\n"


def test_fixed_target_reads_the_cache_and_refuses_a_tampered_one(digits, tmp_path) -> None:
    first = from_dict(tiny_raw() | {"variants": ["full"]})
    run_config(first, tmp_path / "first", log=lambda _: None)
    fixed = from_dict(tiny_raw() | {"variants": ["full"],
                                    "teacher": tiny_raw()["teacher"] | {"target": "fixed",
                                                                        "cache": str(tmp_path / "first")}})
    rows = run_config(fixed, tmp_path / "second", log=lambda _: None)
    assert rows[0]["G_fix"] == pytest.approx(rows[0]["G_tau"], abs=1e-12)
    assert not (tmp_path / "second" / "seed_3" / "warmup").exists()  # warm-up came from the cache

    targets = tmp_path / "first" / "seed_3" / "teacher" / "teacher.json"
    targets.write_text(targets.read_text().replace('"seed": 3', '"seed": 4'))
    with pytest.raises(TeacherCacheError, match="hash"):
        run_config(fixed, tmp_path / "third", log=lambda _: None)
    assert not (tmp_path / "third").exists()  # refused before anything was written or trained


def test_non_finite_loss_is_an_error_naming_the_step(tiny_cfg, digits, tmp_path) -> None:
    w = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    warm, teacher = w.state, w.teacher
    trial = new_trial(tiny_cfg, "full", 3, digits, teacher, warm)
    trial.optimizer.param_groups[0]["lr"] = float("nan")
    with pytest.raises(NonFiniteLossError, match="full seed 3: training loss became nan"):
        run_trial(trial, tmp_path / "nan")


def test_student_first_phase_leaves_the_decoder_alone(digits, tmp_path) -> None:
    cfg = from_dict(tiny_raw(student_first_steps=10_000))
    w = train_warmup(cfg, digits, 3, tmp_path / "seed_3")
    warm, teacher = w.state, w.teacher
    noalign = new_trial(cfg, "noalign", 3, digits, teacher, warm)
    collapsed = run_trial(noalign, tmp_path / "noalign")
    parent = load_checkpoint(tmp_path / "noalign" / CHECKPOINT_FILE)
    rescue = new_trial(cfg, "rescue", 3, digits, teacher, parent)
    before = {k: v.clone() for k, v in rescue.model.decoder_body.state_dict().items()}
    end = run_trial(rescue, tmp_path / "rescue")
    assert _same_state(before, rescue.model.decoder_body.state_dict())
    assert end["L_align"] < collapsed["L_align"] - 0.01  # alignment alone moved the raw witness
    assert not _same_state(parent["model"], {k: v for k, v in rescue.model.state_dict().items()})


def test_guard_raises_lambda_when_the_margin_is_low(digits, tmp_path) -> None:
    cfg = from_dict(tiny_raw(guard=True, guard_value=1e6, guard_factor=2.0, lam=1.0, lam_max=3.0))
    w = train_warmup(cfg, digits, 3, tmp_path / "seed_3")
    warm, teacher = w.state, w.teacher
    trial = new_trial(cfg, "full", 3, digits, teacher, warm)
    run_trial(trial, tmp_path / "full")
    assert [m["lam"] for m in trial.history] == [1.0, 2.0, 3.0]  # logged lam is the one trained with
    assert trial.lam == 3.0


def test_cache_seed_holds_one_teacher_for_every_training_seed(tmp_path) -> None:
    run_config(from_dict(tiny_raw() | {"variants": ["full"]}), tmp_path / "search", log=lambda _: None)
    teacher = tiny_raw()["teacher"] | {"target": "fixed", "cache": str(tmp_path / "search"), "cache_seed": 3}
    rows = run_config(from_dict(tiny_raw() | {"seeds": [7, 8], "variants": ["full"], "teacher": teacher}),
                      tmp_path / "control", log=lambda _: None)
    assert [r["seed"] for r in rows] == [7, 8]
    assert rows[0]["teacher_hash"] == rows[1]["teacher_hash"]
    assert rows[0]["parent_checkpoint"].endswith("search/seed_3/warmup/checkpoint.pt")
    assert rows[0]["G_tau"] != rows[1]["G_tau"]  # different training seeds, same teacher


def test_shape_problems_stop_the_run_before_it_writes(monkeypatch, tmp_path) -> None:
    odd = ImageData("odd", torch.rand(20, 1, 12, 12), None, torch.rand(5, 1, 12, 12), None, 0)
    monkeypatch.setattr("sweep.checks.load_data", lambda _cfg: odd)
    cfg = from_dict(tiny_raw() | {"model": {"arch": "conv", "latent_dim": 6}})
    with pytest.raises(ValueError, match="power-of-two image size"):
        run_config(cfg, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_escape_force_of_the_simplex_witness_matches_its_closed_form(digits) -> None:
    # docs/method.md: for the simplex witness g_i = beta * V^T (s_i - T_i)
    model = build(ModelConfig(latent_dim=6, hidden=16, witness="simplex", simplex_beta=3.0), digits.shape, 4)
    mu = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    s = torch.softmax(3.0 * mu @ model.witness.vertices.T, dim=1)
    g = (3.0 * (s - targets) @ model.witness.vertices).double()  # (N, d)
    expected = float((g - g.mean(0)).pow(2).sum(1).mean())
    assert escape_force(model, mu, targets) == pytest.approx(expected, rel=1e-5)


def test_reported_margins_are_the_reference_checked_functions(tiny_cfg, digits, tmp_path) -> None:
    """evaluate() reports exactly what teachers.certificate computes (tests/test_certificate.py checks
    those against an independent implementation)."""
    from sweep.metrics import encode_all, evaluate
    from teachers import certificate as cert

    w = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    trial = new_trial(tiny_cfg, "full", 3, digits, w.teacher, w.state)
    run_trial(trial, tmp_path / "full")
    got = evaluate(trial.model, digits, w.teacher, tiny_cfg.eval, probe=False)
    trial.model.eval()
    mu, _ = encode_all(trial.model, digits.x_eval, tiny_cfg.eval.batch_size)
    with torch.no_grad():
        s = torch.softmax(trial.model.witness_logits(mu).double(), dim=1).numpy()
    t = w.teacher.targets_eval
    assert got["I_T"] == cert.teacher_mi(t) and got["L_align"] == cert.alignment_loss(t, s)
    assert got["G"] == cert.bare_margin(t, s) and got["G_tau"] == cert.margin(t, s, tiny_cfg.eval.tau)
    assert got["student_mi"] == cert.student_mi(s)


def test_a_run_ends_by_printing_the_endpoint_table(tmp_path, capsys) -> None:
    import yaml

    from sweep.__main__ import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw()))
    assert main(["run", str(config), "--sequential", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("trial "))
    assert out[start].split() == ["trial", "status", "G_tau", "G", "[G_lower,", "G_upper]", "certified", "(G_lower",
                                  ">", "0,", "alpha", "0.05)"]
    with open(tmp_path / "run" / "results.csv") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    for line in out[start + 1:start + 4]:
        trial, status, g_tau, g, lower, upper, certified = line.replace("[", "").replace("]", "").replace(",", "").split()
        row = rows[trial]
        assert (status, float(g_tau), float(g), float(lower), float(upper)) == (
            row["status"], round(float(row["G_tau"]), 4), round(float(row["G"]), 4), round(float(row["G_lower"]), 4),
            round(float(row["G_upper"]), 4))
        assert certified == ("yes" if row["certified"] == "True" else "no")
        if float(lower) > 0 or float(upper) < 0:  # the estimate beside the bounds of the same quantity
            assert float(lower) - 1e-4 <= float(g) <= float(upper) + 1e-4
    assert out[start + 4].startswith("done in")


def test_a_grid_sweep_ends_with_a_summary_per_grid_point(tmp_path) -> None:
    """Per grid point x variant: seeds, mean ± sd of the margin over seeds, certified k/n; a trial
    the grid points share shows '-' for the key it does not train with; trials in error left out
    and counted; a sweep without a grid prints no summary."""
    from sweep.results import append_row, endpoint_table
    from sweep.schema import RESULT_COLUMNS

    def row(seed, variant, point, g_tau, certified, status="finished"):
        return {c: "" for c in RESULT_COLUMNS} | {
            "seed": seed, "variant": variant, "point": point, "trial_id": f"seed_{seed}/{variant}-{point}",
            "G_tau": g_tau, "G": g_tau + 0.05, "G_lower": g_tau - 0.1, "G_upper": g_tau + 0.2, "certified": certified,
            "status": status, "alpha": 0.05, "target": "search"}

    path = tmp_path / "results.csv"
    for r in (row(1, "full", "lam=2", 1.0, True), row(2, "full", "lam=2", 2.0, True),
              row(1, "noalign", "", -0.1, False), row(2, "noalign", "", -0.3, False),
              row(1, "full", "lam=5", 3.0, True), row(2, "full", "lam=5", math.nan, False, "error")):
        append_row(path, r)
    text = endpoint_table(path).splitlines()
    start = text.index(next(line for line in text if line.startswith("per grid point")))
    assert "(1 trial(s) in error left out)" in text[start]
    lines = [line.split() for line in text[start + 2:]]
    assert lines == [["lam=2", "full", "2", "+1.5000", "±", "0.7071", "2/2"],
                     ["lam=5", "full", "1", "+3.0000", "1/1"],
                     ["lam=-", "noalign", "2", "-0.2000", "±", "0.1414", "0/2"]]
    plain = tmp_path / "plain.csv"
    append_row(plain, row(1, "full", "", 1.0, True))
    assert "per grid point" not in endpoint_table(plain)
