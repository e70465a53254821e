"""The sweep's trial graph: which trials a config asks for, and when each may start (imports no Ray).

METHOD.md, "Protocol": per seed, warm-up + teacher search come first; every downstream variant of
that seed (full, noalign, prefit, the baselines, and every grid point that leaves the warm-up alone)
starts once its teacher exists; a rescue starts from a noalign trial's checkpoint. The plan is plain
data, so the Ray searcher hands its specs to Tune, and a driver killed mid-sweep rebuilds it from
the config and its saved state.

A spec (the config of one Tune trial) is a JSON-able dict:
  trial      the trial's id and directory under the sweep directory, e.g. "seed_0/noalign-lam=5"
  stage      warmup | full | noalign | rescue | prefit | a baseline
  seed       the training seed
  overrides  dotted config keys of its grid point (only the warm-up's own keys for a warm-up)
  warm       id of the warm-up whose state and teacher it starts from
  teacher    the teacher artifact's folder under the sweep directory
  parent     None, or {trial, checkpoint, step, reason}: where a forked rescue starts
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from models.baselines import BASELINES
from sweep.config import RunConfig, from_flat, to_flat

ORDER = ("full", "noalign", "prefit", *BASELINES)  # planned up front; a rescue waits for its noalign
# Grid keys that change what the warm-up trains or what the teacher search fits. Every other key
# (lambda, alpha_KL, the witness, schedules of the downstream stages) shares one teacher per seed.
WITNESS_KEYS = ("model.witness", "model.head_hidden", "model.simplex_beta", "model.decoder_uses_teacher",
                "model.used_head")
WARMUP_KEYS = ("train.warmup_epochs", "train.batch_size", "train.lr")
NOT_GRID = ("name", "seeds", "variants", "eval.taus")
FINISHED = "FINISHED"


def warm_relevant(key: str) -> bool:
    """Whether grid key `key` changes the warm-up or the teacher search."""
    if key in WITNESS_KEYS:
        return False
    return key.startswith(("data.", "model.", "teacher.")) or key in WARMUP_KEYS


def grid_problems(cfg: RunConfig) -> list[str]:
    """Every problem of `cfg.sweep.grid`: unknown keys, keys that are no training axis, and grid
    points whose config does not validate (each named by its values)."""
    flat, out = to_flat(cfg), []
    for key in cfg.sweep.grid:
        if key not in flat:
            out.append(f"sweep.grid.{key}: not a config key")
        elif key in NOT_GRID or key.startswith(("sweep.", "scheduler.")):
            out.append(f"sweep.grid.{key}: not a training axis (seeds and variants are lists of their own)")
    if out:
        return out
    for point in grid_points(cfg):
        try:
            from_flat(flat | point)
        except ValueError as err:
            out.append(f"sweep.grid point {point}: {err}")
    return out


def grid_points(cfg: RunConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values (one empty point without a grid); eval.tau is no axis."""
    grid = {k: v for k, v in cfg.sweep.grid.items() if k != "eval.tau"}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def reported_taus(cfg: RunConfig) -> list[float]:
    """Every tau a report carries (eval.tau, eval.taus and a grid's eval.tau values), sorted."""
    return sorted({cfg.eval.tau, *cfg.eval.taus, *cfg.sweep.grid.get("eval.tau", [])})


def tag(point: dict[str, Any]) -> str:
    """'lam=5,alpha_kl=2' for {'train.lam': 5, 'train.alpha_kl': 2}; full keys where names clash."""
    names = [k.rsplit(".", 1)[-1] for k in point]
    return ",".join(f"{n if names.count(n) == 1 else k}={v}" for n, (k, v) in zip(names, point.items()))


def suffixed(name: str, point: dict[str, Any]) -> str:
    return f"{name}-{tag(point)}" if point else name


@dataclass
class SweepPlan:
    """Specs of one sweep and where each stands: issued to Tune, ended, or waiting for a teacher."""

    cfg: RunConfig
    warm_cached: bool = False
    """Warm-up and teacher come from an earlier run (fixed target with a cache): no warm-up trials."""
    specs: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    ended: dict[str, str] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    """Warm-ups whose state and teacher downstream trials can read."""

    def __post_init__(self) -> None:
        if not self.specs:
            self.specs = self._build()

    def _build(self) -> list[dict[str, Any]]:
        cfg, specs, warmups = self.cfg, [], {}
        variants = [v for v in ORDER if v in cfg.variants]
        for seed, point in itertools.product(cfg.seeds, grid_points(cfg)):
            warm_point = {k: v for k, v in point.items() if warm_relevant(k)}
            warm = suffixed(f"seed_{seed}/warmup", warm_point)
            if warm not in warmups:
                warmups[warm] = {"trial": warm, "stage": "warmup", "seed": seed, "overrides": warm_point,
                                 "warm": warm, "teacher": suffixed(f"seed_{seed}/teacher", warm_point),
                                 "parent": None}
                if not self.warm_cached:
                    specs.append(warmups[warm])
            specs += [{"trial": suffixed(f"seed_{seed}/{v}", point), "stage": v, "seed": seed,
                       "overrides": point, "warm": warm, "teacher": warmups[warm]["teacher"], "parent": None}
                      for v in variants]
        return specs

    def warmups(self) -> list[dict[str, Any]]:
        """One spec per distinct warm-up (also when they come from a cache)."""
        seen: dict[str, dict[str, Any]] = {}
        for s in self.specs:
            seen.setdefault(s["warm"], s | {"trial": s["warm"], "stage": "warmup", "parent": None})
        return list(seen.values())

    @property
    def wants_rescue(self) -> bool:
        return "rescue" in self.cfg.variants

    def max_trials(self) -> int:
        """An upper bound of the trials the sweep can make: its specs and one rescue per noalign."""
        return len(self.specs) + sum(s["stage"] == "noalign" for s in self.specs)

    def spec(self, trial_id: str) -> dict[str, Any] | None:
        return next((s for s in self.specs if s["trial"] == trial_id), None)

    def next_spec(self) -> dict[str, Any] | str | None:
        """The next spec to start, FINISHED when nothing is left, None while trials must end first."""
        issued, ready = set(self.issued), set(self.ready)
        # trials of a ready warm-up before new warm-ups: whole seeds end sooner, and few published
        # warm-ups wait in the object store for their trials (not every seed's at once)
        for s in itertools.chain((s for s in self.specs if s["stage"] != "warmup" and s["warm"] in ready),
                                 (s for s in self.specs if s["stage"] == "warmup")):
            if s["trial"] not in issued:
                self.issued.append(s["trial"])
                return s
        return FINISHED if self.finished() else None

    def finished(self) -> bool:
        """Every spec has been issued and has ended (specs that can never start are dropped by
        skip_blocked)."""
        issued = set(self.issued)
        return issued <= set(self.ended) and all(s["trial"] in issued for s in self.specs)

    def skip_blocked(self) -> list[str]:
        """Drop specs whose warm-up ended without a teacher; returns their ids."""
        failed = {w for w, status in self.ended.items() if status != "finished" and w not in self.ready}
        dropped = [s["trial"] for s in self.specs if s["trial"] not in self.issued and s["warm"] in failed]
        self.specs = [s for s in self.specs if s["trial"] not in dropped]
        return dropped

    def add_rescue(self, noalign_id: str, checkpoint: str, step: int, reason: str) -> dict[str, Any] | None:
        """Plan the rescue of a noalign trial from `checkpoint` (relative to the sweep directory).

        Returns:
            The rescue's spec, or None when that noalign trial already has one.
        """
        parent = self.spec(noalign_id)
        if parent is None or parent["stage"] != "noalign":
            raise ValueError(f"{noalign_id} is no noalign trial of this sweep")
        rescue_id = self.rescue_id(noalign_id)
        if self.spec(rescue_id) is not None:
            return None
        spec = parent | {"trial": rescue_id, "stage": "rescue",
                         "parent": {"trial": noalign_id, "checkpoint": checkpoint, "step": step, "reason": reason}}
        self.specs.append(spec)
        return spec

    @staticmethod
    def rescue_id(noalign_id: str) -> str:
        """seed_0/noalign-lam=5 -> seed_0/rescue-lam=5."""
        return noalign_id.replace("/noalign", "/rescue", 1)

    def end(self, trial_id: str, status: str) -> None:
        """Record that a trial ended: finished, stopped or error."""
        self.ended[trial_id] = status

    def warm_done(self, warm_id: str) -> bool:
        """No trial of this warm-up is left to run: nothing will read its state or teacher again."""
        return all(s["trial"] in self.ended for s in self.specs if s["warm"] == warm_id)

    def mark_ready(self, warm_id: str) -> None:
        if warm_id not in self.ready:
            self.ready.append(warm_id)

    def state(self) -> dict[str, Any]:
        """JSON-able progress (the config itself is rebuilt from the sweep's config.yaml)."""
        return {"specs": self.specs, "issued": self.issued, "ended": self.ended, "ready": self.ready}

    def load_state(self, state: dict[str, Any]) -> None:
        self.specs, self.issued = list(state["specs"]), list(state["issued"])
        self.ended, self.ready = dict(state["ended"]), list(state["ready"])

