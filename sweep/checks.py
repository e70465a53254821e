"""Everything that can be checked before a sweep starts, for both engines (imports no Ray).

`check_run` refuses, with one error naming the problem, before any output is written or Ray
starts: a grid with unknown keys or a point whose config does not validate, a data set that is not
on disk, a backbone that cannot take the data set's images, a teacher cache that is missing or
whose hashes do not match. It loads every data set the sweep needs once and returns them.
"""

from __future__ import annotations

import dataclasses
import json

from models.vae import build
from sweep.config import ConfigError, RunConfig, from_flat, to_flat
from sweep.data import DataConfig, ImageData, load_data
from sweep.grid import grid_points, grid_problems
from sweep.plan import SweepPlan
from sweep.stage import read_warmup, uses_cache
from sweep.storage import Storage


def data_key(data: DataConfig) -> str:
    """Trials whose data sections agree share one copy of the data set."""
    return json.dumps(dataclasses.asdict(data), sort_keys=True)


def check_run(cfg: RunConfig) -> dict[str, ImageData]:
    """Check every grid point of `cfg` and load its data sets.

    Returns:
        The data sets by `data_key`.

    Raises:
        ConfigError, DataNotFoundError, TeacherCacheError, CheckpointError, ValueError: the first
        problem found, naming it.
    """
    problems = grid_problems(cfg)
    if problems:
        raise ConfigError("sweep.grid has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    flat, datasets = to_flat(cfg), {}
    for point in grid_points(cfg):
        point_cfg = from_flat(flat | point)
        key = data_key(point_cfg.data)
        if key not in datasets:
            datasets[key] = load_data(point_cfg.data)
        build(point_cfg.model, datasets[key].shape, max(point_cfg.teacher.ks))
    if uses_cache(cfg):  # every cached warm-up and teacher the sweep will read
        for spec in SweepPlan(cfg, warm_cached=True).warmups():
            point_cfg = from_flat(flat | spec["overrides"])
            read_warmup(point_cfg, spec, Storage(cfg.teacher.cache), datasets[data_key(point_cfg.data)].fingerprint())
    return datasets
