"""Tune callbacks of a sweep: rows and plan reactions when trials end, the decision log, the live
table, and an ended trial's Tune state dropped.

  DecisionLog  every scheduler decision appended to DIR/scheduler.jsonl and printed; the last stop
               reason of each running trial kept until its row is written
  TrialEnds    when a trial ends: a stopped trial's result.json, its results.csv row (one per
               trial, never two: a resumed sweep's rows are read once), then the plan's reaction
               (PlanSearcher.ended); at a URI, results.csv, scheduler.jsonl and plan.jsonl are
               uploaded every sweep.sync_every_s and when the segment ends
  LiveTable    one line per running trial every sweep.console_every_s, starts and ends as they happen
  StopCheck    the sweep's stop (Ctrl-C, SIGTERM, a storage fault) raised in Tune's loop
  ShedEnded    an ended trial's statistics dropped from Tune's memory (sweep/engine/tune_state.py)
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray.tune import Callback

from sweep.config import RunConfig, to_flat
from sweep.engine.searcher import PlanSearcher
from sweep.engine.tune_state import forget_results
from sweep.files import append_line
from sweep.interrupt import FAULT_STATUS, STOP, SweepStopped
from sweep.results import trial_ids
from sweep.rows import write_row
from sweep.schema import DECISIONS_FILE, PLAN_FILE, RESULTS_FILE
from sweep.spec import TrialSpec
from sweep.storage import Storage
from sweep.variants import WARMUP

MAX_NODE_LOSSES = 10
"""How often one trial is started again after losing its node before it ends in error."""
NODE_LOST = ("node has died", "node was terminated")
"""What Ray's error of an actor whose node was lost says (Ray 2.60)."""


def lost_with_node(error: str) -> bool:
    """Whether a trial's error is the loss of its node, not its own fault."""
    return any(marker in error for marker in NODE_LOST)


class DecisionLog:
    """Appends each scheduler decision to DIR/scheduler.jsonl and prints it."""

    def __init__(self, storage: Storage) -> None:
        self.path = storage.path(DECISIONS_FILE)  # uploaded to a URI by TrialEnds.sync
        self.stop_reason: dict[str, str] = {}  # running trials the scheduler stopped: why

    def __call__(self, decision: dict[str, Any]) -> None:
        decision = {"time": time.strftime("%Y-%m-%dT%H:%M:%S")} | decision
        with STOP.absorbing():  # a full disk stops the sweep; the decision is the scheduler's still
            append_line(self.path, json.dumps(decision) + "\n")
        if decision["action"] in ("stop", "fork"):
            self.stop_reason[decision["trial"]] = decision["reason"]
        print(f"scheduler: {decision['action']} {decision['trial']} at step {decision['step']} "
              f"(margin {decision['margin']:+.4f}): {decision['reason']}", flush=True)


def ended_status(result: dict[str, Any], error: bool) -> str:
    """finished / stopped / error from Tune's last result (a trial stopped while running says running)."""
    if error:
        return "error"
    status = str(result.get("status", "stopped"))
    return "stopped" if status == "running" else status


class TrialEnds(Callback):
    """Row and plan reaction of every trial that ends (see the module docstring)."""

    def __init__(self, cfg: RunConfig, storage: Storage, searcher: PlanSearcher, decisions: DecisionLog) -> None:
        self.base, self.storage, self.searcher, self.decisions = to_flat(cfg), storage, searcher, decisions
        self.sync_every_s, self._synced = cfg.sweep.sync_every_s, time.monotonic()
        self.written = trial_ids(storage.path(RESULTS_FILE))  # read once: a resumed sweep has rows
        self.node_losses: dict[str, int] = {}  # running trials only: popped when they end

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end(trial.config, dict(trial.last_result or {}), "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = str(trial.get_error() or "")
        if "trial" in trial.config and lost_with_node(error) and self.requeue(trial.config["trial"]):
            return
        reason = error.strip().splitlines()[-1] if error.strip() else "crashed"
        self.end(trial.config, dict(trial.last_result or {}), reason[:500], error=True)

    def requeue(self, trial_id: str) -> bool:
        """Run a trial whose node was lost again (from its checkpoint) instead of ending it in
        error: Tune can fail such a trial outright, when a second failed call of the dead node's
        actor reaches it while it already waits to be retried. At most MAX_NODE_LOSSES times."""
        losses = self.node_losses.get(trial_id, 0) + 1
        if losses > MAX_NODE_LOSSES:
            return False
        self.node_losses[trial_id] = losses
        self.searcher.plan.requeue(trial_id)
        print(f"{trial_id}: lost with its node ({losses} of at most {MAX_NODE_LOSSES}); it starts again from its "
              "checkpoint", flush=True)
        return True

    def end(self, config: dict[str, Any], result: dict[str, Any], reason: str, error: bool = False) -> None:
        """`config`: Tune's trial config, a spec's JSON form (`TrialSpec.to_dict`)."""
        if "trial" not in config or STOP.stopping:  # a trial the stop ends has not ended: resume goes on with it
            return
        spec, status = TrialSpec.from_dict(config), ended_status(result, error)
        self.node_losses.pop(spec.trial, None)
        reason = reason or result.get("reason") or self.decisions.stop_reason.pop(spec.trial, "")
        self.decisions.stop_reason.pop(spec.trial, None)
        with STOP.absorbing():  # a full disk stops the sweep: resume writes the row and the reaction
            self.write(spec, status, reason)
            self.searcher.ended(spec.trial, status)

    def write(self, spec: TrialSpec, status: str, reason: str) -> None:
        """The row of an ended trial (warm-ups only when they fail: they have no certificate)."""
        if spec.trial in self.written or (spec.stage == WARMUP and status == "finished"):
            return
        write_row(self.storage, spec.config(self.base), spec, status, reason)
        self.written.add(spec.trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.storage.remote and time.monotonic() - self._synced >= self.sync_every_s:
            self.sync()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sync()

    def sync(self) -> None:
        """Upload results.csv, the decision log and the plan log (no-op for a directory, or unchanged)."""
        self._synced = time.monotonic()
        with STOP.absorbing():
            for name in (RESULTS_FILE, DECISIONS_FILE, PLAN_FILE):
                if self.storage.path(name).exists():
                    self.storage.push(name)


class Abandon(BaseException):
    """Leaves Tuner.fit past Tune's own clean-up (which stops each trial's actor through the GCS and
    waits up to 5 s for them): the driver kills the sweep's own Ray whole instead."""

    def __init__(self, stop: SweepStopped) -> None:
        super().__init__(str(stop))
        self.stop = stop


class StopCheck(Callback):
    """The sweep's stop (sweep/interrupt.py) inside Tune's loop: a trial's report of a storage fault
    requests it, and the next step raises it: SweepStopped, which Tune answers by stopping the
    trials (a cluster's), or with `abandon` (the sweep's own Ray, which the driver kills) Abandon."""

    def __init__(self, abandon: bool) -> None:
        self.abandon = abandon

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("status") == FAULT_STATUS:
            STOP.fault(str(result.get("reason", "a trial could not write to the sweep's storage")))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self.check()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.check()

    def check(self) -> None:
        if STOP.requested is not None:
            raise Abandon(STOP.requested) if self.abandon else STOP.requested


class ShedEnded(Callback):
    """Drops an ended trial's Tune statistics on the step after it ended (when Tune has finished
    with its last result), so the driver's memory does not grow with the trials that have ended."""

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
                forget_results(trial)
            else:
                waiting.append(trial)
        self._ended = waiting


class LiveTable(Callback):
    """Every `every_s` seconds, one line per running trial: trial, variant, seed, lambda, step,
    margin, the bounds [G_lower, G_upper], status (starts and ends are printed as they happen)."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self._rows, self._last = every_s, {}, 0.0
        self._t0 = time.monotonic()

    def stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = trial.config
        self._rows[trial.trial_id] = {"trial": spec.get("trial", trial.trial_id), "variant": spec.get("stage", ""),
                                      "seed": spec.get("seed", ""), "lam": "", "step": 0, "margin": math.nan,
                                      "G_lower": math.nan, "G_upper": math.nan, "status": "RUNNING"}
        print(f"{self.stamp()} started {self._rows[trial.trial_id]['trial']}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._rows.get(trial.trial_id)
        if row is not None:
            row.update(lam=result.get("lam", ""), step=result.get("step", 0), margin=result.get("margin", math.nan),
                       G_lower=result.get("G_lower", math.nan), G_upper=result.get("G_upper", math.nan),
                       status=str(result.get("status", "running")).upper())

    def _end(self, trial: Any, status: str) -> None:
        row = self._rows.pop(trial.trial_id, None)
        if row is not None and not STOP.stopping:
            print(f"{self.stamp()} ended   {row['trial']:<28} {status:<9} step {row['step']:>6} "
                  f"G_tau {signed(row['margin'])} [{signed(row['G_lower'])}, {signed(row['G_upper'])}]", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, ended_status(dict(trial.last_result or {}), False))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "error")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self._rows and now - self._last >= self.every_s:
            self._last = now
            print(self.render(), flush=True)

    def render(self) -> str:
        lines = [f"{'trial':<28} {'variant':<9} {'seed':>4} {'lambda':>7} {'step':>6} {'G_tau':>8} "
                 f"{'[G_lower, G_upper]':>19}  status"]
        for r in self._rows.values():
            lam = f"{r['lam']:g}" if isinstance(r["lam"], (int, float)) else "-"
            bounds = f"[{signed(r['G_lower'])}, {signed(r['G_upper'])}]"
            lines.append(f"{r['trial']:<28} {r['variant']:<9} {r['seed']:>4} {lam:>7} {r['step']:>6} "
                         f"{signed(r['margin']):>8} {bounds:>19}  {r['status']}")
        return "\n".join(lines)


def signed(value: Any) -> str:
    """+1.2345, or - where there is no number."""
    return f"{value:+.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
