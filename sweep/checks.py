"""Everything that can be checked before a sweep starts, for both engines (imports no Ray).

`check_out` refuses an output location (`--out`) a run cannot use, right after the config is loaded
and before any data is read or Ray starts, so a wrong --out costs nothing and leaves nothing
behind: a run writes into a new or empty directory (empty by `Storage.is_empty`, the rule
`sweep.storage.new_sweep` applies: nothing there but a driver's lock), never into one that holds
files; whether it is writable is tested by creating and at once removing one empty probe folder.
Cloud URIs (scheme://...) are left to sweep/storage.py, which opens them with pyarrow.

`check_run` refuses, with one error naming the problem, before any output is written or Ray
starts: a grid with unknown keys or a point whose config does not validate, a data set that is not
on disk, a backbone that cannot take the data set's images, a teacher cache that is missing or
whose hashes do not match. It loads every data set the sweep needs once and returns them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from models.vae import build
from sweep.config import ConfigError, RunConfig, from_flat, to_flat
from sweep.data import DataConfig, ImageData, load_data
from sweep.grid import grid_points, grid_problems
from sweep.lock import parse_holder, refuse_if_held
from sweep.plan import SweepPlan
from sweep.schema import LOCK_FILE
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
            point_cfg = spec.config(flat)
            read_warmup(point_cfg, spec, Storage(cfg.teacher.cache), datasets[data_key(point_cfg.data)].fingerprint())
    return datasets


def check_out(where: str) -> None:
    """Refuse an output location a run cannot use.

    Args:
        where: The --out argument (or the default runs/<name>-<time>).

    Raises:
        FileExistsError: `where` is a directory that already holds files.
        ConfigError: `where` is a file (or another non-directory), a broken symbolic link, lies
            under a file, or cannot be created or written.
    """
    if "://" in where:
        return
    path = Path(where)
    try:
        if path.is_symlink() and not path.exists():
            raise ConfigError(f"--out {where}: a broken symbolic link (to {os.readlink(path)}): "
                              "choose a new or empty directory")
        if path.exists():
            _check_existing(path, where)
        else:
            _check_new(path, where)
    except OSError as err:
        if isinstance(err, FileExistsError):
            raise
        raise ConfigError(f"--out {where}: cannot be used ({err.strerror or err})") from err


def _check_existing(path: Path, where: str) -> None:
    if not path.is_dir():
        raise ConfigError(f"--out {where}: exists and is a file, not a directory: choose a new or empty directory")
    lock = path / LOCK_FILE
    refuse_if_held(parse_holder(lock.read_bytes()) if lock.exists() else None, where)
    if not Storage(path).is_empty():  # the rule new_sweep applies: nothing there but a lock
        raise FileExistsError(f"output directory {where} already exists and is not empty: "
                              "choose another --out (nothing there was touched)")
    _check_writable(path, where)


def _check_new(path: Path, where: str) -> None:
    """The nearest existing ancestor must be a directory in which folders can be made."""
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {where}: {parent} is not a directory, so none can be made under it")
    _check_writable(parent, where)


def _check_writable(directory: Path, where: str) -> None:
    """Create and remove one empty folder in `directory` (os.access is no answer for root, nor for
    read-only or virtual filesystems)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".certsweep-probe-", dir=directory))
    except OSError as err:
        raise ConfigError(f"--out {where}: nothing can be created in {directory} ({err.strerror or err})") from err
