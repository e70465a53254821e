"""One driver per sweep (sweep/lock.py) and writes a full disk cannot damage (sweep/files.py), without
Ray: a live holder refuses a second driver with its name, a dead one's lock is taken over with a line
saying so, a lock at a URI expires with its heartbeat, and a failed append or write leaves the file
as it was."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.checks import check_out
from sweep.files import StorageFault, append_line, storage_fault, write_atomic
from sweep.lock import EXPIRY_S, SweepLock, SweepLocked, holder_state
from sweep.schema import LOCK_FILE
from sweep.storage import Storage


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_driver_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "sweep")
    first = SweepLock(storage, "python -m sweep run a.yaml").acquire(create=True)
    try:
        holder = json.loads((tmp_path / "sweep" / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "python -m sweep run a.yaml" and holder["started"] <= time.time()
        with pytest.raises(SweepLocked, match=rf"in use by another driver: pid {os.getpid()} on "
                                              rf"{socket.gethostname()} since .*\(python -m sweep run a.yaml\)"):
            SweepLock(storage, "python -m sweep resume").acquire()
        with pytest.raises(SweepLocked, match="in use by another driver"):  # `run --out` there too
            check_out(str(tmp_path / "sweep"))
    finally:
        first.release()
    assert not (tmp_path / "sweep").exists()  # made by acquire, empty: removed with the lock
    SweepLock(storage, "again").acquire(create=True).release()


def test_out_and_a_new_sweep_share_one_emptiness_rule(tmp_path: Path) -> None:
    """--out holding nothing but a dead driver's lock is empty for the pre-run check as for
    new_sweep; one more file makes it a place that holds files for both."""
    from sweep.storage import new_sweep

    out = tmp_path / "out"
    out.mkdir()
    gone = {"host": socket.gethostname(), "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pid": dead_pid(), "pid_start": 1, "command": "python -m sweep run x.yaml", "started": time.time() - 60,
            "heartbeat": time.time(), "token": "old"}
    (out / LOCK_FILE).write_text(json.dumps(gone))
    check_out(str(out))  # nothing there but a lock
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        check_out(str(out))
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        new_sweep(Storage(out), "name: x\n")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "notes.txt"]


def test_the_lock_of_a_dead_driver_is_taken_over_with_a_line(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.yaml").write_text("name: x\n")
    gone = {"host": socket.gethostname(), "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pid": dead_pid(), "pid_start": 1, "command": "python -m sweep run x.yaml", "started": time.time() - 60,
            "heartbeat": time.time(), "token": "old"}
    (tmp_path / "s" / LOCK_FILE).write_text(json.dumps(gone))
    assert holder_state(gone) == "its process is gone"
    lines: list[str] = []
    lock = SweepLock(Storage(tmp_path / "s"), "python -m sweep resume s", lines.append).acquire()
    (line,) = lines
    assert line.startswith("took over the lock of") and f"pid {gone['pid']}" in line and "its process is gone" in line
    assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["config.yaml"]  # the sweep's files stay
    mine = gone | {"pid": os.getpid(), "pid_start": 0}  # this pid, but another process's start time
    assert holder_state(mine) == "its pid belongs to another process now"


def test_a_lock_from_another_host_expires_with_its_heartbeat(tmp_path: Path) -> None:
    elsewhere = {"host": "node-7", "boot_id": "x", "pid": 1, "pid_start": 1, "command": "c", "started": 0.0}
    now = time.time()
    assert holder_state(elsewhere | {"heartbeat": now - 5}, now) is None  # alive, for all we can tell
    assert "heartbeat is" in holder_state(elsewhere | {"heartbeat": now - EXPIRY_S - 1}, now)
    uri = Storage(f"file://{tmp_path / 'bucket'}")
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / LOCK_FILE).write_text(json.dumps(elsewhere | {"heartbeat": now, "token": "t"}))
    with pytest.raises(SweepLocked, match="pid 1 on node-7"):
        SweepLock(uri, "resume").acquire()
    (tmp_path / "bucket" / LOCK_FILE).write_text(json.dumps(elsewhere | {"heartbeat": now - EXPIRY_S - 5}))
    lines: list[str] = []
    lock = SweepLock(uri, "resume", lines.append).acquire()
    assert "heartbeat is" in lines[0] and json.loads((tmp_path / "bucket" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "bucket" / LOCK_FILE).exists()


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.csv"
    append_line(path, "trial_id,status\nseed_0/full,finished\n")
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data) -> int:  # a short write, then the disk is full
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sweep.files.os.write", half_then_full)
    with pytest.raises(StorageFault, match=r"cannot write .*results.csv \(the filesystem at /.*\): No space left"):
        append_line(path, "seed_0/noalign,stopped\n")
    assert path.read_bytes() == before  # the 4 bytes written are cut back
    monkeypatch.undo()
    append_line(path, "seed_0/noalign,stopped\n")
    assert path.read_text().splitlines()[-1] == "seed_0/noalign,stopped"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_aside(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    write_atomic(path, "old")

    def full(fd: int) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr("sweep.files.os.fsync", full)
    with pytest.raises(StorageFault) as err:
        write_atomic(path, "new")
    assert err.value.path == str(path) and "Disk quota exceeded" in str(err.value)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_storage_faults_are_told_from_other_errors() -> None:
    inner = OSError(errno.EROFS, "Read-only file system", "/mnt/x/a")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("a trial failed") from e
    except RuntimeError as outer:
        found = storage_fault(outer)
    assert isinstance(found, StorageFault) and found.path == "/mnt/x/a" and "Read-only" in str(found)
    assert storage_fault(OSError("IOError: [errno 28] No space left on device")) is not None  # pyarrow's text
    assert storage_fault(OSError(errno.ENOENT, "No such file or directory")) is None
    assert storage_fault(ValueError("nan")) is None and storage_fault(None) is None
