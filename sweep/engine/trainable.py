"""The Tune function trainable: one spec of the plan, run by the shared stage runner (sweep/stage.py).

Tune sees only the scheduler's and the live table's numbers of each report (`TUNE_KEYS`): the whole
report lives in the trial's metrics.jsonl, which results.csv is built from, and Tune keeps running
statistics of every key it is sent in the driver's memory. Tune gets no checkpoints either: a trial
that Tune starts again (a crashed worker, a lost node, a resumed sweep) continues from its own
checkpoint.pt in the sweep's storage, which is written and pushed before every report.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import ray
import torch
from ray import tune

from sweep.checkpoint import CheckpointError
from sweep.devices import PlacementError, prepare_gpu, setup_device, trial_device
from sweep.engine import objects
from sweep.files import storage_fault
from sweep.interrupt import FAULT_STATUS, freeze_at_exit
from sweep.protocol import Trial
from sweep.rules import ends_here, report_window
from sweep.schema import TUNE_KEYS
from sweep.stage import Outcome, ended_before, run_stage
from sweep.spec import TrialSpec
from sweep.storage import Storage
from sweep.variants import WARMUP
from teachers.artifact import TeacherCacheError

PRIOR_KEY = "prior"
"""In the first report of a trial that continues from its checkpoint (a resumed sweep): its earlier
reports' (margin, G_lower, G_upper), the scheduler's window of them, so that a resumed sweep stops
and forks at the same reports as one that was never stopped."""


def scheduled_end(cfg: Any) -> Callable[[str, list[dict[str, Any]], float], bool]:
    """Whether the certificate scheduler (sweep/engine/scheduler.py) ends the trial at its latest
    report: the same rule on the same numbers, so the trial fits its endpoint numbers first."""
    return lambda stage, history, lam: ends_here(stage, history, lam, cfg.scheduler, cfg.train)


def compact(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in TUNE_KEYS if metrics.get(k) is not None}


def placement(device: torch.device, threads: int, gpu_ids: list, share: float) -> dict[str, Any]:
    """Where this trial runs: what the GPU-placement check and a user debugging a cluster read
    (its peak GPU memory is added when it ends)."""
    context = ray.get_runtime_context()
    return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "node_id": context.get_node_id(),
            "device": str(device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "gpu_ids": [str(g) for g in gpu_ids], "gpu_share": share, "threads": threads, "started": time.time()}


def place(cfg: Any) -> tuple[torch.device, list, float]:
    """The trial's device from what Ray assigned it (sweep/devices.py), kept to its share of a GPU,
    set up for speed or determinism; also its GPU ids and share."""
    gpu_ids = list(ray.get_gpu_ids())
    share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    device = trial_device(cfg.train.device, gpu_ids, torch.cuda.is_available())
    prepare_gpu(device, share)
    setup_device(device, cfg.train.deterministic)
    return device, gpu_ids, share


class TuneAnnouncer:
    """Each report point to Tune, after it is logged and in storage (so the scheduler never
    decides on a report that storage lacks)."""

    def __init__(self, spec: TrialSpec, window: int) -> None:
        self.static = {"trial": spec.trial, "stage": spec.stage, "seed": spec.seed}
        self.reported, self.window = 0, window

    def __call__(self, trial: Trial, metrics: dict[str, Any]) -> None:
        # a warm-up's last report is not its end: the teacher search follows
        last = trial.stage != WARMUP and metrics.get("epoch") == trial.n_epochs
        status = "finished" if last else "running"
        earlier = trial.history[:-1][-self.window:] if not self.reported else []
        prior = {PRIOR_KEY: [[m.get(k) for k in ("margin", "G_lower", "G_upper")] for m in earlier]} if earlier else {}
        tune.report(self.static | compact(metrics) | {"status": status} | prior)
        self.reported += 1

    def final(self, outcome: Outcome) -> None:
        """A last report without a margin (nothing is left for the scheduler to decide)."""
        keep = {k: v for k, v in compact(outcome.metrics).items() if k != "margin"}
        tune.report(self.static | keep | {"status": outcome.status, "reason": outcome.reason})


def train_protocol(config: dict[str, Any], base: dict[str, Any], out: str, datasets: dict[str, Any],
                   store: str) -> None:
    """Tune function trainable: `config` is one spec of the plan (`TrialSpec.to_dict`)."""
    freeze_at_exit()  # the worker that hosts this trial's actor exits fast when Tune lets it go
    spec, storage = TrialSpec.from_dict(config), Storage(out)
    cfg = spec.config(base)
    threads = cfg.train.threads or max(1, int(cfg.sweep.cpus_per_trial))
    torch.set_num_threads(threads)
    announce = TuneAnnouncer(spec, report_window(cfg.scheduler))
    try:
        device, gpu_ids, share = place(cfg)
    except PlacementError as err:  # every retry would meet the same node: an error, not a crash
        announce.final(Outcome("error", str(err)))
        return
    if storage.remote:  # stage what an earlier attempt (on any node) left at the URI, nothing else
        shutil.rmtree(storage.path(spec.trial), ignore_errors=True)
        storage.pull(spec.trial)
    ended = ended_before(storage.path(spec.trial))
    if ended is not None:  # ended before the driver was killed: report, do not train again
        announce.final(ended)
        return
    data = objects.data_from(datasets, cfg, device)
    try:
        try:
            warm = None if spec.stage == WARMUP else objects.fetch(store, spec, cfg, storage, data.fingerprint())
        except (CheckpointError, TeacherCacheError) as err:  # a retry would meet the same files
            announce.final(Outcome("error", f"its warm-up cannot be read: {err}"))
            return
        outcome = run_stage(spec, cfg, data, storage, warm, announce, placement(device, threads, gpu_ids, share),
                            ends=scheduled_end(cfg))
    except OSError as err:
        fault = storage_fault(err)
        if fault is None:
            raise
        # not this trial's failure: the driver stops the sweep (a retry would fail the same way)
        tune.report(announce.static | {"status": FAULT_STATUS, "reason": str(fault)})
        return
    if outcome.status != "finished" or spec.stage == WARMUP or not announce.reported:
        announce.final(outcome)
