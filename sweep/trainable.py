"""The Ray Tune engine: the one module that talks to Ray Tune (STYLE.md), so Ray's API churn stays here.

  train_protocol   the function trainable: one stage of one seed at one grid point, wrapping the
                   plain protocol function (sweep/protocol.py); tune.report(metrics, checkpoint) at
                   every report point, resumed from tune.get_checkpoint()
  PlanSearcher     hands the plan's trials to Tune as they become ready (sweep/plan.py); publishes a
                   warm-up's state and teacher ONCE to Ray's object store; plans rescues
  TeacherStore     a named actor that holds the object references, so every downstream trial of a
                   warm-up reads the same object (zero-copy numpy targets) and none refits or reloads;
                   a warm-up is dropped (and its objects freed) when its last trial ends
  ResultsWriter    results.csv, one row per trial, appended as trials end (a resumed sweep never
                   writes a second row for a trial)
  LiveTable        the compact console table, one line per running trial
  run_sweep / resume_sweep
                   the plan runs as consecutive Tune experiments ("segments") of at most
                   sweep.trials_per_segment trials, so Tune's per-trial state in the driver is
                   bounded by a segment, not the sweep

The data sets are put into the object store once with tune.with_parameters. The sweep directory
is a `Storage` (sweep/storage.py): a local or shared-filesystem directory that trials write into
directly, or a cloud URI that every process stages locally and pushes to (each report, each end).
Tune keeps its own checkpoint copies and experiment state in DIR/tune, at the same place.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from models.baselines import BASELINES
from models.vae import build
from sweep.checkpoint import CheckpointError, fingerprint_weights, load_checkpoint
from sweep.config import ConfigError, RunConfig, from_flat, load_config, to_dict, to_flat
from sweep.data import ImageData, load_data
from sweep.events import TrialLog, jsonable
from sweep.plan import FINISHED, SweepPlan, grid_points, grid_problems
from sweep.protocol import (NonFiniteLossError, Trial, cached_stage, cached_warmup, finish_warmup, new_trial,
                            resolve_device, restore, run_trial)
from sweep.runner import append_row, make_row, prepare_out_dir
from sweep.scheduler import CertificateScheduler
from sweep.storage import Storage
from teachers.artifact import TeacherArtifact, TeacherCacheError, load_teacher

TUNE_DIR = "tune"  # Tune's experiments (one per segment) inside the sweep directory
DECISIONS_FILE = "scheduler.jsonl"
PLAN_FILE = "plan.json"  # the plan's state after the last completed segment
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
Log = Callable[[str], None]


# --- data and teachers in the object store --------------------------------------------------------


def data_key(cfg: RunConfig) -> str:
    """Trials whose data sections agree share one copy of the data set."""
    return json.dumps(to_dict(cfg)["data"], sort_keys=True)


def data_payload(data: ImageData) -> dict[str, Any]:
    """Numpy arrays (zero-copy from the object store) and the fingerprint, computed once here."""
    arrays = {k: None if getattr(data, k) is None else getattr(data, k).numpy()
              for k in ("x_train", "y_train", "x_eval", "y_eval")}
    return arrays | {"name": data.name, "n_classes": data.n_classes, "fingerprint": data.fingerprint()}


def data_from(payload: dict[str, Any], device: torch.device) -> ImageData:
    """ImageData over the object store's read-only arrays (training never writes to them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: None if payload[k] is None else torch.from_numpy(payload[k])
                   for k in ("x_train", "y_train", "x_eval", "y_eval")}
    data = ImageData(payload["name"], n_classes=payload["n_classes"], **tensors)
    object.__setattr__(data, "_fingerprint", payload["fingerprint"])
    return data.to(device) if device.type != "cpu" else data


@ray.remote(num_cpus=0)
class TeacherStore:
    """Warm-up id -> [object reference] of its published state and teacher."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef] = {}

    def put(self, key: str, boxed: list[ray.ObjectRef]) -> None:
        self._refs[key] = boxed[0]  # boxed, so that Ray hands over the reference, not the value

    def get(self, key: str) -> list[ray.ObjectRef | None]:
        return [self._refs.get(key)]

    def keys(self) -> list[str]:
        return list(self._refs)

    def drop(self, key: str) -> None:
        """Forget a warm-up whose trials have all ended (its objects are freed with the reference)."""
        self._refs.pop(key, None)


def open_store(storage: Storage) -> Any:
    """Create the sweep's TeacherStore; the caller keeps the handle (the actor lives as long as it)."""
    return TeacherStore.options(name=store_name(storage), get_if_exists=True).remote()


def store_name(storage: Storage) -> str:
    return "certsweep-teachers-" + hashlib.sha256(storage.uri.encode()).hexdigest()[:12]


def fetch_warm(store: str, warm_id: str) -> dict[str, Any]:
    """The published {state, teacher, path} of a warm-up, from the object store."""
    (ref,) = ray.get(ray.get_actor(store).get.remote(warm_id))
    if ref is None:
        raise RuntimeError(f"warm-up {warm_id} has not been published to the object store")
    return ray.get(ref)


def publish(store: str, warm_id: str, state: dict[str, Any], teacher: TeacherArtifact, path: str) -> None:
    """Put a warm-up's state and teacher into the object store once, under its id."""
    ref = ray.put({"state": state, "teacher": teacher, "path": path})
    ray.get(ray.get_actor(store).put.remote(warm_id, [ref]))


def read_warm(storage: Storage, spec: dict[str, Any], cfg: RunConfig,
              fingerprint: str) -> tuple[dict, TeacherArtifact, str]:
    """A finished warm-up's checkpoint and teacher from storage, every hash check applied."""
    if cfg.teacher.target == "fixed" and cfg.teacher.cache:
        state, teacher = cached_stage(cfg, fingerprint, spec["seed"])
        return state, teacher, str(cached_warmup(cfg, spec["seed"]))
    rel = f"{spec['warm']}/checkpoint.pt"
    state = load_checkpoint(storage.pull(rel))
    teacher = load_teacher(storage.pull(spec["teacher"]), fingerprint, fingerprint_weights(state["model"]))
    return state, teacher, rel


# --- the trainable --------------------------------------------------------------------------------


def placement(device: torch.device, threads: int) -> dict[str, Any]:
    """Where this trial runs: what the GPU-placement check and a user debugging a cluster read."""
    return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": str(device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "threads": threads,
            "started": time.time()}


def build_trial(spec: dict[str, Any], cfg: RunConfig, data: ImageData, storage: Storage, store: str) -> Trial:
    """The protocol trial of a spec: a warm-up from scratch, a downstream stage from the published
    warm-up, a rescue from its parent's pinned checkpoint."""
    stage, seed = spec["stage"], spec["seed"]
    if stage == "warmup":
        return new_trial(cfg, "warmup", seed, data, None)
    warm = fetch_warm(store, spec["warm"])
    init, parent = warm["state"], {"trial": spec["warm"], "checkpoint": warm["path"]}
    if stage in BASELINES:  # from scratch, against the same teacher
        init, parent = None, None
    elif stage == "rescue":
        parent = spec["parent"]
        init = load_checkpoint(storage.pull(parent["checkpoint"]))
    return new_trial(cfg, stage, seed, data, warm["teacher"], init, parent)


def resume_from_tune(trial: Trial, spec: dict[str, Any], trial_dir: Path) -> bool:
    """Restore a trial Tune restarts (a retry, a resumed sweep, a guarded restart) from its own
    latest checkpoint.pt: Tune's checkpoint only marks that there is one (see TuneReporter)."""
    if tune.get_checkpoint() is None:
        return False
    restore(trial, load_checkpoint(trial_dir / "checkpoint.pt"))
    if "lam" in spec and trial.stage == "full":  # the scheduler's guard raised lambda
        trial.lam = max(trial.lam, float(spec["lam"]))
    return True


TUNE_KEYS = ("margin", "G_tau", "G_fix", "lam", "step", "epoch")
"""What Tune sees of a report: the scheduler's and the live table's numbers. The full report lives
in the trial's metrics.jsonl (results.csv is built from it); Tune keeps running statistics of every
numeric key of every trial in the driver, so fewer keys keep the driver's memory small."""


class TuneReporter:
    """The protocol's reporter: metrics.jsonl and TensorBoard, then tune.report with a marker
    checkpoint.

    The trial's real checkpoint is its checkpoint.pt in the sweep's storage, written (and pushed)
    before each report. Tune gets a few-byte marker (the step) per report and keeps them all: Tune
    deletes old checkpoints at once but saves its experiment state later, so after a killed driver
    the state it restores can name a checkpoint its retention already deleted, which then fails the
    trial. Markers are never deleted, and a restarted trial resumes from the latest checkpoint.pt,
    which is never older than the report Tune remembers."""

    def __init__(self, sink: TrialLog, static: dict[str, Any], last_epoch: int | None,
                 push: Callable[[], None]) -> None:
        self.sink, self.static, self.last_epoch, self.reported, self.push = sink, static, last_epoch, 0, push

    def __call__(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        self.sink.report(metrics, checkpoint)
        self.push()  # metrics, events and checkpoint are in storage before the scheduler sees the report
        status = "finished" if metrics.get("epoch") == self.last_epoch else "running"
        with tempfile.TemporaryDirectory(prefix="certsweep-ckpt-") as folder:
            (Path(folder) / "step.json").write_text(json.dumps({"step": int(metrics["step"])}))
            tune.report(self.static | compact(metrics) | {"status": status},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        self.reported += 1

    def final(self, metrics: dict[str, Any], status: str, reason: str = "") -> None:
        """A last report without a checkpoint or margin (the scheduler has nothing to decide)."""
        keep = {k: v for k, v in compact(metrics).items() if k != "margin"}
        tune.report(self.static | keep | {"status": status, "reason": reason})


def compact(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in TUNE_KEYS if metrics.get(k) is not None}


def train_protocol(config: dict[str, Any], base: dict[str, Any], out: str, datasets: dict[str, Any],
                   store: str) -> None:
    """Tune function trainable: one spec of the plan (sweep/plan.py), trained by the protocol."""
    spec, storage = config, Storage(out)
    cfg = from_flat(base | spec["overrides"])
    threads = cfg.train.threads or max(1, int(cfg.sweep.cpus_per_trial))
    torch.set_num_threads(threads)
    device = resolve_device(cfg.train.device)
    trial_dir = storage.path(spec["trial"])
    if storage.remote:  # stage what an earlier attempt (on any node) left at the URI, nothing else
        shutil.rmtree(trial_dir, ignore_errors=True)
        storage.pull(spec["trial"])
    if (trial_dir / "result.json").exists():  # ended before the driver was killed: report, not retrain
        ended = json.loads((trial_dir / "result.json").read_text())
        tune.report({k: v for k, v in compact(ended).items() if k != "margin"} | {
            "trial": spec["trial"], "stage": spec["stage"], "status": ended.get("status", "finished"),
            "reason": ended.get("reason", "")})
        return
    data = data_from(datasets[data_key(cfg)], device)
    trial = build_trial(spec, cfg, data, storage, store)
    restored = resume_from_tune(trial, spec, trial_dir)
    teacher, parent = trial.teacher, trial.parent or {}
    row = {"teacher_k": teacher.k if teacher else 0, "teacher_feasible": bool(teacher and teacher.feasible),
           "teacher_hash": trial.teacher_hash, "parent_trial": parent.get("trial", ""),
           "parent_checkpoint": parent.get("checkpoint", "")}  # results.csv columns the metrics lack
    info = {"variant": trial.stage, "seed": trial.seed, "parent": trial.parent, "trial": spec["trial"],
            "teacher_dir": spec["teacher"], "overrides": spec["overrides"], "placement": placement(device, threads),
            "row": row}
    # an earlier attempt (a crash, a killed driver) may have logged past the checkpoint this one
    # starts from, or, with no checkpoint, from the start: its later events and lines are dropped
    again = restored or (trial_dir / "metrics.jsonl").exists()
    sink = TrialLog(trial_dir, to_dict(cfg) | info, purge_step=trial.step + 1 if again else None)
    if again:  # metrics.jsonl holds exactly the history this attempt starts from
        (trial_dir / "metrics.jsonl").write_text("".join(json.dumps({k: jsonable(v) for k, v in m.items()}) + "\n"
                                                         for m in trial.history))
    static = {"trial": spec["trial"], "stage": trial.stage, "seed": trial.seed}
    reporter = TuneReporter(sink, static, None if trial.stage == "warmup" else trial.n_epochs,
                            push=lambda: storage.push(spec["trial"]))
    try:
        metrics = run_trial(trial, trial_dir, reporter, guard=False)
        if trial.stage == "warmup":
            finish_warmup(trial, trial_dir, storage.path(spec["teacher"]))
            storage.push(spec["teacher"])
    except NonFiniteLossError as err:
        sink.close((trial.history[-1] if trial.history else {}) | {"status": "error", "reason": str(err)})
        storage.push(spec["trial"])
        reporter.final(trial.history[-1] if trial.history else {"step": trial.step}, "error", str(err))
        return
    sink.close(metrics | {"status": "finished"})
    storage.push(spec["trial"])  # result.json (and a warm-up's checkpoint) before Tune hears of the end
    if trial.stage == "warmup" or not reporter.reported:
        reporter.final(metrics or {"step": trial.step}, "finished")


# --- the searcher: the plan's trials, teachers published once, rescues ----------------------------


def pin_checkpoint(storage: Storage, trial_id: str) -> tuple[str, int]:
    """Keep a trial's latest checkpoint under a name nothing overwrites or deletes (Storage.copy:
    a hard link in a directory, a copy at a URI); a fork starts from this file whatever Tune's
    checkpoint retention does later.

    Returns:
        The pinned file relative to the sweep directory, and its step.
    """
    src = f"{trial_id}/checkpoint.pt"
    step = int(load_checkpoint(storage.pull(src))["step"])
    rel = f"{trial_id}/checkpoint-step{step}.pt"
    if not storage.exists(rel):
        storage.copy(src, rel)
    return rel, step


class PlanSearcher(Searcher):
    """Tune's source of trials: the plan's specs as their warm-ups become ready.

    A finished warm-up's checkpoint and teacher are read back from disk (hash-checked) and put
    into the object store once; a noalign trial that ends (or is stopped as collapsed: `fork`)
    gets its rescue, from a pinned copy of its latest checkpoint.
    """

    def __init__(self, cfg: RunConfig, storage: Storage, store: str, fingerprints: dict[str, str],
                 state: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.base, self.storage, self.store, self.fingerprints = to_flat(cfg), storage, store, fingerprints
        self.cached = cfg.teacher.target == "fixed" and bool(cfg.teacher.cache)
        self.plan = SweepPlan(cfg, warm_cached=self.cached)
        if state:
            self.plan.load_state(state)
        self.tune_ids: dict[str, str] = {}  # Tune's trial id -> ours, while the trial runs
        self.budget, self.started = cfg.sweep.trials_per_segment, 0  # trials this segment may / did start
        _SEARCHERS[storage.uri] = self

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # trials come from the plan; there is no search space

    def publish_ready(self) -> None:
        """Publish every ready warm-up that still has trials to run (or to restart) and is not in
        the object store yet: at the start with a cache, at a new segment, after a resume (a new Ray)."""
        waiting = {s["warm"] for s in self.plan.specs if s["trial"] not in self.plan.ended}
        published = set(ray.get(ray.get_actor(self.store).keys.remote()))
        for spec in self.plan.warmups():
            if (self.cached or spec["warm"] in self.plan.ready) and spec["warm"] in waiting \
                    and spec["warm"] not in published:
                self.publish(spec)

    def publish(self, spec: dict[str, Any]) -> None:
        cfg = from_flat(self.base | spec["overrides"])
        state, teacher, path = read_warm(self.storage, spec, cfg, self.fingerprints[data_key(cfg)])
        publish(self.store, spec["warm"], state, teacher, path)
        self.plan.mark_ready(spec["warm"])

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.budget and self.started >= self.budget:  # this segment is full: it ends with its trials
            return None if self.tune_ids else Searcher.FINISHED
        spec = self.plan.next_spec()
        if spec == FINISHED:
            return Searcher.FINISHED
        if spec is not None:
            self.tune_ids[trial_id] = spec["trial"]
            self.started += 1
        return spec

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ours = self.tune_ids.pop(trial_id, None)
        spec = self.plan.spec(ours) if ours else None
        if spec is None:
            return
        status = "error" if error else str((result or {}).get("status", "stopped"))
        status = "stopped" if status == "running" else status
        if spec["stage"] == "warmup" and status == "finished":
            try:
                self.publish(spec)
            except (TeacherCacheError, CheckpointError, OSError) as err:  # never kill Tune's loop
                print(f"error: warm-up {spec['trial']} cannot be published ({err})", flush=True)
                status = "error"
        if spec["stage"] == "noalign" and status != "error" and self.plan.wants_rescue:
            self.fork(spec, result or {}, "endpoint" if status == "finished" else status)
        self.plan.end(spec["trial"], status)
        for dropped in self.plan.skip_blocked():
            print(f"skipped {dropped}: its warm-up {spec['trial']} ended as {status}", flush=True)
        if self.plan.warm_done(spec["warm"]):
            ray.get_actor(self.store).drop.remote(spec["warm"])  # nothing will read it again

    def fork(self, spec: dict[str, Any], result: dict[str, Any], reason: str) -> None:
        """Plan the rescue of noalign trial `spec` from its latest checkpoint (the scheduler's fork)."""
        if self.plan.spec(self.plan.rescue_id(spec["trial"])) is not None:
            return
        try:
            rel, step = pin_checkpoint(self.storage, spec["trial"])
        except (CheckpointError, OSError) as err:  # never kill Tune's loop
            print(f"error: no rescue for {spec['trial']}: its checkpoint cannot be pinned ({err})", flush=True)
            return
        self.plan.add_rescue(spec["trial"], rel, step, reason)
        print(f"fork {self.plan.rescue_id(spec['trial'])} from {rel} (step {step}, {reason})", flush=True)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"plan": self.plan.state(), "tune_ids": self.tune_ids,
                                                     "started": self.started}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.plan.load_state(state["plan"])
        self.tune_ids, self.started = state["tune_ids"], state.get("started", 0)
        _SEARCHERS[self.storage.uri] = self  # the restored segment's searcher, for the segments after it
        self.publish_ready()  # a resumed sweep runs on a new Ray: its object store starts empty


_SEARCHERS: dict[str, PlanSearcher] = {}
"""The searcher of each sweep's current segment (by storage): where the plan's state is read when
a segment ends; a restored segment's searcher is Tune's unpickled copy, so it registers itself."""


# --- callbacks: results.csv, the decision log, the live table -------------------------------------


class DecisionLog:
    """Appends each scheduler decision to DIR/scheduler.jsonl and prints it."""

    def __init__(self, storage: Storage) -> None:
        self.path = str(storage.path(DECISIONS_FILE))  # pushed to a URI by ResultsWriter.sync

    def __call__(self, decision: dict[str, Any]) -> None:
        decision = {"time": time.strftime("%Y-%m-%dT%H:%M:%S")} | decision
        with open(self.path, "a") as f:
            f.write(json.dumps(decision) + "\n")
        print(f"scheduler: {decision['action']} {decision['trial']} at step {decision['step']} "
              f"(margin {decision['margin']:+.4f}): {decision['reason']}", flush=True)

    def reason(self, trial_id: str) -> str:
        """The last stop reason logged for a trial (read back: nothing per trial is kept in memory)."""
        if not os.path.exists(self.path):
            return ""
        found = ""
        with open(self.path) as f:
            for line in f:
                d = json.loads(line)
                if d["trial"] == trial_id and d["action"] in ("stop", "fork"):
                    found = d["reason"]
        return found


class ResultsWriter(Callback):
    """One results.csv row per trial as it ends (warm-ups only when they fail: they have no
    certificate); a trial already in results.csv (a resumed sweep) is never written twice.

    With a URI storage, results.csv and scheduler.jsonl are uploaded every `sync_every_s` and when
    the sweep ends (uploading them at every row would cost the square of the sweep's size). A
    driver killed in between loses at most those seconds of rows, and a resumed sweep writes them
    again: on its first step every trial that Tune has as ended but results.csv lacks gets its row.
    """

    def __init__(self, cfg: RunConfig, storage: Storage) -> None:
        self.base, self.storage, self.out = to_flat(cfg), storage, storage.local
        self.decisions = DecisionLog(storage)
        self.sync_every_s, self._synced, self._reconciled = cfg.sweep.sync_every_s, time.monotonic(), False
        self._written: set[str] | None = None  # trial ids in results.csv, read from it once

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            ended = [t for t in trials if t.status in ("TERMINATED", "ERROR") and "trial" in t.config]
            if ended:
                written = self.written()
                for t in ended:
                    if t.config["trial"] not in written:
                        self.write(t.config, dict(t.last_result or {}) | ({"status": "error"} if t.status == "ERROR" else {}))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.storage.remote and time.monotonic() - self._synced >= self.sync_every_s:
            self.sync()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sync()

    def sync(self) -> None:
        """Upload results.csv and the decision log (a no-op for a directory, or when unchanged)."""
        self._synced = time.monotonic()
        for name in ("results.csv", DECISIONS_FILE):
            if self.storage.path(name).exists():
                self.storage.push(name)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.write(trial.config, dict(trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.get_error()
        reason = str(error).strip().splitlines()[-1] if error else "crashed"
        self.write(trial.config, dict(trial.last_result or {}) | {"status": "error", "reason": reason[:500]})

    def written(self) -> set[str]:
        """Trial ids with a row: read from results.csv once (a resumed sweep has rows), then kept."""
        if self._written is None:
            path = self.out / "results.csv"
            self._written = set()
            if path.exists():
                with open(path, newline="") as f:
                    self._written = {row["trial_id"] for row in csv.DictReader(f)}
        return self._written

    def write(self, spec: dict[str, Any], result: dict[str, Any]) -> None:
        """The row of an ended trial: status and reason from Tune's last result, the metrics from
        the last line of its metrics.jsonl, teacher and lineage from its config.json."""
        if "trial" not in spec or spec["trial"] in self.written():
            return
        status = str(result.get("status", "stopped"))
        status = "stopped" if status == "running" else status
        reason = result.get("reason") or (self.decisions.reason(spec["trial"]) if status == "stopped" else "")
        if spec["stage"] == "warmup" and status != "error":
            return
        trial_dir = self.out / spec["trial"]
        for name in ("metrics.jsonl", "config.json", "result.json"):  # the trial's own files, from a URI
            self.storage.pull(f"{spec['trial']}/{name}")
        metrics = last_line(trial_dir / "metrics.jsonl")
        info = json.loads((trial_dir / "config.json").read_text()).get("row", {}) \
            if (trial_dir / "config.json").exists() else {}
        cfg = from_flat(self.base | spec["overrides"])
        row = make_row(cfg, {k: math.nan if v is None else v for k, v in metrics.items()}, seed=spec["seed"],
                       variant=spec["stage"], trial_id=spec["trial"], trial_dir=spec["trial"], **info,
                       status=status, reason=reason)
        append_row(self.out / "results.csv", row)
        self.written().add(spec["trial"])
        ended = trial_dir / "result.json"
        if status != "finished" and not ended.exists():  # a stopped trial never closed its own log
            trial_dir.mkdir(parents=True, exist_ok=True)
            ended.write_text(json.dumps({k: jsonable(v) for k, v in metrics.items()} | {"status": status, "reason": reason},
                                        indent=1, sort_keys=True))
            self.storage.push(f"{spec['trial']}/result.json")


class ShedEnded(Callback):
    """Cuts an ended trial's Tune bookkeeping down to what a resume reads, so the driver's memory
    does not grow with the number of trials that have ended.

    Tune keeps a Trial object for every trial of the experiment, and with it running statistics
    (max / min / avg / last-5 / last-10) of every numeric key it was sent, the last result (config
    included) and a JSON copy of all that. Once the trial's row is in results.csv none of it is
    read again: a resumed sweep needs only the trial's status and its spec (its config). Trials are
    shed on the step after they end, when Tune has finished with their last result.
    """

    KEEP = ("trial", "stage", "seed", "status", "reason", "step", "epoch", "done", "trial_id", "training_iteration")

    def __init__(self) -> None:
        self._ended: list[Any] = []  # trials that ended since the last step (bounded by the step rate)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.append(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.append(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        waiting = []
        for trial in self._ended:
            if trial.is_finished() and not trial.is_saving:
                self.shed(trial)
            else:
                waiting.append(trial)
        self._ended = waiting

    @classmethod
    def shed(cls, trial: Any) -> None:
        meta = trial.run_metadata
        meta.metric_analysis, meta.metric_n_steps = {}, {}
        meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if k in cls.KEEP}
        latest = meta.checkpoint_manager.latest_checkpoint_result if meta.checkpoint_manager else None
        if latest is not None:  # the kept checkpoints hold no metrics (quiet_tune); the latest one did
            latest.metrics = {}


def last_line(path: Path) -> dict[str, Any]:
    """The last report of a metrics.jsonl ({} when there is none)."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


class LiveTable(Callback):
    """Every `every_s` seconds, one line per running trial: trial, variant, seed, lambda, step,
    margin, status (starts and ends are printed as they happen)."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self._rows, self._last = every_s, {}, 0.0
        self._t0 = time.monotonic()

    def stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = trial.config
        self._rows[trial.trial_id] = {"trial": spec.get("trial", trial.trial_id), "variant": spec.get("stage", ""),
                                      "seed": spec.get("seed", ""), "lam": "", "step": 0, "margin": math.nan,
                                      "status": "RUNNING"}
        print(f"{self.stamp()} started {self._rows[trial.trial_id]['trial']}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._rows.get(trial.trial_id)
        if row is not None:
            row.update(lam=result.get("lam", ""), step=result.get("step", 0),
                       margin=result.get("margin", math.nan), status=str(result.get("status", "running")).upper())

    def _end(self, trial: Any, status: str) -> None:
        row = self._rows.pop(trial.trial_id, None)
        if row is not None:
            margin = f"{row['margin']:+.4f}" if math.isfinite(row["margin"]) else "-"
            print(f"{self.stamp()} ended   {row['trial']:<28} {status:<9} step {row['step']:>6} G_tau {margin}",
                  flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, str((trial.last_result or {}).get("status", "stopped")).replace("running", "stopped"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "error")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self._rows and now - self._last >= self.every_s:
            self._last = now
            print(self.render(), flush=True)

    def render(self) -> str:
        lines = [f"{'trial':<28} {'variant':<9} {'seed':>4} {'lambda':>7} {'step':>6} {'G_tau':>8}  status"]
        for r in self._rows.values():
            lam = f"{r['lam']:g}" if isinstance(r["lam"], (int, float)) else "-"
            margin = f"{r['margin']:+.4f}" if isinstance(r["margin"], float) and math.isfinite(r["margin"]) else "-"
            lines.append(f"{r['trial']:<28} {r['variant']:<9} {r['seed']:>4} {lam:>7} {r['step']:>6} {margin:>8}  "
                         f"{r['status']}")
        return "\n".join(lines)


# --- the engine: checks, Ray, the Tuner -----------------------------------------------------------


def check_sweep(cfg: RunConfig) -> dict[str, ImageData]:
    """Everything that can be checked before a trial starts: the grid, every grid point's config,
    the data sets (loaded once each), that each backbone takes its images, the teacher caches.

    Returns:
        The data sets by `data_key`.
    """
    problems = grid_problems(cfg)
    if problems:
        raise ConfigError("sweep.grid has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    flat, datasets = to_flat(cfg), {}
    for point in grid_points(cfg):
        point_cfg = from_flat(flat | point)
        key = data_key(point_cfg)
        if key not in datasets:
            datasets[key] = load_data(point_cfg.data)
        build(point_cfg.model, datasets[key].shape, max(point_cfg.teacher.ks))
    if cfg.teacher.target == "fixed" and cfg.teacher.cache:
        for spec in SweepPlan(cfg, warm_cached=True).warmups():
            point_cfg = from_flat(flat | spec["overrides"])
            cached_stage(point_cfg, datasets[data_key(point_cfg)].fingerprint(), spec["seed"])
    return datasets


def start_ray(address: str | None) -> None:
    """Connect to `address` (a running cluster), else start a local Ray bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace="certsweep", log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray
    ray.init(namespace="certsweep", include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1")


def trial_resources(cfg: RunConfig) -> dict[str, float]:
    """CPUs and GPUs of one trial; gpus_per_trial -1 means one GPU each when the cluster has GPUs."""
    gpus = cfg.sweep.gpus_per_trial
    if gpus == -1:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return {"cpu": cfg.sweep.cpus_per_trial, "gpu": gpus}


def concurrent_slots(cfg: RunConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once. Tune starts at most this many actors together (a custom
    searcher otherwise gets 1, so worker start-up would be serialised)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 1) // resources["cpu"])
    if resources["gpu"]:
        slots = min(slots, int(total.get("GPU", 0) // resources["gpu"]))
    return max(1, min(slots, cfg.sweep.max_concurrent or slots))


def trial_dirname(trial: Any) -> str:
    """Tune's own folder of a trial (under DIR/tune), named after ours."""
    return f"{trial.config['trial'].replace('/', '_')}_{trial.trial_id}"


def trainable(cfg: RunConfig, storage: Storage, datasets: dict[str, ImageData]) -> Any:
    """train_protocol with the data in the object store (once) and its resources."""
    payloads = {k: data_payload(d) for k, d in datasets.items()}
    fn = tune.with_parameters(train_protocol, base=to_flat(cfg), out=storage.uri, datasets=payloads,
                              store=store_name(storage))
    return tune.with_resources(fn, trial_resources(cfg))


def allow_concurrent_starts(cfg: RunConfig) -> None:
    """Let Tune start as many trial actors at once as fit (a value the user exported wins)."""
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(concurrent_slots(cfg, trial_resources(cfg)))


def segment_name(index: int) -> str:
    return f"segment-{index:03d}"


def make_tuner(cfg: RunConfig, storage: Storage, fn: Any, searcher: PlanSearcher, index: int) -> tune.Tuner:
    """The Tune experiment of segment `index`: the searcher's next trials, up to trials_per_segment."""
    scheduler = CertificateScheduler(cfg.scheduler, cfg.train, searcher.fork, DecisionLog(storage))
    budget = searcher.plan.max_trials()
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                  num_samples=min(budget, searcher.budget or budget),
                                  reuse_actors=True, max_concurrent_trials=cfg.sweep.max_concurrent or None,
                                  trial_dirname_creator=trial_dirname)
    run_config = tune.RunConfig(
        name=segment_name(index), storage_path=f"{storage.uri}/{TUNE_DIR}", verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # markers only: see TuneReporter
        failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
        callbacks=[ResultsWriter(cfg, storage), LiveTable(cfg.sweep.console_every_s), ShedEnded()])
    return tune.Tuner(fn, tune_config=tune_config, run_config=run_config)


def save_plan(storage: Storage, index: int, state: dict[str, Any]) -> None:
    """Record that segment `index` completed, with the plan's state after it."""
    path = storage.path(PLAN_FILE)
    tmp = path.with_name(PLAN_FILE + ".part")
    tmp.write_text(json.dumps({"segment": index, "plan": state}))
    os.replace(tmp, path)
    storage.push(PLAN_FILE)


def run_segments(cfg: RunConfig, storage: Storage, datasets: dict[str, ImageData], fn: Any, index: int,
                 state: dict[str, Any] | None, log: Log) -> None:
    """Segments `index`, `index` + 1, ... until the plan is done: each one Tune experiment of at
    most trials_per_segment trials, which the driver drops (with all of Tune's per-trial state)
    when it ends. `fn` is the trainable, made once so the data go into the object store once."""
    fingerprints = {k: d.fingerprint() for k, d in datasets.items()}
    while True:
        searcher = PlanSearcher(cfg, storage, store_name(storage), fingerprints, state)
        _SEARCHERS.pop(storage.uri)  # this loop holds its own searcher
        if searcher.plan.finished():
            return
        searcher.publish_ready()
        if index:
            log(f"segment {index}: {len(searcher.plan.ended)} of {len(searcher.plan.specs)} trials ended so far")
        make_tuner(cfg, storage, fn, searcher, index).fit()
        if not searcher.started:
            raise RuntimeError(f"segment {index} started no trial but the plan is not done: {searcher.plan.state()}")
        state = searcher.plan.state()
        save_plan(storage, index, state)
        index += 1


def quiet_tune() -> None:
    """Our results and table replace Tune's own loggers and progress output."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")  # the scheduler decides on every report
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")  # not a copy of each report per checkpoint
    # the ResultGrid looks for the JSON / CSV loggers' files, which results.csv replaces
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def summary(storage: Storage) -> dict[str, int]:
    """Trials per status in results.csv."""
    counts: dict[str, int] = {}
    path = storage.path("results.csv")
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def run_sweep(cfg: RunConfig, out: str | Path, address: str | None = None, log: Log = print) -> dict[str, int]:
    """Run the sweep of `cfg` through Ray Tune into `out`: a new directory, or a cloud URI with
    nothing at it yet (s3://bucket/sweep, gs://..., any pyarrow filesystem).

    Returns:
        Trials per status (finished / stopped / error) in results.csv.
    """
    storage = Storage(out)
    datasets = check_sweep(cfg)
    if not storage.is_empty():
        raise FileExistsError(f"output {storage} already exists and is not empty: "
                              "choose another --out (nothing there was touched)")
    storage.reset_staging()
    prepare_out_dir(storage.local, cfg)
    storage.push("config.yaml")
    quiet_tune()
    start_ray(address)
    store = open_store(storage)  # noqa: F841 - held until the sweep ends
    plan = SweepPlan(cfg, warm_cached=cfg.teacher.target == "fixed" and bool(cfg.teacher.cache))
    staged = f" (staged in {storage.local})" if storage.remote else ""
    log(f"{cfg.name}: {len(plan.specs)} trials planned (seeds {cfg.seeds}, variants {cfg.variants}, "
        f"{len(grid_points(cfg))} grid point(s)); {trial_resources(cfg)} per trial on "
        f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs; "
        f"out {storage}{staged}")
    allow_concurrent_starts(cfg)
    run_segments(cfg, storage, datasets, trainable(cfg, storage, datasets), 0, None, log)
    return summary(storage)


def resume_sweep(out: str | Path, address: str | None = None, log: Log = print) -> dict[str, int]:
    """Carry an interrupted sweep (driver killed) to completion: finished trials keep their rows,
    running ones continue from their last checkpoint, the rest start. `out` is the sweep's
    directory or URI."""
    storage = Storage(out)
    if not storage.exists(TUNE_DIR) or not storage.exists("config.yaml"):
        raise ConfigError(f"{storage} is not a Ray sweep directory (no config.yaml and {TUNE_DIR}/ in it)")
    storage.reset_staging()
    for name in ("config.yaml", "results.csv", DECISIONS_FILE, PLAN_FILE):
        storage.pull(name)
    cfg = load_config(storage.path("config.yaml"))
    datasets = check_sweep(cfg)
    saved = json.loads(storage.path(PLAN_FILE).read_text()) if storage.path(PLAN_FILE).exists() else None
    done = saved["segment"] if saved else -1  # the last segment that completed
    state = saved["plan"] if saved else None
    started = sorted(int(name.split("-")[1]) for name in storage.children(TUNE_DIR) if name.startswith("segment-"))
    quiet_tune()
    start_ray(address)
    store = open_store(storage)  # noqa: F841 - held until the sweep ends
    log(f"{cfg.name}: resuming {storage} ({sum(summary(storage).values())} trials already in results.csv)")
    allow_concurrent_starts(cfg)
    fn, index = trainable(cfg, storage, datasets), done + 1
    if started and started[-1] > done:  # the segment the driver was killed in
        index = started[-1] + 1
        rel = f"{TUNE_DIR}/{segment_name(started[-1])}"
        saved_by_tune = storage.children(rel)
        # Tuner.can_restore only looks for tuner.pkl, written before Tune saves any state
        if any(n.startswith("experiment_state-") for n in saved_by_tune) \
                and any(n.startswith("searcher-state-") for n in saved_by_tune):
            path = f"{storage.uri}/{rel}"
            _SEARCHERS.pop(storage.uri, None)
            tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False).fit()
            state = _SEARCHERS.pop(storage.uri).plan.state()
            save_plan(storage, started[-1], state)
        # else: killed before Tune saved anything of it: its trials start again in a new segment,
        # where any that had already ended report their result.json instead of training again
    run_segments(cfg, storage, datasets, fn, index, state, log)
    return summary(storage)
