"""Forks and extensions of a sweep (sweep/grow.py), as a user runs them: `python -m sweep fork` and
`extend` on a finished sweep, a killed one completed by `resume`, and the refusals, each naming
what it refuses. Synchronised on files and exit statuses, never on sleeps."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.collect import collect
from analysis.readers import scan_events
from analysis.tables import aggregate_table
from sweep.__main__ import main
from sweep.checkpoint import kept_name
from tests.conftest import rows, tiny_raw
from tests.test_stop import ENV, ROOT, Driver, metrics_lines

EPOCH = 23  # optimizer steps per epoch: 1437 digits, batch 64
FORKS = [f"seed_0/rescue-from-noalign-step92-lam={lam},student_first_steps={first}"
         for lam in (2.0, 5.0) for first in (0, 10)]


def config(tmp_path: Path, **sweep) -> Path:
    """One seed, full / noalign / rescue, 4 epochs each (noalign to its endpoint: no collapse stop),
    a checkpoint kept every 2 reports."""
    raw = tiny_raw(warmup_epochs=1, epochs=4, rescue_epochs=2, batch_size=64, lr=0.005, lam=20.0, threads=1)
    raw |= {"seeds": [0], "scheduler": {"collapse_patience": 0},
            "sweep": {"console_every_s": 60, "keep_checkpoints": 2, **sweep}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def sweep(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *argv], cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-seed sweep (sequential: the quickest), copied by each test that changes it."""
    tmp = tmp_path_factory.mktemp("finished")
    ok(sweep("run", str(config(tmp)), "--out", str(tmp / "sweep"), "--sequential"))
    return tmp / "sweep"


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "sweep"
    subprocess.run(["cp", "-a", str(finished), str(out)], check=True)
    return out


def plan_events(out: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (out / "plan.jsonl").read_text().splitlines()) if e["event"] == kind]


def steps(out: Path, trial: str) -> list[int]:
    return [json.loads(line)["step"] for line in (out / trial / "metrics.jsonl").read_text().splitlines()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("engine", [pytest.param("ray", marks=pytest.mark.ray),
                                    pytest.param("sequential", marks=pytest.mark.slow),
                                    pytest.param("ray-uri", marks=pytest.mark.ray)])
def test_a_fork_grid_of_a_finished_sweeps_noalign(finished: Path, tmp_path: Path, engine: str) -> None:
    out = copy_of(finished, tmp_path)
    old = (out / "results.csv").read_bytes()
    flags = ["--sequential"] if engine == "sequential" else []
    where = f"file://{out}" if engine == "ray-uri" else str(out)  # at a URI: pulled, pinned and pushed there
    done = ok(sweep("fork", where, "seed_0/noalign", "--set", "train.lam=[2,5]",
                    "--set", "train.student_first_steps=[0,10]", *flags))
    assert f"fork: 4 trial(s) from seed_0/noalign at step 92: {', '.join(FORKS)}" in done.stdout
    assert (out / "results.csv").read_bytes()[:len(old)] == old  # the first sweep's rows, byte for byte
    new = {r["trial_id"]: r for r in rows(out)[3:]}
    assert sorted(new) == sorted(FORKS)
    for trial, row in new.items():
        assert (row["variant"], row["status"], row["parent_trial"], row["parent_step"], row["fork"]) == \
            ("rescue", "finished", "seed_0/noalign", "92", "noalign@92")
        assert row["parent_checkpoint"] == f"seed_0/noalign/{kept_name(92)}" and (out / row["parent_checkpoint"]).exists()
        settings = json.loads((out / trial / "config.json").read_text())["train"]
        assert f"lam={settings['lam']},student_first_steps={settings['student_first_steps']}" in trial
        assert float(row["lam"]) == settings["lam"]
        # the step axis goes on from the parent's: metrics, TensorBoard and the row
        assert steps(out, trial) == [92 + EPOCH, 92 + 2 * EPOCH] and row["step"] == str(92 + 2 * EPOCH)
        logged, problems = scan_events(out, out / trial, running=False)
        assert not problems and {step for tag, step in logged if tag == "certificate/G_tau"} == {115, 138}
    assert [e["spec"]["trial"] for e in plan_events(out, "add")] == FORKS[::-1]  # added in reverse: run in order
    # the analysis keeps the forks apart, from each other and from the sweep's own rescue
    table = aggregate_table(collect(out)).values
    rescues = table[table["variant"] == "rescue"]
    assert {"fork", "train.lam", "train.student_first_steps"} <= set(table.columns)
    assert sorted(zip(rescues["fork"], rescues["train.lam"], rescues["train.student_first_steps"])) == \
        [("", 20.0, 0), ("noalign@92", 2.0, 0), ("noalign@92", 2.0, 10), ("noalign@92", 5.0, 0), ("noalign@92", 5.0, 10)]


@pytest.mark.slow
def test_a_fork_from_a_kept_step_and_one_from_a_step_not_kept(finished: Path, tmp_path: Path) -> None:
    out = copy_of(finished, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    refused = sweep("fork", str(out), "seed_0/full", "--step", "3")
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    assert refused.stderr == ("error: fork: seed_0/full has no checkpoint at step 3; steps available: 46, 92 "
                              "(sweep.keep_checkpoints sets how many are kept)\n")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written, nothing touched
    ok(sweep("fork", str(out), "seed_0/full", "--step", "46", "--set", "train.epochs=1", "--sequential"))
    (row,) = [r for r in rows(out) if r["fork"]]
    assert (row["trial_id"], row["variant"], row["parent_step"]) == ("seed_0/full-from-full-step46-epochs=1", "full", "46")
    assert steps(out, row["trial_id"]) == [46 + EPOCH]


REFUSED = [
    (["fork", "seed_0/noalign", "--set", "train.warmup_epochs=2"], "train.warmup_epochs: would change the warm-up"),
    (["fork", "seed_0/noalign", "--set", "teacher.ks=[5]"], "teacher.ks: would change the warm-up or the teacher"),
    (["fork", "seed_0/noalign", "--set", "model.hidden=8"], "model.hidden: the model is its parent's checkpoint's"),
    (["fork", "seed_0/noalign", "--set", "eval.alpha=0.1"], "eval.alpha: not a setting of one trial's training"),
    (["fork", "seed_0/noalign", "--set", "train.lam=[-1]"], "train.lam: must be >= 0"),
    (["fork", "seed_0/warmup"], "seed_0/warmup is a warm-up"),
    (["fork", "seed_0/nothing"], "seed_0/nothing is not a trial of"),
    (["fork", "seed_0/noalign", "--step", "40"], "no checkpoint at step 40; steps available: 46, 92"),
    (["extend", "--set", "seeds=[0,1]", "--set", "train.epochs=99"], "train.epochs: 4 -> 99 would make the new"),
    (["extend", "--set", "seeds=[1]"], "seeds: extend only adds; [0] would be dropped"),
    (["extend", "--set", "variants=[full]"], "variants: extend only adds; ['noalign', 'rescue'] would be dropped"),
    (["extend", "--set", "sweep.grid.train.lam=[1,2]"], "sweep.grid.train.lam: a new grid axis would rename"),
    (["extend", "--set", "seeds=[0]"], "extend: the --set values add nothing to the sweep"),
]


@pytest.mark.parametrize(("argv", "named"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_refused_fork_or_extend_names_its_key_and_leaves_the_sweep_alone(
        finished: Path, argv: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    before = {p: sha(p) for p in finished.rglob("*") if p.is_file()}
    assert main([argv[0], str(finished), *argv[1:], "--sequential"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and named in err and "Traceback" not in out + err, err
    assert {p: sha(p) for p in finished.rglob("*") if p.is_file()} == before


@pytest.mark.ray
def test_extend_by_a_seed_then_a_grid_value_runs_only_the_new_trials(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    ok(sweep("run", str(config(tmp_path, grid={"train.lam": [20.0]})), "--out", str(out), "--sequential"))
    warm0 = out / "seed_0/warmup/checkpoint.pt"
    kept = (sha(warm0), warm0.stat().st_mtime_ns)
    old = (out / "results.csv").read_bytes()
    ok(sweep("extend", str(out), "--set", "seeds=[0,1]", "--sequential"))
    assert (out / "results.csv").read_bytes()[:len(old)] == old
    assert [r["trial_id"] for r in rows(out)[3:]] == ["seed_1/full-lam=20.0", "seed_1/noalign", "seed_1/rescue-lam=20.0"]
    old = (out / "results.csv").read_bytes()
    ok(sweep("extend", str(out), "--set", "seeds=[0,1]", "--set", "sweep.grid.train.lam=[20.0,10.0]"))  # on Ray
    assert (out / "results.csv").read_bytes()[:len(old)] == old
    # noalign ignores lambda: the new lambda's rescue forks from each seed's existing noalign
    assert sorted(r["trial_id"] for r in rows(out)[6:]) == sorted(
        f"seed_{s}/{v}-lam=10.0" for s in (0, 1) for v in ("full", "rescue"))
    assert {r["parent_trial"] for r in rows(out)[6:] if r["variant"] == "rescue"} == {"seed_0/noalign", "seed_1/noalign"}
    # every warm-up ran once: lambda leaves it alone, so lam=10 trials start from the existing ones
    assert sorted(e["trial"] for e in plan_events(out, "end") if "warmup" in e["trial"]) == ["seed_0/warmup", "seed_1/warmup"]
    assert (sha(warm0), warm0.stat().st_mtime_ns) == kept
    assert [e["changes"] for e in plan_events(out, "extend")] == [
        {"seeds": [[0], [0, 1]]}, {"sweep.grid": [{"train.lam": [20.0]}, {"train.lam": [20.0, 10.0]}]}]
    grown = yaml.safe_load((out / "config.yaml").read_text())
    assert grown["seeds"] == [0, 1] and grown["sweep"]["grid"] == {"train.lam": [20.0, 10.0]}
    assert len(rows(out)) == len({r["trial_id"] for r in rows(out)}) == 10


@pytest.mark.ray
@pytest.mark.parametrize(("command", "then"), [("fork", "resume"), ("extend", "resume"), ("extend", "fork")])
def test_a_killed_fork_or_extend_driver_is_completed_every_trial_once(finished: Path, tmp_path: Path, command: str,
                                                                     then: str) -> None:
    """Killed mid-run, then `resume`, or a fork of the stopped sweep (which runs what is left too)."""
    out = copy_of(finished, tmp_path)
    if command == "fork":
        argv, first, new = ["seed_0/noalign", "--set", "train.lam=[2,5]", "--set", "train.student_first_steps=[0,10]"], \
            FORKS[0], FORKS
    else:
        argv, first, new = ["--set", "seeds=[0,1]"], "seed_1/full", ["seed_1/full", "seed_1/noalign", "seed_1/rescue"]
    driver = Driver([command, str(out), *argv], tmp_path / "logs")
    try:
        driver.wait_for(lambda: metrics_lines(out, first) >= 1, f"a report of {first}")
    finally:
        driver.kill()  # SIGKILL, the driver and its Ray: no clean-up of any kind
    before = rows(out)
    if then == "fork":
        done = ok(sweep("fork", str(out), "seed_0/full", "--set", "train.lam=3"))
        new = [*new, "seed_0/full-from-full-step92-lam=3.0"]
    else:
        done = ok(sweep("resume", str(out)))
    assert f"took over the lock of {out}" in done.stdout
    after = rows(out)
    assert after[:len(before)] == before
    assert sorted(r["trial_id"] for r in after) == sorted(["seed_0/full", "seed_0/noalign", "seed_0/rescue", *new])
    assert len(plan_events(out, "extend")) == (command == "extend")
    assert len(plan_events(out, "add")) == 4 * (command == "fork") + (then == "fork")
    for trial in new:  # each report point once
        epochs = [json.loads(line)["epoch"] for line in (out / trial / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, len(epochs) + 1)), (trial, epochs)
        assert [e["trial"] for e in plan_events(out, "end")].count(trial) == 1


@pytest.mark.slow
def test_a_results_csv_an_older_certsweep_began_keeps_its_columns(finished: Path, tmp_path: Path) -> None:
    """A fork of a sweep whose results.csv lacks this version's columns (parent_step, fork): its rows
    stay aligned with the file's own header, and the analysis reads the file whole."""
    out = copy_of(finished, tmp_path)
    lines = (out / "results.csv").read_bytes().decode().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    drop = [header.index("parent_step"), header.index("fork")]
    cut = "".join(",".join(v for i, v in enumerate(line.rstrip("\r\n").split(",")) if i not in drop) + "\r\n"
                  for line in lines)  # no field of these rows holds a comma
    (out / "results.csv").write_bytes(cut.encode())
    ok(sweep("fork", str(out), "seed_0/noalign", "--sequential"))
    text = (out / "results.csv").read_bytes().decode()
    assert text.startswith(cut) and len(rows(out)) == 4
    (row,) = rows(out)[3:]
    assert set(row) == set(header) - {"parent_step", "fork"} and row["parent_trial"] == "seed_0/noalign"
    assert row["status"] == "finished" and None not in row
    assert len(collect(out).results) == 4
