"""Writing a sweep's files so that nothing written is lost or half written, and telling a storage
fault (a full disk, a quota, a read-only filesystem) from a trial's own failure. Imports nothing
heavy: results.csv's module and the analysis share it without torch or Ray.

  write_atomic  a file whole or not at all (aside, synced, renamed)
  append_line   lines appended whole or not at all (a failed append is cut back)
  cut_partial_line  the half line a killed process left at the end of a file, cut
  StorageFault  the OSError of a write the storage refused, naming the path and its filesystem
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

FAULT_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only"}
"""Storage faults: errors of the place a sweep writes to, not of a trial. They stop the sweep
(sweep/interrupt.py) instead of failing trials, which would only fail again."""
_FAULT_TEXT = ("no space left on device", "disk quota exceeded", "read-only file system")


class StorageFault(OSError):
    """A write the sweep's storage refused for want of space or write access (FAULT_ERRNOS); the
    message names the path and, for a local path, the filesystem it is on."""

    def __init__(self, err: OSError, path: str | Path | None = None) -> None:
        where = str(path or err.filename or "")
        text = (err.strerror or str(err)).strip()
        mount = _mount_point(where) if where and "://" not in where else None
        on = f" (the filesystem at {mount})" if mount else ""
        super().__init__(err.errno, f"cannot write {where or 'the sweep'}{on}: {text}")
        self.path = where

    def __str__(self) -> str:
        return self.strerror  # the message names the error; no "[Errno 28]" before it


def _mount_point(path: str) -> str | None:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def storage_fault(err: BaseException | None) -> StorageFault | None:
    """The storage fault `err` is or was caused by (its __cause__ / __context__ chain, and the text
    of errors that crossed a process boundary as strings), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, StorageFault):
            return err
        if isinstance(err, OSError) and (err.errno in FAULT_ERRNOS
                                         or any(t in str(err).lower() for t in _FAULT_TEXT)):
            return StorageFault(err)
        err = err.__cause__ or err.__context__
    return None


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all: aside, synced, then renamed over `path`. A write that fails
    (a full disk) leaves `path` as it was and no file aside; a storage fault names `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # a read-only filesystem refuses even that: nothing is aside then
            tmp.unlink(missing_ok=True)
        raise named_fault(err, path) from err


def append_line(path: Path, text: str) -> None:
    """Append `text` (whole lines) to `path`, synced; a write that fails (a full disk) is cut back,
    so the file keeps exactly what it had and the next append starts on a line of its own."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)  # frees blocks: needs no space
            raise named_fault(err, path) from err
    finally:
        os.close(fd)


def named_fault(err: OSError, path: str | Path) -> OSError:
    """`err` of a write to `path`: a storage fault naming `path`, any other error as it was."""
    return StorageFault(err, path) if storage_fault(err) is not None else err


def cut_partial_line(path: Path) -> bool:
    """Cut a last line that a killed process left without its newline (half written), so the
    next line starts on a line of its own. Returns whether anything was cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
    return True
