"""Growing a sweep by hand, the research loop without code (imports no Ray):

  fork    `python -m sweep fork DIR TRIAL [--step N] [--set KEY=VALUE ...]`: new trials in DIR that
          start from one checkpoint of TRIAL (its last, or the one kept at step N,
          sweep.keep_checkpoints) with other training settings. A list value is a grid: every
          combination is one fork. A fork of a noalign trial is a rescue (the full objective); a
          fork of full, rescue or prefit goes on as its parent's variant. A fork shares its
          parent's warm-up and teacher, so it may change train.* settings only, not the warm-up's
          (train.warmup_epochs, train.batch_size, train.lr); the model's shape is its checkpoint's.
          Its id names its parent, step and settings, e.g.
          seed_0/rescue-from-noalign-step471-lam=2.0; its TensorBoard run continues the parent's
          step axis; its row in results.csv names parent_trial, parent_checkpoint, parent_step and
          `fork` (e.g. "noalign@471"), which the analysis groups by.
  extend  `python -m sweep extend DIR --set KEY=VALUE ...`: more seeds, variants or values of the
          sweep's grid axes. Only the new trials run: every warm-up and teacher search whose
          settings match an existing one is reused. The sweep.* layout settings (resources,
          segments, sync) may change too; any other setting is refused, naming its key, since old
          and new trials would not be comparable.

Both run as a driver of the sweep (its lock, sweep/lock.py) through `reopened` (sweep/rows.py): the
sweep is checked and its plan replayed, a `Growth` refuses what it cannot do before any data is read
or anything written, then records itself (a fork: its parent's checkpoint pinned and one `add` event
per fork in plan.jsonl; an extend: config.yaml rewritten with the grown config, and an `extend`
event with the old and new values), and the engine runs what the plan has left: the new trials,
and on a stopped sweep its unfinished ones. So `python -m sweep resume DIR` completes a killed fork
or extend.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from sweep.checkpoint import LATEST, kept_name, kept_steps, manifest_path, read_manifest, verify
from sweep.config import ConfigError, RunConfig, from_dict, parse_override, set_dotted, to_dict, to_flat
from sweep.grid import warm_relevant
from sweep.plan import PlanLog, SweepPlan
from sweep.schema import CONFIG_FILE, point_label
from sweep.spec import TrialSpec
from sweep.stage import uses_cache
from sweep.storage import Storage
from sweep.variants import BASELINES, WARMUP

Log = Callable[[str], None]

FORK_STAGE = {"noalign": "rescue", "full": "full", "rescue": "rescue", "prefit": "prefit"}
"""The variant a fork of each variant trains as: a noalign is rescued (the full objective), the
others go on with their own objective. Warm-ups and baselines are not forked."""
GROWS = ("seeds", "variants", "sweep.grid")
"""What `extend` adds to."""


def fork_key_problem(key: str, flat: dict[str, Any]) -> str | None:
    """Why a fork may not set `key` (None when it may): a fork changes training settings only."""
    if key not in flat:
        return f"{key}: not a config key"
    if key.startswith("train.") and not warm_relevant(key):
        return None
    if key.startswith("model."):
        return f"{key}: the model is its parent's checkpoint's"
    if warm_relevant(key):
        return f"{key}: would change the warm-up or the teacher, which a fork shares with its parent"
    return f"{key}: not a setting of one trial's training (a fork may set train.* keys)"


def parsed_sets(texts: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as {key: value}; a key given twice is refused."""
    out: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        if key in out:
            raise ConfigError(f"--set {key}: given twice; give one value, or one list of values")
        out[key] = value
    return out


def fork_points(sets: dict[str, Any], flat: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the --set values: a list is a grid axis, unless the setting itself is a
    list (then a list of lists is)."""
    axes = {}
    for key, value in sets.items():
        is_list_setting = isinstance(flat.get(key), list)
        grid = isinstance(value, list) and (not is_list_setting or all(isinstance(v, list) for v in value))
        axes[key] = value if grid else [value]
        if grid and not value:
            raise ConfigError(f"--set {key}: an empty list gives no fork")
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def forkable(plan: SweepPlan, trial: str, most: int = 12) -> str:
    """The trials a fork may start from, those of `trial`'s seed folder first (at most `most`)."""
    seed_dir = trial.split("/", 1)[0] + "/"
    found = sorted((not t.startswith(seed_dir), t) for t, s in plan.specs.items() if s.stage in FORK_STAGE)
    names = [t for _, t in found[:most]]
    more = f" and {len(found) - most} more" if len(found) > most else ""
    return f"trials to fork: {', '.join(names)}{more}" if names else "it has no trial to fork yet"


def checkpoint_steps(storage: Storage, trial: str) -> tuple[list[int], int | None]:
    """(kept steps, the last checkpoint's step or None) of a trial, from its files' manifests."""
    names = storage.children(trial)
    last = None
    if LATEST in names and f"{LATEST}.json" in names:
        storage.pull(f"{trial}/{LATEST}.json")
        last = int(read_manifest(storage.path(f"{trial}/{LATEST}"))["step"])
    return kept_steps(names), last


@dataclass
class Fork:
    """The forks of one trial (`python -m sweep fork`). `check` finds every problem before any data
    is read or anything written; `apply` pins the parent's checkpoint and adds the forks to the plan."""

    trial: str
    step: int | None = None
    sets: list[str] = field(default_factory=list)
    specs: list[TrialSpec] = field(default_factory=list)
    applied: bool = False
    what = "fork"

    def check(self, cfg: RunConfig, storage: Storage) -> RunConfig:
        plan = SweepPlan(cfg, warm_cached=uses_cache(cfg))
        plan.replay(PlanLog(storage).events())
        parent = plan.spec(self.trial)
        if parent is None:
            raise ConfigError(f"fork: {self.trial} is not a trial of {storage}; {forkable(plan, self.trial)}")
        stage = parent.stage
        if stage == WARMUP:
            raise ConfigError(f"fork: {self.trial} is a warm-up; its trials share its teacher: add variants or grid "
                              "values with `python -m sweep extend`, or fork one of its trials")
        if stage in BASELINES:
            raise ConfigError(f"fork: {self.trial} is a baseline ({stage}); forks start from noalign (a rescue), "
                              "full, rescue or prefit trials")
        step, checkpoint = self._checkpoint(storage)
        flat = to_flat(cfg)
        sets = parsed_sets(self.sets)
        if problems := [p for key in sets if (p := fork_key_problem(key, flat))]:
            raise ConfigError("fork refused:\n" + "\n".join(f"  - --set {p}" for p in problems))
        name = self.trial.split("/", 1)[1]
        fork_stage = FORK_STAGE[stage]
        seed_dir = self.trial.split("/", 1)[0]
        specs, problems = [], []
        for point in fork_points(sets, flat):
            try:
                typed = to_flat(parent.replace(overrides=parent.overrides | point).config(flat))
            except ConfigError as err:
                problems += [f"--set {point_label(point)}: {line.strip(' -')}" for line in str(err).splitlines()[1:]]
                continue
            point = {k: typed[k] for k in point}  # 2 -> 2.0 for a float setting: one id per setting
            trial = f"{seed_dir}/{fork_stage}-from-{name}-step{step}" + (f"-{point_label(point)}" if point else "")
            if trial in plan.specs or any(s.trial == trial for s in specs):
                problems.append(f"{trial} is in this sweep already (python -m sweep resume {storage} continues "
                                "it if it has not ended)")
            specs.append(parent.replace(trial=trial, stage=fork_stage, overrides=parent.overrides | point,
                                        fork=f"{name}@{step}", parent={"trial": self.trial, "checkpoint": checkpoint,
                                                                        "step": step, "reason": "fork"}))
        if problems:
            raise ConfigError("fork refused:\n" + "\n".join(f"  - {p}" for p in problems))
        self.specs = specs
        return cfg

    def _checkpoint(self, storage: Storage) -> tuple[int, str]:
        """The step and file (relative to the sweep) the forks start from; refused when not kept."""
        kept, last = checkpoint_steps(storage, self.trial)
        available = sorted(set(kept) | ({last} if last is not None else set()))
        if not available:
            raise ConfigError(f"fork: {self.trial} has no checkpoint yet (it never reported)")
        step = last if self.step is None else self.step
        if step not in available:
            raise ConfigError(f"fork: {self.trial} has no checkpoint at step {step}; steps available: "
                              f"{', '.join(map(str, available))} (sweep.keep_checkpoints sets how many are kept)")
        rel = f"{self.trial}/{LATEST if step not in kept else kept_name(step)}"
        storage.pull(manifest_path(rel).as_posix())
        verify(storage.pull(rel))  # whole, before anything is added
        return step, f"{self.trial}/{kept_name(step)}"

    def apply(self, plan: SweepPlan, storage: Storage, log: Log) -> None:
        from sweep.reactions import pin_checkpoint

        step = self.specs[0].parent["step"]
        if not storage.exists(self.specs[0].parent["checkpoint"]):  # its last checkpoint, not kept yet
            pin_checkpoint(storage, self.trial)  # (the lock is held: no trial has moved it on since `check`)
        for spec in reversed(self.specs):
            plan.add(spec)
        self.applied = True
        log(f"fork: {len(self.specs)} trial(s) from {self.trial} at step {step}: "
            + ", ".join(s.trial for s in self.specs))


def grown_config(cfg: RunConfig, texts: list[str]) -> tuple[RunConfig, dict[str, list[Any]]]:
    """The config `extend --set ...` makes of `cfg`, and what changed ({key: [old, new]}).

    Raises:
        ConfigError: A setting that extend cannot change, each named; or nothing to add.
    """
    raw = to_dict(cfg)
    for text in texts:
        set_dotted(raw, *parse_override(text))
    new = from_dict(raw, "extend --set")
    old_flat, new_flat = to_flat(cfg), to_flat(new)
    changes = {k: [old_flat[k], new_flat[k]] for k in old_flat if old_flat[k] != new_flat[k]}
    problems = []
    for key, (old, now) in changes.items():
        if key in ("seeds", "variants"):
            if gone := [v for v in old if v not in now]:
                problems.append(f"{key}: extend only adds; {gone} would be dropped")
        elif key == "sweep.grid":
            problems += grid_growth_problems(old, now)
        elif not key.startswith("sweep."):
            problems.append(f"{key}: {old!r} -> {now!r} would make the new trials incomparable with the old ones "
                            "(extend adds seeds, variants and grid values; fork changes a trial's training)")
    if problems:
        raise ConfigError("extend refused:\n" + "\n".join(f"  - {p}" for p in problems))
    if not any(k in changes for k in GROWS):
        raise ConfigError(f"extend: the --set values add nothing to the sweep (it has seeds {cfg.seeds}, variants "
                          f"{cfg.variants}, grid {cfg.sweep.grid or '{}'})")
    return new, changes


def grid_growth_problems(old: dict[str, list], new: dict[str, list]) -> list[str]:
    """What `extend` cannot do to a grid: new or removed axes (they rename every trial), dropped values."""
    out = [f"sweep.grid.{k}: a new grid axis would rename the sweep's trials; start a new sweep, or fork"
           for k in new if k not in old]
    out += [f"sweep.grid.{k}: extend only adds values; this axis would be dropped" for k in old if k not in new]
    for key in old.keys() & new.keys():
        if gone := [v for v in old[key] if v not in new[key]]:
            out.append(f"sweep.grid.{key}: extend only adds values; {gone} would be dropped")
    return out


@dataclass
class Extend:
    """`python -m sweep extend`: `check` grows the config (refusals first), `apply` records it."""

    sets: list[str]
    changes: dict[str, list[Any]] = field(default_factory=dict)
    grown: RunConfig | None = None
    applied: bool = False
    what = "extend"

    def check(self, cfg: RunConfig, storage: Storage) -> RunConfig:
        self.grown, self.changes = grown_config(cfg, self.sets)
        return self.grown

    def apply(self, plan: SweepPlan, storage: Storage, log: Log) -> None:
        storage.write_bytes(CONFIG_FILE, yaml.safe_dump(to_dict(self.grown), sort_keys=False).encode())
        plan.record({"event": "extend", "changes": self.changes})
        self.applied = True
        left = len(plan.specs) - len(plan.ended) - len(plan.skipped)
        log(f"extend: {'; '.join(f'{k} {old} -> {now}' for k, (old, now) in self.changes.items())}; "
            f"{left} trial(s) to run, and the rescues their noalign trials fork")


Growth = Fork | Extend
