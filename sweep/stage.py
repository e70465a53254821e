"""One spec of the plan (sweep/plan.py) run to its end, the same way by both engines (imports no Ray).

  where it starts   `stage_start`: a warm-up from scratch, full / noalign / prefit from the
                    warm-up's state, a rescue or a fork (sweep/grow.py) from its parent's pinned
                    checkpoint, a baseline from scratch; the lineage it records says which
  the warm-up       a `Warmup` (state, teacher, checkpoint path) comes from `fit_teacher` right after
                    a warm-up trial trained, or from disk, hash-checked: `read_warmup` reads this
                    sweep's warm-up or, for the fixed-target protocol with `teacher.cache`, the
                    earlier run's (its seed_<s>/warmup/checkpoint.pt and seed_<s>/teacher/)
  its folder        DIR/<trial>/: config.json (the resolved config, settings only), trial.json (what
                    the trial is and where it comes from: id, variant, seed, warm-up, teacher,
                    parent), placement.json (where it ran), metrics.jsonl, TensorBoard events,
                    checkpoint.pt (+ manifest, + checkpoint-prev.pt), result.json at its end
  a restart         a trial that finds its own checkpoint (an earlier attempt: a crashed worker, a
                    lost node, a killed driver) continues from it; one that finds result.json has
                    ended already and is not trained again

The sequential runner calls `run_stage` in a loop; the Ray trainable calls it once per Tune trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from models.vae import CertVAE
from sweep.checkpoint import CheckpointError, fingerprint_weights, load_checkpoint, load_latest, save_checkpoint
from sweep.config import RunConfig, to_dict
from sweep.data import ImageData
from sweep.devices import peak_memory
from sweep.files import write_atomic
from sweep.metrics import encode_all
from sweep.protocol import Ends, NonFiniteLossError, Trial, new_trial, restore, run_trial
from sweep.schema import (CHECKPOINT_FILE, METRICS_FILE, PLACEMENT_FILE, RESULT_FILE, TEACHER_DIR, TRIAL_FILE,
                          cache_seed_dir, point_label)
from sweep.spec import TrialSpec
from sweep.storage import Storage
from sweep.trial_log import TrialLog, jsonable
from sweep.variants import BASELINES, WARMUP
from teachers.artifact import TeacherArtifact, load_teacher, save_teacher
from teachers.search import search_teacher

Announce = Callable[[Trial, dict[str, Any]], None]
"""Called after each report point is logged (and pushed to the storage): the console line of the
sequential runner, tune.report of the Ray trainable."""


@dataclass
class Warmup:
    """A finished warm-up: what every downstream trial of it starts from."""

    trial: str
    """Its id, e.g. seed_0/warmup."""
    state: dict[str, Any]
    teacher: TeacherArtifact
    checkpoint: str
    """Its checkpoint, relative to the sweep directory (absolute for a cache)."""


@dataclass
class Outcome:
    """How a stage ended: status (finished / error), the reason of an error, its last report, and
    for a warm-up its `Warmup`."""

    status: str
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    warm: Warmup | None = None


def uses_cache(cfg: RunConfig) -> bool:
    """Whether warm-up and teacher come from an earlier run (fixed target with a cache)."""
    return cfg.teacher.target == "fixed" and bool(cfg.teacher.cache)


def cache_dir(cfg: RunConfig, seed: int) -> Path:
    """The cache's seed folder that training seed `seed` uses (teacher.cache_seed overrides)."""
    return cache_seed_dir(cfg.teacher.cache, cfg.teacher.cache_seed, seed)


def read_warmup(cfg: RunConfig, spec: TrialSpec, storage: Storage, fingerprint: str) -> Warmup:
    """A finished warm-up from disk, every hash check applied: the cache's (fixed target with
    teacher.cache) or this sweep's own (`spec` names it: warm, teacher, seed)."""
    if uses_cache(cfg):
        folder = cache_dir(cfg, spec.seed)
        checkpoint, teacher_dir = str(folder / WARMUP / CHECKPOINT_FILE), folder / TEACHER_DIR
        state = load_checkpoint(checkpoint)
    else:
        checkpoint = f"{spec.warm}/{CHECKPOINT_FILE}"
        state = load_checkpoint(storage.pull(checkpoint))
        teacher_dir = storage.pull(spec.teacher)
    return Warmup(spec.warm, state, load_teacher(teacher_dir, fingerprint, fingerprint_weights(state["model"])),
                  checkpoint)


def warmup_features(model: CertVAE, data: ImageData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warm-up means mu(x) of the train and eval splits, float64 (teacher-search features)."""
    model.eval()
    mu_train, _ = encode_all(model, data.x_train, batch_size)
    mu_eval, _ = encode_all(model, data.x_eval, batch_size)
    return mu_train.double().cpu().numpy(), mu_eval.double().cpu().numpy()


def search_threads(cfg: RunConfig) -> int:
    """Threads of the teacher search (scikit-learn's GMMs): the warm-up trial's CPUs (train.threads,
    else sweep.cpus_per_trial), which the warm-up holds while it searches."""
    return cfg.train.threads or max(1, int(cfg.sweep.cpus_per_trial))


def fit_teacher(warm: Trial, warm_dir: Path, teacher_dir: Path, warm_id: str, checkpoint: str) -> Warmup:
    """After a trained warm-up: its checkpoint, the teacher search on its features, the artifact.
    With a fixed target the teacher is read back from disk, so training uses the cached targets."""
    cfg, data, seed = warm.cfg, warm.data, warm.seed
    state = warm.state()
    save_checkpoint(state, warm_dir / CHECKPOINT_FILE)  # also when warmup_epochs = 0
    train_f, eval_f = warmup_features(warm.model, data, cfg.eval.batch_size)
    weights = fingerprint_weights(state["model"])
    with threadpool_limits(limits=search_threads(cfg)):  # the warm-up's CPUs, whatever OMP_NUM_THREADS says
        teacher = search_teacher(train_f, eval_f, cfg.teacher, seed, data.fingerprint(), weights)
    save_teacher(teacher, teacher_dir)
    if cfg.teacher.target == "fixed":
        teacher = load_teacher(teacher_dir, data.fingerprint(), weights)
    return Warmup(warm_id, state, teacher, checkpoint)


def train_warmup(cfg: RunConfig, data: ImageData, seed: int, seed_dir: Path) -> Warmup:
    """Warm-up and teacher search of one seed in `seed_dir` (no logs): for tests and notebooks."""
    trial = new_trial(cfg, WARMUP, seed, data, None)
    run_trial(trial, seed_dir / WARMUP)
    return fit_teacher(trial, seed_dir / WARMUP, seed_dir / TEACHER_DIR, f"{seed_dir.name}/{WARMUP}",
                       f"{seed_dir.name}/{WARMUP}/{CHECKPOINT_FILE}")


def stage_start(spec: TrialSpec, warm: Warmup | None,
                load: Callable[[str], dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The state a stage starts from and its lineage: (None, None) for a warm-up or a baseline
    (from scratch), the parent's pinned checkpoint for a rescue or a fork (`load` reads it), else
    the warm-up's state."""
    stage = spec.stage
    if stage == WARMUP or stage in BASELINES:
        return None, None
    if spec.parent is not None:
        return load(spec.parent["checkpoint"]), dict(spec.parent)
    return warm.state, {"trial": warm.trial, "checkpoint": warm.checkpoint}


def trial_info(spec: TrialSpec, trial: Trial) -> dict[str, Any]:
    """trial.json: what the trial is and where it comes from (the rest of its row in results.csv)."""
    teacher = trial.teacher
    return {"trial": spec.trial, "variant": trial.stage, "seed": trial.seed, "warm": spec.warm,
            "teacher_dir": spec.teacher, "overrides": spec.overrides, "parent": trial.parent,
            "fork": spec.fork, "point": point_label(spec.overrides),
            "teacher_k": teacher.k if teacher else 0, "teacher_feasible": bool(teacher and teacher.feasible),
            "teacher_hash": trial.teacher_hash}


def ended_before(trial_dir: Path) -> Outcome | None:
    """The outcome of a trial that ended in an earlier attempt (its result.json), else None."""
    path = trial_dir / RESULT_FILE
    if not path.exists():
        return None
    ended = json.loads(path.read_text())
    return Outcome(ended.get("status", "finished"), ended.get("reason", ""), ended)


def open_log(trial: Trial, trial_dir: Path, restarted: bool) -> TrialLog:
    """The trial's logs. An earlier attempt (a crash, a killed driver) may have logged past the
    checkpoint this one starts from, or, with no checkpoint, from the start: its later events and
    lines are dropped, so each report point is logged once."""
    again = restarted or (trial_dir / METRICS_FILE).exists()
    sink = TrialLog(trial_dir, to_dict(trial.cfg), purge_step=trial.step + 1 if again else None, variant=trial.stage)
    if again:
        (trial_dir / METRICS_FILE).write_text("".join(json.dumps({k: jsonable(v) for k, v in m.items()}) + "\n"
                                                      for m in trial.history))
    return sink


def run_stage(spec: TrialSpec, cfg: RunConfig, data: ImageData, storage: Storage, warm: Warmup | None,
              announce: Announce, placement: dict[str, Any], log: Callable[[str], None] = print,
              ends: Ends | None = None) -> Outcome:
    """Run one spec to its end in its folder under `storage`, pushing its files at every report.

    Args:
        spec: The plan's spec.
        cfg: Its resolved config.
        data: The data set, on the trial's device.
        storage: The sweep directory (or URI staging).
        warm: The warm-up it starts from (None for a warm-up).
        announce: Called after each report point is logged and pushed.
        placement: Where it runs (placement.json).
        log: Where warnings go (a truncated checkpoint that was skipped).
        ends: Whether the engine ends the trial at a report (`sweep.protocol.run_trial`).
    """
    trial_dir = storage.path(spec.trial)
    ended = ended_before(trial_dir)
    if ended is not None:
        return ended
    try:
        init, parent = stage_start(spec, warm, lambda rel: load_checkpoint(storage.pull(rel)))
        trial = new_trial(cfg, spec.stage, spec.seed, data, warm.teacher if warm else None, init, parent)
        own = load_latest(trial_dir, log)
        if own is not None:
            restore(trial, own, lambda line: log(f"{spec.trial}: {line}"))
    except CheckpointError as err:  # its parent's or its own checkpoint: a retry would meet it again
        write_json(trial_dir / RESULT_FILE, {"status": "error", "reason": str(err)})
        storage.push(spec.trial)
        return Outcome("error", str(err))
    sink = open_log(trial, trial_dir, own is not None)
    write_json(trial_dir / TRIAL_FILE, trial_info(spec, trial))
    write_json(trial_dir / PLACEMENT_FILE, placement)

    def report(metrics: dict[str, Any], checkpoint: Path) -> None:
        sink.report(metrics, checkpoint)
        storage.push(spec.trial)  # in storage before anyone (the scheduler) acts on the report
        announce(trial, metrics)

    try:
        metrics = run_trial(trial, trial_dir, report, ends)
        warmup = None
        if trial.stage == WARMUP:
            warmup = fit_teacher(trial, trial_dir, storage.path(spec.teacher), spec.trial,
                                 f"{spec.trial}/{CHECKPOINT_FILE}")
            storage.push(spec.teacher)
    except NonFiniteLossError as err:
        last = trial.history[-1] if trial.history else {"step": trial.step}
        sink.close(last | {"status": "error", "reason": str(err)})
        storage.push(spec.trial)
        return Outcome("error", str(err), last)
    sink.close(metrics | {"status": "finished"})
    if (peak := peak_memory(data.x_train.device)) is not None:
        write_json(trial_dir / PLACEMENT_FILE, placement | {"peak_gpu_memory_bytes": peak})
    storage.push(spec.trial)  # result.json (and a warm-up's checkpoint) before the engine hears of the end
    return Outcome("finished", "", metrics or {"step": trial.step}, warmup)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({k: jsonable(v) for k, v in data.items()}, indent=1, sort_keys=True))
