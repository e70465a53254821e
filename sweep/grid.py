"""A sweep's grid (`sweep.grid`): its points, their labels, and what of it the config refuses
(imports no torch or Ray).

Every seed runs every grid point. A grid key either changes the warm-up and the teacher search
(`warm_relevant`: data, the backbone, the teacher, warm-up schedule) or only the downstream stages
(lambda, alpha_KL, the witness, ...), which then share one warm-up and teacher per seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Any

from models.vae import WARMUP_META
from sweep.config import RunConfig, from_flat, to_flat
from sweep.schema import point_label

WARMUP_SECTIONS = ("data", "model", "teacher")
"""Sections whose keys change the warm-up unless their field says otherwise (`WARMUP_META`)."""
NOT_GRID = ("name", "seeds", "variants", "eval.taus", "eval.alpha")
"""Keys that are no grid axis: the sweep's own, the reported taus, and eval.alpha (the error rate
of the whole sweep: its Benjamini-Hochberg step controls one false-discovery rate over all rows)."""


def warm_relevant(key: str) -> bool:
    """Whether grid key `key` changes the warm-up or the teacher search: its config field's
    `WARMUP_META` metadata (the witness keys of model.* say no, the warm-up's train.* keys yes),
    else its section's rule (`WARMUP_SECTIONS`)."""
    section, _, name = key.partition(".")
    default = section in WARMUP_SECTIONS
    part = typing.get_type_hints(RunConfig).get(section)
    if not dataclasses.is_dataclass(part):
        return default
    found = {f.name: f for f in dataclasses.fields(part)}.get(name)
    return found.metadata.get(WARMUP_META, default) if found else default


def grid_points(cfg: RunConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values (one empty point without a grid); eval.tau is no axis:
    every tau is reported from the same run's bare margin."""
    grid = {k: v for k, v in cfg.sweep.grid.items() if k != "eval.tau"}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def grid_problems(cfg: RunConfig) -> list[str]:
    """Every problem of `cfg.sweep.grid`: unknown keys, keys that are no training axis, and grid
    points whose config does not validate (each named by its values)."""
    flat, out = to_flat(cfg), []
    for key in cfg.sweep.grid:
        if key not in flat:
            out.append(f"sweep.grid.{key}: not a config key")
        elif key == "eval.alpha":
            out.append("sweep.grid.eval.alpha: not a grid axis: alpha is the error rate of the whole sweep (its "
                       "false-discovery control uses one alpha for every row); set eval.alpha")
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


def suffixed(name: str, point: dict[str, Any]) -> str:
    """A trial's id at a grid point: 'seed_0/full-lam=5' ('seed_0/full' without a grid)."""
    return f"{name}-{point_label(point)}" if point else name
