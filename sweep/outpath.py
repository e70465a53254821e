"""The pre-run check of a run's output location (`--out`, README "Usage").

A run writes into a new or empty directory, never into a place that already holds files. The check
runs right after the config is loaded, before any data is read or Ray starts, so a wrong --out costs
nothing and leaves nothing behind: whether the location is writable is tested by creating and at once
removing one empty probe folder. Cloud URIs (scheme://...) are left to sweep/storage.py, which opens
them with pyarrow. Imports no Ray and no torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sweep.config import ConfigError
from sweep.lock import parse_holder, refuse_if_held
from sweep.schema import LOCK_FILE


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
    if any(path.iterdir()):
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
