"""A trial of the plan (sweep/plan.py): what it is, where it starts, and the config it trains with.

A `TrialSpec` is typed everywhere in the code; it becomes a JSON-able dict only where it leaves the
process: in plan.jsonl's events and as the config Ray Tune hands a trial (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sweep.config import RunConfig, from_flat


@dataclass(frozen=True)
class TrialSpec:
    """One trial of the plan."""

    trial: str
    """Its id and folder under the sweep directory, e.g. "seed_0/noalign-lam=5"."""
    stage: str
    """warmup | full | noalign | rescue | prefit | a baseline (sweep/variants.py)."""
    seed: int
    """The training seed."""
    overrides: dict[str, Any]
    """Dotted config keys of its grid point (only the warm-up's own keys for a warm-up; a fork's
    settings added for a fork)."""
    warm: str
    """The id of the warm-up whose state and teacher it starts from (its own id for a warm-up)."""
    teacher: str
    """The teacher artifact's folder under the sweep directory."""
    parent: dict[str, Any] | None = None
    """None, or {trial, checkpoint, step, reason}: where a rescue or a fork starts."""
    fork: str = ""
    """A fork's label, e.g. "noalign@471" (its parent and step; "" for the sweep's own trials)."""

    def config(self, base: dict[str, Any]) -> RunConfig:
        """Its resolved config: the sweep's flat config `base` (`sweep.config.to_flat`) at its grid point."""
        return from_flat(base | self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (plan.jsonl, Tune's trial config); a fork label only where there is one."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not data["fork"]:
            del data["fork"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        """Back from `to_dict`'s form (also a plan.jsonl written before `fork` existed)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)
