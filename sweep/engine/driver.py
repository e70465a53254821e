"""The Ray engine's driver: start Ray, run the plan as Tune experiments ("segments"), resume.

`run_sweep` checks everything (sweep/checks.py) before it writes anything or starts Ray, then runs
the plan as consecutive Tune experiments DIR/tune/segment-NNN of at most sweep.trials_per_segment
trials each: Tune keeps every trial of an experiment in the driver's memory, and frees them with
the experiment. `resume_sweep` rebuilds the plan from config.yaml and DIR/plan.jsonl, writes the
row of any trial that ended without one, publishes the warm-ups still needed, plans the rescues a
killed driver had not planned yet and runs the rest in new segments; every trial that had not
ended continues from its own checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray import tune

from sweep.checks import check_run
from sweep.config import ConfigError, RunConfig, to_dict, to_flat
from sweep.data import ImageData
from sweep.devices import cluster_problems, engine_notes, engine_problems, gpus_per_trial
from sweep.engine import objects
from sweep.engine.callbacks import MAX_NODE_LOSSES, Abandon, DecisionLog, LiveTable, ShedEnded, StopCheck, TrialEnds
from sweep.engine.scheduler import CertificateScheduler
from sweep.engine.searcher import PlanSearcher
from sweep.engine.security import HideOptOut, check_local_auth, prepare_local_auth
from sweep.engine.tune_state import plain_trial_actors
from sweep.engine.trainable import train_protocol
from sweep.files import storage_fault
from sweep.grid import grid_points
from sweep.grow import Growth
from sweep.interrupt import STOP, driving, kill_descendants, shielded_children
from sweep.plan import PlanLog, SweepPlan
from sweep.results import status_counts
from sweep.schema import RESULTS_FILE
from sweep.rows import reopened
from sweep.stage import uses_cache
from sweep.storage import Storage, new_sweep

TUNE_DIR = "tune"  # Tune's experiments (one per segment) inside the sweep directory
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
Log = Callable[[str], None]


def start_ray(address: str | None, log: Log = print, **resources: float) -> None:
    """Connect to `address` (a running cluster, with the auth settings the user exported), else
    start a local Ray of this process's own (with `resources`, e.g. num_cpus): never one an earlier
    `ray start` left recorded on the machine, and only with the user's token
    (sweep/engine/security.py)."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace="certsweep", log_to_driver=False)
        log(f"Ray: the cluster at {address}")
        return
    prepare_local_auth(log)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(HideOptOut())
    ray.init(address="local", namespace="certsweep", include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _node_ip_address="127.0.0.1", **resources)
    check_local_auth()
    log(f"Ray: local, GCS at {ray.get_runtime_context().gcs_address}, token authentication "
        f"(the token in {os.environ.get('RAY_AUTH_TOKEN_PATH', '$RAY_AUTH_TOKEN')})")


def trial_resources(cfg: RunConfig) -> dict[str, float]:
    """CPUs and GPUs of one trial (sweep.gpus_per_trial -1 resolved against the cluster's GPUs)."""
    return {"cpu": cfg.sweep.cpus_per_trial, "gpu": gpus_per_trial(cfg, ray.cluster_resources().get("GPU", 0))}


def check_cluster(cfg: RunConfig) -> None:
    """Refuse what the cluster's resources cannot run (sweep/devices.py), before anything is written."""
    if problems := cluster_problems(cfg, ray.cluster_resources().get("GPU", 0)):
        raise ConfigError("; ".join(problems))


def check_engine(cfg: RunConfig, address: str | None) -> None:
    """Refuse a device the Ray engine cannot give a trial (sweep/devices.py), before Ray starts: for
    a local Ray of its own, whose cluster is this machine, its GPUs are known already (a cluster's
    are read once connected, `check_cluster`)."""
    problems = engine_problems(cfg)
    if not problems and not address and not ray.is_initialized():
        import torch

        problems = cluster_problems(cfg, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if problems:
        raise ConfigError("; ".join(problems))


def concurrent_slots(cfg: RunConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once. Tune starts at most this many actors together (a custom
    searcher otherwise gets 1, so worker start-up would be serialised)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 1) // resources["cpu"])
    if resources["gpu"]:
        slots = min(slots, int(total.get("GPU", 0) // resources["gpu"]))
    return max(1, min(slots, cfg.sweep.max_concurrent or slots))


def quiet_tune() -> None:
    """Our results and table replace Tune's own loggers and progress output."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")  # the scheduler decides on every report
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # the ResultGrid looks for the JSON / CSV loggers' files, which results.csv replaces
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


class QuietWhileStopping(logging.Filter):
    """Nothing from Ray's and Tune's loggers once the sweep stops: its trials then end in errors
    that are the stop itself (workers told to stop, a full disk), and the user gets one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not STOP.stopping and storage_fault(record.exc_info[1] if record.exc_info else None) is None


def quiet_while_stopping() -> None:
    quiet = QuietWhileStopping()
    for name in ("", "ray", "ray.tune", "ray.train", "ray.tune.execution.tune_controller"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, QuietWhileStopping) for f in handler.filters):
                handler.addFilter(quiet)


class Engine:
    """One sweep on Ray: its plan, its data in the object store, its segments."""

    def __init__(self, cfg: RunConfig, storage: Storage, datasets: dict[str, ImageData], log: Log) -> None:
        self.cfg, self.storage, self.log = cfg, storage, log
        self.plan_log = PlanLog(storage)
        self.plan = SweepPlan(cfg, warm_cached=uses_cache(cfg), record=self.plan_log)
        self.fingerprints = {k: d.fingerprint() for k, d in datasets.items()}
        self.datasets = datasets

    def start(self, address: str | None) -> None:
        """Ray, the warm-up store, the trainable (its data put into the object store once)."""
        quiet_tune()
        plain_trial_actors()  # trial actors may start on Ray's idle workers (sweep/engine/tune_state.py)
        self.local_ray = not ray.is_initialized() and not address  # a Ray of its own, which a stop kills
        with shielded_children():  # its GCS and raylet ignore a SIGTERM to the driver's process group
            start_ray(address, self.log)
            STOP.reinstall()  # ray.init installed its own SIGTERM handler
        quiet_while_stopping()  # ray.init made the handlers
        if self.local_ray:
            STOP.own_ray = True
            STOP.on_hard_exit(kill_descendants)
        STOP.check()
        check_cluster(self.cfg)
        for note in engine_notes(self.cfg):
            self.log(note)
        self.store = objects.open_store(self.storage)  # held until the sweep ends
        self.name = objects.store_name(self.storage)
        fn = tune.with_parameters(train_protocol, base=to_flat(self.cfg), out=self.storage.uri,
                                  datasets=objects.payloads(self.datasets), store=self.name)
        self.resources = trial_resources(self.cfg)
        self.trainable = tune.with_resources(fn, self.resources)
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(concurrent_slots(self.cfg, self.resources))

    def searcher(self) -> PlanSearcher:
        return PlanSearcher(self.cfg, self.plan, self.storage, self.name, self.fingerprints, self.log)

    def tuner(self, searcher: PlanSearcher, index: int) -> tune.Tuner:
        """The Tune experiment of segment `index`: the plan's next trials, up to trials_per_segment."""
        cfg, decisions = self.cfg, DecisionLog(self.storage)
        scheduler = CertificateScheduler(cfg.scheduler, cfg.train, searcher.fork_pending, decisions)
        # the searcher ends the experiment (FINISHED); trials started again after a lost node take
        # extra samples, so Tune's own limit only has to be out of the way
        budget = self.plan.max_trials() + MAX_NODE_LOSSES * len(self.plan.specs)
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=budget,
                                      reuse_actors=True, max_concurrent_trials=cfg.sweep.max_concurrent or None,
                                      trial_dirname_creator=lambda t: f"{t.config['trial'].replace('/', '_')}_{t.trial_id}")
        run_config = tune.RunConfig(
            name=f"segment-{index:03d}", storage_path=f"{self.storage.uri}/{TUNE_DIR}", verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            callbacks=[StopCheck(abandon=self.local_ray), TrialEnds(cfg, self.storage, searcher, decisions),
                       LiveTable(cfg.sweep.console_every_s), ShedEnded()])
        return tune.Tuner(self.trainable, tune_config=tune_config, run_config=run_config)

    def run(self, address: str | None, begin: Callable[[], None] | None = None) -> dict[str, int]:
        """Start (Ray, the cluster's checks), `begin` (a new sweep's first files: nothing is written
        before the cluster is known to run it), then segments until the plan is done; trials per
        status in results.csv. A stop (sweep/interrupt.py) leaves as SweepStopped, after the trials
        and the sweep's own Ray ended."""
        STOP.cooperative = True  # Tune's loop is not interrupted mid-step: StopCheck raises at the next
        self.local_ray = False
        try:
            with STOP.stopping_on_faults():
                self.start(address)
                if begin is not None:
                    begin()
                self.announce()
                self.searcher().react(self.plan.catch_up())
                return self.segments()
        except Abandon as left:
            raise left.stop from None
        finally:
            STOP.cooperative = False
            if STOP.stopping and self.local_ray:
                kill_descendants()  # its trials' last checkpoints are on disk (written whole)

    def segments(self) -> dict[str, int]:
        index = len([n for n in self.storage.children(TUNE_DIR) if n.startswith("segment-")])
        while not self.plan.finished():
            STOP.check()
            searcher = self.searcher()
            if index:
                self.log(f"segment {index}: {len(self.plan.ended)} of {len(self.plan.specs)} trials ended so far")
            self.tuner(searcher, index).fit()
            STOP.check()
            if not searcher.started and not self.plan.finished():
                raise RuntimeError(f"segment {index} started no trial but the plan is not done")
            index += 1
        return status_counts(self.storage.path(RESULTS_FILE))

    def announce(self) -> None:
        staged = f" (staged in {self.storage.local})" if self.storage.remote else ""
        cfg, total = self.cfg, ray.cluster_resources()
        self.log(f"{cfg.name}: {len(self.plan.specs)} trials planned (seeds {cfg.seeds}, variants {cfg.variants}, "
                 f"{len(grid_points(cfg))} grid point(s)); {self.resources} per trial on {total.get('CPU', 0):g} CPUs, "
                 f"{total.get('GPU', 0):g} GPUs; out {self.storage}{staged}")


def run_sweep(cfg: RunConfig, out: str | Path, address: str | None = None, log: Log = print) -> dict[str, int]:
    """Run the sweep of `cfg` through Ray Tune into `out`: a new directory, or a cloud URI with
    nothing at it yet (s3://bucket/sweep, gs://..., any pyarrow filesystem).

    Returns:
        Trials per status (finished / stopped / error) in results.csv.

    Raises:
        SweepLocked: Another driver holds `out`.
        SweepStopped: A signal or a storage fault stopped the sweep; `resume` continues it.
    """
    storage = Storage(out)
    with driving(storage, log, new=True):
        datasets = check_run(cfg)
        check_engine(cfg, address)
        engine = Engine(cfg, storage, datasets, log)
        return engine.run(address, lambda: new_sweep(storage, yaml.safe_dump(to_dict(cfg), sort_keys=False)))


def resume_sweep(out: str | Path, address: str | None = None, log: Log = print,
                 growth: Growth | None = None) -> dict[str, int]:
    """Carry a stopped or interrupted sweep (Ctrl-C, a storage fault, a killed driver) to
    completion: ended trials keep their rows, the others continue from their last checkpoint or
    start. `out` is the sweep's directory or URI. With `growth` (sweep/grow.py), forks or an
    extension are added first, to a finished sweep too."""
    storage = Storage(out)

    def build(cfg: RunConfig, datasets: dict[str, ImageData]) -> Engine:
        check_engine(cfg, address)
        return Engine(cfg, storage, datasets, log)

    with reopened(storage, build, log, growth) as engine:
        return engine.run(address)
