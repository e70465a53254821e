"""The Ray Tune engine end to end on scikit-learn's digits (real Ray, local, CPU only):
a sweep whose noalign trial is stopped as collapsed and forked into a rescue; 8 logical GPUs
giving 8 concurrent trials on distinct devices; a NaN trial ending as an error while the sweep goes
on; a driver killed with SIGKILL and resumed; a config problem reported before any trial starts."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from sweep.checkpoint import load_checkpoint
from sweep.config import ConfigError, from_dict
from sweep.interrupt import descendants
from sweep.spec import TrialSpec
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"PYTHONPATH": str(ROOT)}


def sweep_raw(**extra) -> dict:
    raw = tiny_raw(warmup_epochs=1, epochs=4, rescue_epochs=2, batch_size=64, lr=0.005, lam=20.0, threads=1)
    # digits' small evaluation split cannot resolve noalign's tiny negative margin (about -0.01):
    # the rule reads the upper bound against 0.05, "the data say the margin is at most 0.05"
    raw |= {"seeds": [0], "scheduler": {"collapse_patience": 2, "collapse_threshold": 0.05},
            "sweep": {"console_every_s": 60}}
    raw["model"]["latent_dim"] = 4
    return raw | extra


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def local_ray():
    """A fresh local Ray per test (num_cpus / num_gpus as the test declares: num_gpus=0 for a CPU
    test, which Ray would otherwise give the machine's real GPUs), shut down after."""
    started = []

    def start(**resources) -> None:
        from sweep.engine.driver import start_ray

        start_ray(None, lambda line: None, **resources)  # as the engine's own: token authentication
        started.append(True)

    yield start
    if started:
        ray.shutdown()


@pytest.mark.ray
def test_ray_sweep_forks_a_collapsed_noalign_into_a_certified_rescue(tmp_path: Path, local_ray, monkeypatch) -> None:
    from sweep.engine import objects, run_sweep

    published = []
    real_publish = objects.publish
    monkeypatch.setattr(objects, "publish", lambda store, warm: published.append(warm.trial) or real_publish(store, warm))
    local_ray(num_cpus=2, num_gpus=0)
    # no rescue in variants: every rescue below is the scheduler's fork of a collapsed noalign
    cfg = from_dict(sweep_raw(variants=["full", "noalign"], sweep={"grid": {"train.lam": [10.0, 20.0]},
                                                                   "console_every_s": 60}))
    out = tmp_path / "sweep"
    counts = run_sweep(cfg, out, log=lambda line: None)

    assert published == ["seed_0/warmup"]  # one warm-up and teacher for every lambda, put once
    by = {r["trial_id"]: r for r in rows(out)}
    # noalign trains with lambda = 0: one trial serves both lambdas; full and the rescues run per lambda
    assert sorted(by) == sorted(["seed_0/noalign"] + [f"seed_0/{v}-lam={lam}" for lam in ("10.0", "20.0")
                                                      for v in ("full", "rescue")])
    assert len(rows(out)) == 5 and counts == {"finished": 4, "stopped": 1}
    teacher_hash = json.loads((out / "seed_0/teacher/teacher.json").read_text())["content_hash"]
    noalign = by["seed_0/noalign"]
    assert noalign["status"] == "stopped" and noalign["reason"].startswith("collapsed") and noalign["point"] == ""
    assert float(noalign["G_tau"]) < 0 and int(noalign["epoch"]) == 2  # stopped at patience 2, not 4
    # the stopped trial fitted its endpoint numbers at the report it was stopped at
    assert math.isfinite(float(noalign["posthoc_G_tau"])) and math.isfinite(float(noalign["probe_acc"]))
    reports = [json.loads(line) for line in (out / "seed_0/noalign/metrics.jsonl").open()]
    assert [m.get("posthoc_G_tau") is not None for m in reports] == [False, True]
    for lam in ("10.0", "20.0"):
        rescue, full = (by[f"seed_0/{v}-lam={lam}"] for v in ("rescue", "full"))
        assert rescue["parent_trial"] == "seed_0/noalign" and rescue["point"] == f"lam={lam}"
        pinned = load_checkpoint(out / rescue["parent_checkpoint"])  # the one collapsed checkpoint
        assert pinned["step"] == int(noalign["step"]) and pinned["variant"] == "noalign"
        assert int(rescue["step"]) == int(noalign["step"]) + 2 * 23  # continues the parent's step axis
        assert rescue["status"] == "finished" and float(rescue["G_tau"]) > 0 and float(rescue["lam"]) == float(lam)
        assert full["status"] == "finished" and float(full["G_tau"]) > 0 and float(full["lam"]) == float(lam)
        assert full["parent_checkpoint"] == "seed_0/warmup/checkpoint.pt"
        assert {r["teacher_hash"] for r in (noalign, rescue, full)} == {teacher_hash}
        history = [json.loads(line) for line in (out / f"seed_0/rescue-lam={lam}/metrics.jsonl").open()]
        assert [m["epoch"] for m in history] == [1, 2]
    assert len({by[f"seed_0/rescue-lam={lam}"]["parent_checkpoint"] for lam in ("10.0", "20.0")}) == 1
    decisions = [json.loads(line) for line in (out / "scheduler.jsonl").open()]
    assert [d["trial"] for d in decisions] == ["seed_0/noalign"]
    from analysis.collect import collect  # the analysis reads the engine's directory as a sweep over lambda

    sweep = collect(out)
    assert sweep.settings == ["train.lam"] and not sweep.problems
    assert {t.status for t in sweep.trials} == {"finished", "stopped"} and len(sweep.results) == 5
    assert list(sweep.results.loc[sweep.results["variant"] == "noalign", "train.lam"]) == ["-"]
    assert all(d["action"] == "fork" and d["margin"] < 0 and d["step"] == 46 for d in decisions)
    assert all(d["used"]["G_upper"] <= 0.05 and "G_upper <= 0.05" in d["reason"] for d in decisions)


@pytest.mark.ray
def test_eight_logical_gpus_run_eight_trials_at_once_on_distinct_devices(tmp_path: Path, local_ray) -> None:
    from sweep.engine import run_sweep

    local_ray(num_cpus=8, num_gpus=8)  # logical GPUs: Ray assigns them and sets CUDA_VISIBLE_DEVICES
    raw = sweep_raw(seeds=list(range(8)), variants=["full"])
    # device cpu: the trials hold their GPUs but stay on the CPU, on a machine with real GPUs too
    raw["train"] |= {"warmup_epochs": 30, "epochs": 1, "device": "cpu", "alpha_kl": 0.1}  # long, not collapsed
    raw["sweep"] = raw.get("sweep", {}) | {"gpus_per_trial": 1.0}
    out = tmp_path / "gpus"
    run_sweep(from_dict(raw), out, log=lambda line: None)
    placements = [json.loads((out / f"seed_{s}/warmup/placement.json").read_text()) for s in range(8)]
    assert sorted(p["cuda_visible_devices"] for p in placements) == [str(i) for i in range(8)]
    assert sorted(p["gpu_ids"][0] for p in placements) == [str(i) for i in range(8)]
    assert all(p["device"] == "cpu" and p["gpu_share"] == 1.0 for p in placements)
    starts = [p["started"] for p in placements]
    ends = [(out / f"seed_{s}/warmup/result.json").stat().st_mtime for s in range(8)]
    assert max(starts) < min(ends)  # all eight warm-ups were running at one moment
    assert len(rows(out)) == 8


@pytest.mark.ray
def test_a_nan_trial_ends_as_an_error_and_the_sweep_goes_on(tmp_path: Path, local_ray) -> None:
    from sweep.engine import run_sweep

    local_ray(num_cpus=2, num_gpus=0)
    # alpha_KL 1e39 overflows float32 (the warm-up keeps alpha_KL 1): inf loss, then NaN weights
    raw = sweep_raw(variants=["full"], sweep={"grid": {"train.alpha_kl": [1.0e39, 1.0]}, "console_every_s": 60})
    out = tmp_path / "nan"
    counts = run_sweep(from_dict(raw), out, log=lambda line: None)
    by = {r["trial_id"]: r for r in rows(out)}
    bad = by["seed_0/full-alpha_kl=1e+39"]
    assert bad["status"] == "error" and re.search(r"training loss became (nan|inf) by step \d+", bad["reason"])
    assert by["seed_0/full-alpha_kl=1.0"]["status"] == "finished"
    assert counts == {"error": 1, "finished": 1} and len(rows(out)) == 2


def test_config_problems_stop_the_sweep_before_any_trial(tmp_path: Path) -> None:
    from sweep.engine import run_sweep

    cfg = from_dict(sweep_raw(sweep={"grid": {"train.lam": [1.0, -1.0], "train.nope": [1]}}))
    with pytest.raises(ConfigError) as err:
        run_sweep(cfg, tmp_path / "bad", log=lambda line: None)
    assert "train.nope: not a config key" in str(err.value)
    assert not (tmp_path / "bad").exists() and not ray.is_initialized()


def test_a_broken_teacher_cache_stops_the_sweep_before_any_trial(tmp_path: Path) -> None:
    from sweep.checkpoint import CheckpointError
    from sweep.engine import run_sweep

    raw = sweep_raw(teacher={"ks": [4], "restarts": 1, "target": "fixed", "cache": str(tmp_path / "no_such_run")})
    with pytest.raises(CheckpointError, match="no_such_run/seed_0/warmup/checkpoint.pt"):
        run_sweep(from_dict(raw), tmp_path / "fixed", log=lambda line: None)
    assert not (tmp_path / "fixed").exists() and not ray.is_initialized()


@pytest.mark.ray
@pytest.mark.parametrize("at", ["directory", "uri"])
def test_driver_killed_with_sigkill_then_resume_completes_every_trial_once(tmp_path: Path, at: str) -> None:
    raw = sweep_raw(seeds=[0, 1])
    raw["train"] |= {"epochs": 40, "rescue_epochs": 4}  # full runs on for seconds after the first row
    raw["sweep"] |= {"sync_every_s": 1.0, "trials_per_segment": 4}  # killed in segment 0 of 2
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "kill"  # what the test reads: the directory, or the file system behind the URI
    where = str(out) if at == "directory" else f"file://{out}"
    env = ENV | {"CERTSWEEP_STAGING": str(tmp_path / "staging")}
    driver = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(config), "--out", where], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((out / "results.csv").exists() and rows(out)):
        time.sleep(0.05)
    assert driver.poll() is None, "the sweep ended before it could be killed"
    before = rows(out)
    tree = descendants(driver.pid)  # its Ray: a SIGKILLed driver cannot stop it, the test does
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # frozen first: a raylet would restart its agents
        for pid in tree:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    if at == "uri":  # the resumed driver may be on another machine: nothing staged survives
        shutil.rmtree(tmp_path / "staging")
    done = subprocess.run([sys.executable, "-m", "sweep", "resume", where], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = rows(out)
    ids = [r["trial_id"] for r in after]
    assert sorted(ids) == sorted(f"seed_{s}/{v}" for s in (0, 1) for v in ("full", "noalign", "rescue"))
    assert after[:len(before)] == before  # rows written before the kill are kept as they were
    assert {r["status"] for r in after} <= {"finished", "stopped"}
    assert len({r["trial_id"] for r in after}) == len(after)  # one row per trial, wherever the kill landed
    by = {r["trial_id"]: r for r in after}
    for s in (0, 1):  # each rescue names its noalign and the checkpoint it was forked from
        rescue, noalign = by[f"seed_{s}/rescue"], by[f"seed_{s}/noalign"]
        assert rescue["parent_trial"] == f"seed_{s}/noalign"
        assert load_checkpoint(out / rescue["parent_checkpoint"])["step"] == int(noalign["step"])
    for row in after:  # every trial's curve holds each report once, up to the step of its row
        epochs = [json.loads(line)["epoch"] for line in (out / row["trial_dir"] / "metrics.jsonl").open()]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs[-1] == int(row["epoch"])


@pytest.mark.ray
def test_guard_raises_lambda_of_a_running_full_trial_without_starting_over(tmp_path: Path, local_ray) -> None:
    from sweep.engine import run_sweep

    local_ray(num_cpus=2, num_gpus=0)
    raw = sweep_raw(variants=["full"])
    raw["train"] |= {"guard": True, "guard_value": 100.0, "lam": 1.0, "lam_max": 4.0, "guard_factor": 2.0}
    out = tmp_path / "guard"
    run_sweep(from_dict(raw), out, log=lambda line: None)
    history = [json.loads(line) for line in (out / "seed_0/full/metrics.jsonl").open()]
    assert [(m["epoch"], m["step"], m["lam"]) for m in history] == [(1, 23, 1.0), (2, 46, 2.0), (3, 69, 4.0),
                                                                    (4, 92, 4.0)]
    decisions = [json.loads(line) for line in (out / "scheduler.jsonl").open()]
    assert [(d["action"], d["step"]) for d in decisions] == [("guard", 23), ("guard", 46)]
    (row,) = rows(out)
    assert row["status"] == "finished" and float(row["lam"]) == 4.0


TRAINING_ONLY_MODULES = ("torchvision", "sklearn", "scipy", "torch.utils.tensorboard")


def test_the_driver_imports_nothing_only_training_needs() -> None:
    """The Ray driver, the command line and the data loaders import no torchvision, scikit-learn
    or TensorBoard writer: together about 3.5 s of CPU per process, which only the code that
    reads CIFAR, fits a teacher or a probe, or writes a trial's events needs (a fresh interpreter)."""
    code = ("import sys, sweep.__main__, sweep.engine.driver, sweep.formats, sweep.runner; "
            f"print(' '.join(m for m in {TRAINING_ONLY_MODULES!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [], f"imported at start: {done.stdout.strip()}"


def test_resources_default_to_one_gpu_per_trial_and_pack_fractions(monkeypatch) -> None:
    from sweep.engine import driver

    cfg = from_dict(sweep_raw())
    monkeypatch.setattr(driver.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 8.0})
    assert driver.trial_resources(cfg) == {"cpu": 1.0, "gpu": 0.0}  # train.device cpu: it holds no GPU
    cfg.train.device = "auto"
    assert driver.trial_resources(cfg) == {"cpu": 1.0, "gpu": 1.0}
    assert driver.concurrent_slots(cfg, driver.trial_resources(cfg)) == 8
    cfg.sweep.gpus_per_trial = 0.25
    assert driver.concurrent_slots(cfg, driver.trial_resources(cfg)) == 16  # 32 GPU slots, 16 CPUs
    cfg.sweep.cpus_per_trial = 0.5
    assert driver.concurrent_slots(cfg, driver.trial_resources(cfg)) == 32
    monkeypatch.setattr(driver.ray, "cluster_resources", lambda: {"CPU": 2.0})
    cfg.sweep.gpus_per_trial, cfg.sweep.cpus_per_trial = -1.0, 1.0
    assert driver.trial_resources(cfg) == {"cpu": 1.0, "gpu": 0.0}
    assert driver.concurrent_slots(cfg, driver.trial_resources(cfg)) == 2


def test_live_table_shows_one_line_per_running_trial(capsys) -> None:
    from types import SimpleNamespace

    from sweep.engine.callbacks import LiveTable

    table = LiveTable(every_s=0.0)
    a = SimpleNamespace(trial_id="a", config={"trial": "seed_0/full", "stage": "full", "seed": 0}, last_result={})
    b = SimpleNamespace(trial_id="b", config={"trial": "seed_0/noalign", "stage": "noalign", "seed": 0},
                        last_result={"status": "running"})
    table.on_trial_start(0, [], a)
    table.on_trial_start(0, [], b)
    table.on_trial_result(0, [], a, {"lam": 5.0, "step": 157, "margin": 1.2345, "G_lower": 1.25, "G_upper": 1.3512,
                                     "status": "running"})
    lines = table.render().splitlines()
    assert lines[0].split() == ["trial", "variant", "seed", "lambda", "step", "G_tau", "[G_lower,", "G_upper]", "status"]
    assert lines[1].split() == ["seed_0/full", "full", "0", "5", "157", "+1.2345", "[+1.2500,", "+1.3512]", "RUNNING"]
    assert lines[2].split() == ["seed_0/noalign", "noalign", "0", "-", "0", "-", "[-,", "-]", "RUNNING"]
    table.on_trial_complete(0, [], b)
    assert len(table.render().splitlines()) == 2
    table.on_step_end(0, [])
    assert "seed_0/full" in capsys.readouterr().out


@pytest.mark.ray
def test_a_sweep_at_a_uri_keeps_its_whole_layout_there(tmp_path: Path, local_ray, monkeypatch) -> None:
    """file:// goes through pyarrow exactly as s3:// or gs:// do; the staging folder is elsewhere,
    so every file under the URI's folder got there by an upload."""
    from analysis.__main__ import main as analysis_main
    from sweep.engine import resume_sweep, run_sweep

    monkeypatch.setenv("CERTSWEEP_STAGING", str(tmp_path / "staging"))
    local_ray(num_cpus=2, num_gpus=0)
    root = tmp_path / "bucket" / "sweep"
    # 3 trials per Tune experiment: warm-up, full and noalign in the first, the rescue in the second
    cfg = from_dict(sweep_raw(variants=["full", "noalign"], sweep={"trials_per_segment": 3, "console_every_s": 60}))
    counts = run_sweep(cfg, f"file://{root}", log=lambda line: None)

    assert counts == {"finished": 2, "stopped": 1}
    by = {r["trial_id"]: r for r in rows(root)}
    assert sorted(by) == ["seed_0/full", "seed_0/noalign", "seed_0/rescue"]
    rescue = by["seed_0/rescue"]
    assert rescue["parent_trial"] == "seed_0/noalign" and float(rescue["G_tau"]) > 0
    assert load_checkpoint(root / rescue["parent_checkpoint"])["step"] == int(by["seed_0/noalign"]["step"])
    assert (root / "config.yaml").is_file() and (root / "scheduler.jsonl").is_file() and (root / "tune").is_dir()
    assert (root / "seed_0/teacher/teacher.json").is_file() and (root / "seed_0/warmup/checkpoint.pt").is_file()
    for trial in by:
        epochs = [json.loads(line)["epoch"] for line in (root / trial / "metrics.jsonl").open()]
        assert epochs[-1] == int(by[trial]["epoch"]) and (root / trial / "result.json").is_file()
        assert list((root / trial).glob("events.out.tfevents.*"))
    assert not (tmp_path / "staging").is_relative_to(root)
    assert sorted(p.name for p in (root / "tune").iterdir()) == ["segment-000", "segment-001"]
    events = [json.loads(line) for line in (root / "plan.jsonl").open()]
    assert [e["spec"]["trial"] for e in events if e["event"] == "rescue"] == ["seed_0/rescue"]

    ray.shutdown()
    shutil.rmtree(tmp_path / "staging")  # another machine: only the URI is left
    assert resume_sweep(f"file://{root}", log=lambda line: None) == counts
    assert len(rows(root)) == 3  # nothing ran or was written twice

    shutil.rmtree(tmp_path / "staging")
    assert analysis_main([f"file://{root}", "--no-images", "--no-figures"]) == 0
    assert (root / "analysis").is_dir() and list((root / "analysis").iterdir())


def test_an_unknown_storage_scheme_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from sweep.engine import run_sweep

    with pytest.raises(ConfigError, match="nosuchfs://bucket/sweep: pyarrow cannot open it"):
        run_sweep(from_dict(sweep_raw()), "nosuchfs://bucket/sweep", log=lambda line: None)
    assert not ray.is_initialized()


@pytest.mark.ray
def test_a_crashed_trial_is_retried_from_its_last_checkpoint(tmp_path: Path) -> None:
    raw = sweep_raw(variants=["full"])
    raw["train"]["epochs"] = 40
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "crash"
    driver = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(config), "--out", str(out)], cwd=ROOT,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "seed_0/full/metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.1)
    worker = json.loads((out / "seed_0/full/placement.json").read_text())["pid"]
    os.kill(worker, signal.SIGKILL)  # the trial's worker process dies mid-training
    assert driver.wait(timeout=300) == 0
    history = [json.loads(line) for line in metrics.open()]
    assert [m["epoch"] for m in history] == list(range(1, 41))  # resumed from its checkpoint, no step twice
    assert json.loads((out / "seed_0/full/placement.json").read_text())["pid"] != worker
    (row,) = rows(out)
    assert row["status"] == "finished" and int(row["step"]) == 40 * 23


@pytest.mark.ray
def test_a_trial_that_finds_nothing_published_reads_its_warmup_from_storage(tmp_path: Path, local_ray,
                                                                           digits) -> None:
    """The object store is a cache: with the store's map lost (or no store at all) a trial reads
    the hash-checked warm-up from storage instead of failing, and says so."""
    from sweep.engine import objects
    from sweep.stage import train_warmup
    from sweep.storage import Storage

    local_ray(num_cpus=1, num_gpus=0)
    cfg = from_dict(sweep_raw())
    warm = train_warmup(cfg, digits, 0, tmp_path / "seed_0")
    storage = Storage(tmp_path)
    spec = TrialSpec("seed_0/full", "full", 0, {}, "seed_0/warmup", "seed_0/teacher")
    lines = []
    store = objects.open_store(storage)  # noqa: F841 - the actor lives while the handle does
    name = objects.store_name(storage)
    got = objects.fetch(name, spec, cfg, storage, digits.fingerprint(), lines.append)
    assert got.teacher.content_hash() == warm.teacher.content_hash() and "not published" in lines[-1]
    objects.publish(name, got)
    assert objects.fetch(name, spec, cfg, storage, digits.fingerprint(), lines.append).checkpoint == got.checkpoint
    assert len(lines) == 1  # read from the object store this time
    objects.fetch("certsweep-warmups-no-such-store", spec, cfg, storage, digits.fingerprint(), lines.append)
    assert "the object store failed" in lines[-1]


def test_a_trial_lost_with_its_node_runs_again_instead_of_ending_in_error(tmp_path: Path) -> None:
    """Tune can end a trial whose node died in ERROR whatever max_failures says (a second failed
    call of the dead actor reaches it while it already waits for its retry): the engine hands such a
    trial out again from its checkpoint, up to MAX_NODE_LOSSES times, and writes no row for it."""
    from types import SimpleNamespace

    from sweep.engine.callbacks import MAX_NODE_LOSSES, DecisionLog, TrialEnds
    from sweep.plan import SweepPlan
    from sweep.storage import Storage

    cfg = from_dict(sweep_raw())
    plan = SweepPlan(cfg)
    spec = plan.next_spec()  # seed_0/warmup
    ended = []
    searcher = SimpleNamespace(plan=plan, ended=lambda trial, status: ended.append((trial, status)))
    storage = Storage(tmp_path)
    ends = TrialEnds(cfg, storage, searcher, DecisionLog(storage))
    lost = SimpleNamespace(config=spec.to_dict(), last_result={}, get_error=lambda: "ActorDiedError: The actor died because "
                           "its node has died. Node Id: 1f2e\n\tthe actor's node was terminated unexpectedly")
    for _ in range(MAX_NODE_LOSSES):
        ends.on_trial_error(0, [], lost)
        assert plan.next_spec().trial == spec.trial and not ended  # handed out again, first
    ends.on_trial_error(0, [], lost)  # one loss too many: an error like any other
    assert ended == [("seed_0/warmup", "error")] and rows(tmp_path)[0]["status"] == "error"
    other = SweepPlan(cfg)
    searcher.plan = other
    crashed = SimpleNamespace(config=other.next_spec().replace(trial="seed_0/warmup-b").to_dict(), last_result={},
                              get_error=lambda: "ValueError: boom")
    other.specs["seed_0/warmup-b"] = TrialSpec.from_dict(crashed.config)
    ends.on_trial_error(0, [], crashed)  # not a node loss: it ends in error at once
    assert ended[-1] == ("seed_0/warmup-b", "error") and [r["status"] for r in rows(tmp_path)] == ["error", "error"]
