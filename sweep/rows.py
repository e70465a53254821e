"""The results.csv row of an ended trial, built from its own files, and the reopening of a stopped
or killed sweep, for both engines (imports no Ray).

  write_row           when a Ray trial ends, and for trials that ended (in plan.jsonl) without a
                      row when a driver continues a sweep (`write_missing_rows`)
  reopened            a stopped, killed or finished sweep's driver (`resume`, `fork`, `extend`):
                      checked, locked, its files reopened, its plan replayed, the missing rows
                      written, a fork or an extend recorded
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sweep.checks import check_run
from sweep.config import ConfigError, RunConfig, load_config, to_flat
from sweep.files import cut_partial_line
from sweep.interrupt import driving
from sweep.plan import PlanLog, SweepPlan
from sweep.results import append_row, last_report, make_row, trial_ids
from sweep.schema import (CONFIG_FILE, DECISIONS_FILE, METRICS_FILE, PLAN_FILE, RESULT_FILE, RESULTS_FILE,
                          TRIAL_FILE)
from sweep.spec import TrialSpec
from sweep.stage import uses_cache, write_json
from sweep.storage import Storage
from sweep.variants import WARMUP

if TYPE_CHECKING:
    from sweep.data import ImageData
    from sweep.grow import Growth


def write_row(storage: Storage, cfg: RunConfig, spec: TrialSpec, status: str, reason: str | None) -> None:
    """Append the results.csv row of an ended trial, built from its own files (pulled from a URI):
    its last report in metrics.jsonl and its trial.json. A trial that did not finish gets the
    result.json it could not write itself; `reason` None reads the reason from result.json."""
    trial, folder = spec.trial, storage.path(spec.trial)
    for name in (METRICS_FILE, TRIAL_FILE, RESULT_FILE):
        storage.pull(f"{trial}/{name}")
    metrics, ended = last_report(folder / METRICS_FILE), read_json(folder / RESULT_FILE)
    reason = ended.get("reason", "") if reason is None else reason
    if status != "finished" and not ended:
        write_json(folder / RESULT_FILE, metrics | {"status": status, "reason": reason})
        storage.push(f"{trial}/{RESULT_FILE}")
    info = read_json(folder / TRIAL_FILE) or {"trial": trial, "variant": spec.stage, "seed": spec.seed,
                                              "parent": spec.parent}
    append_row(storage.path(RESULTS_FILE), make_row(cfg, metrics, info, status, reason))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def write_missing_rows(cfg: RunConfig, storage: Storage, plan: SweepPlan) -> int:
    """Rows of trials that ended (in plan.jsonl) but have none: the driver was killed in between,
    or, at a URI, before its last upload of results.csv."""
    written, base, n = trial_ids(storage.path(RESULTS_FILE)), to_flat(cfg), 0
    for trial, status in plan.ended.items():
        spec = plan.spec(trial)
        if trial in written or spec is None or (spec.stage == WARMUP and status == "finished"):
            continue
        write_row(storage, spec.config(base), spec, status, None)
        n += 1
    return n


def check_sweep(storage: Storage) -> None:
    """Refuse to resume a place that holds no sweep (before its lock is taken or anything made)."""
    if not storage.exists(CONFIG_FILE) or not storage.exists(PLAN_FILE):
        raise ConfigError(f"{storage} is not a sweep directory to resume (no {CONFIG_FILE} and {PLAN_FILE} in it)")


def reopen(storage: Storage, log: Callable[[str], None]) -> RunConfig:
    """A stopped or killed sweep made ready to continue: the driver files staged (from a URI), a row
    its killed driver left half written cut (saying so); returns its config. The caller checked it
    (`check_sweep`), holds the sweep's lock, replays plan.jsonl and writes the rows still missing
    (`write_missing_rows`)."""
    storage.reset_staging()
    for name in (CONFIG_FILE, RESULTS_FILE, DECISIONS_FILE, PLAN_FILE):
        storage.pull(name)
    if cut_partial_line(storage.path(RESULTS_FILE)):
        log(f"warning: {RESULTS_FILE} ended in a half-written row (the driver was killed writing it); "
            "it was cut, and that trial's row is written again")
    return as_begun(load_config(storage.path(CONFIG_FILE)), PlanLog(storage).events(), log)


def as_begun(cfg: RunConfig, events: list[dict[str, Any]], log: Callable[[str], None]) -> RunConfig:
    """The config a sweep continues with: a sweep begun by a certsweep that ran one trial per grid
    point (its config.yaml has no sweep.share_trials, its plan.jsonl names trials such as
    seed_0/noalign-lam=5.0 that shared trials do not have) continues that way."""
    if not cfg.sweep.share_trials:
        return cfg
    added = {e["spec"]["trial"] for e in events if e.get("event") == "add"}
    named = {e["trial"] for e in events if isinstance(e.get("trial"), str)} - added
    plan = SweepPlan(cfg, warm_cached=uses_cache(cfg))
    unknown = sorted(t for t in named if not plan.knows(t))
    if not unknown:
        return cfg
    unshared = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, share_trials=False))
    if any(not SweepPlan(unshared, warm_cached=uses_cache(cfg)).knows(t) for t in unknown):
        return cfg  # not this: the replay names the trial it cannot place
    log(f"note: this sweep was begun with one trial per grid point and variant ({unknown[0]}, ...); it continues "
        "so (sweep.share_trials: false)")
    return unshared


@contextmanager
def reopened(storage: Storage, build: Callable[[RunConfig, dict[str, ImageData]], Any],
             log: Callable[[str], None], growth: Growth | None = None) -> Iterator[Any]:
    """A stopped, killed or finished sweep's driver for either engine, ready to run what is left:
    the sweep checked, its lock held (until the block ends), its files reopened, a `growth` (a fork
    or an extend, sweep/grow.py) checked before any data is read, the engine built by
    `build(cfg, datasets)`, its plan replayed, the rows still missing written, and the growth
    recorded."""
    check_sweep(storage)
    with driving(storage, log):
        cfg = reopen(storage, log)
        if growth is not None:
            cfg = growth.check(cfg, storage)
        engine = build(cfg, check_run(cfg))
        engine.plan.replay(engine.plan_log.events())
        written = write_missing_rows(cfg, storage, engine.plan)
        log(f"{cfg.name}: {'resuming' if growth is None else growth.what + 'ing'} {storage} "
            f"({len(engine.plan.ended)} of {len(engine.plan.specs)} trials ended, {written} row(s) written now)")
        if growth is not None:
            growth.apply(engine.plan, storage, log)
        yield engine
