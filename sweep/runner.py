"""The sequential engine: the sweep's plan run one trial after another in this process, no Ray
(`python -m sweep run --sequential`).

It runs the same plan (sweep/plan.py), the same stages (sweep/stage.py), the same pre-run checks
(sweep/checks.py) and writes the same rows (sweep/results.py) as the Ray engine; what it lacks is
the scheduler: noalign runs to its endpoint and its rescue starts there. Warm-ups are kept in
memory while their trials run. The directory layout is the engine's (README, "What a run writes"),
plan.jsonl included, so `python -m sweep resume DIR --sequential` continues a stopped or killed one.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import torch
import yaml

from sweep.checks import check_run, data_key
from sweep.config import ConfigError, RunConfig, machine_problems, to_dict, to_flat
from sweep.data import ImageData
from sweep.devices import prepare_gpu, setup_device, trial_device
from sweep.grow import Growth
from sweep.interrupt import STOP, driving
from sweep.plan import PlanLog, SweepPlan
from sweep.protocol import Trial
from sweep.reactions import carry_out
from sweep.results import append_row, make_row, trial_ids
from sweep.rows import reopened
from sweep.schema import RESULTS_FILE, TRIAL_FILE
from sweep.spec import TrialSpec
from sweep.stage import Warmup, read_warmup, run_stage, uses_cache
from sweep.storage import Storage, is_uri, new_sweep
from sweep.variants import WARMUP

Log = Callable[[str], None]


def console(log: Log, trial_id: str) -> Callable[[Trial, dict[str, Any]], None]:
    """One line per report point."""
    def announce(trial: Trial, metrics: dict[str, Any]) -> None:
        cert = f" G_tau {metrics['G_tau']:+.4f} MI {metrics['student_mi']:.3f}" if "G_tau" in metrics else ""
        log(f"{trial_id:<18} epoch {metrics['epoch']:>3}/{trial.n_epochs} step {metrics['step']:>6}"
            f"{cert} recon {metrics['recon']:.2f} psnr {metrics['psnr']:.2f} AU {metrics['active_units']}")
    return announce


def run_config(cfg: RunConfig, out: str, log: Log = print) -> list[dict[str, Any]]:
    """Run every trial of `cfg`'s plan into the new directory `out`; returns the rows written.

    Raises:
        SweepLocked: Another driver holds `out`.
        SweepStopped: A signal or a storage fault stopped the sweep; `resume --sequential` continues it.
    """
    storage = local_storage(out)
    with driving(storage, log, new=True):
        datasets = check_run(cfg)
        check_machine(cfg)
        new_sweep(storage, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return Sequential(cfg, storage, datasets, log).run()


def resume_config(out: str, log: Log = print, growth: Growth | None = None) -> list[dict[str, Any]]:
    """Carry a stopped or killed sequential sweep to completion: ended trials keep their rows, the
    others continue from their last checkpoint or start. With `growth` (sweep/grow.py), forks or
    an extension are added first, to a finished sweep too. Returns the rows written now."""
    storage = local_storage(out)

    def build(cfg: RunConfig, datasets: dict[str, ImageData]) -> Sequential:
        check_machine(cfg)
        return Sequential(cfg, storage, datasets, log)

    with reopened(storage, build, log, growth) as runner:
        return runner.run()


def check_machine(cfg: RunConfig) -> None:
    """Refuse a CUDA device this machine lacks, before anything is written."""
    if problems := machine_problems(cfg):
        raise ConfigError("; ".join(problems))


def local_storage(out: str) -> Storage:
    if is_uri(out):
        raise ValueError(f"--sequential writes a local directory, not {out}: use the Ray engine")
    return Storage(out)


class Sequential:
    """The plan's trials, one after another; warm-ups in memory while their trials run."""

    def __init__(self, cfg: RunConfig, storage: Storage, datasets: dict[str, ImageData], log: Log) -> None:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = trial_device(cfg.train.device, None, torch.cuda.is_available())
        self.cfg, self.storage, self.log = cfg, storage, log
        self.datasets = {k: d.to(self.device) for k, d in datasets.items()}  # one tensor per split on the device
        self.base = to_flat(cfg)
        self.plan_log = PlanLog(storage)
        self.plan = SweepPlan(cfg, warm_cached=uses_cache(cfg), record=self.plan_log)
        self.warm: dict[str, Warmup] = {}
        self.finished_warm: dict[str, Warmup] = {}  # trained here, until published
        self.rows: list[dict[str, Any]] = []
        self.written = trial_ids(storage.path(RESULTS_FILE))  # a resumed sweep's rows: never a second

    def config(self, spec: TrialSpec) -> RunConfig:
        return spec.config(self.base)

    def data(self, cfg: RunConfig) -> ImageData:
        return self.datasets[data_key(cfg.data)]

    def publish(self, warm_id: str) -> None:
        if warm_id in self.finished_warm:
            self.warm[warm_id] = self.finished_warm.pop(warm_id)
            return
        spec = self.plan.warmup(warm_id)  # a cached warm-up, or one a stopped driver finished
        cfg = self.config(spec)
        self.warm[warm_id] = read_warmup(cfg, spec, self.storage, self.data(cfg).fingerprint())

    def run(self) -> list[dict[str, Any]]:
        """Every trial left; a storage fault stops the sweep (SweepStopped) instead of failing trials."""
        self.log(f"{self.cfg.name}: seeds {self.cfg.seeds}; variants {self.cfg.variants}; on {self.device}; "
                 f"out {self.storage}")
        with STOP.stopping_on_faults():
            self.react(self.plan.catch_up())
            while isinstance(spec := self.plan.next_spec(), TrialSpec):
                self.run_one(spec)
        return self.rows

    def react(self, reactions: list) -> None:
        carry_out(self.plan, reactions, self.storage, self.publish, lambda warm_id: self.warm.pop(warm_id, None),
                  self.log)

    def run_one(self, spec: TrialSpec) -> None:
        cfg, t0 = self.config(spec), time.perf_counter()
        setup_device(self.device, cfg.train.deterministic)
        prepare_gpu(self.device, 1.0)
        placement = {"device": str(self.data(cfg).x_train.device), "threads": torch.get_num_threads()}
        outcome = run_stage(spec, cfg, self.data(cfg), self.storage, self.warm.get(spec.warm),
                            console(self.log, spec.trial), placement, self.log)
        if outcome.warm is not None:
            self.finished_warm[spec.trial] = outcome.warm
            teacher = outcome.warm.teacher
            self.log(f"{spec.trial}: teacher K={teacher.k} I_T(eval)={teacher.I_T:.4f} "
                     f"{'feasible' if teacher.feasible else 'stress case'} ({len(teacher.candidates)} candidates, "
                     f"{time.perf_counter() - t0:.1f}s incl. warm-up)")
        with STOP.deferred():  # its row and its end in plan.jsonl, never one without the other
            if (spec.stage != WARMUP or outcome.status != "finished") and spec.trial not in self.written:
                info = json.loads(self.storage.path(f"{spec.trial}/{TRIAL_FILE}").read_text())
                row = make_row(cfg, outcome.metrics, info, outcome.status, outcome.reason)
                append_row(self.storage.path(RESULTS_FILE), row)
                self.written.add(spec.trial)
                self.rows.append(row)
            self.react(self.plan.end(spec.trial, outcome.status))
