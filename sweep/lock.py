"""One driver per sweep: the lock DIR/driver.lock (imports no torch or Ray).

Every command that drives a sweep (`run`, `resume`) holds its directory's lock while it runs. The
lock is a small JSON file naming its holder: host, boot id, pid and that process's start time, the
command, when it started, and a heartbeat that the holder refreshes every HEARTBEAT_S seconds. A
second driver is refused with one line naming the holder, before it writes anything or starts Ray.

When is a lock left behind (its driver SIGKILLed, its machine lost) taken over, with a line saying so?
  same host       when the holder's pid is gone, or is another process now (its start time differs)
  another host,   when its heartbeat is older than EXPIRY_S: a shared filesystem or a URI cannot
  or a URI        show whether a process on another machine lives (the clocks of the machines must
                  agree to within a minute or so)

A directory's lock is made with O_CREAT | O_EXCL (atomic, NFS included). At a URI there is no
atomic create: the driver writes the lock and reads it back, and its heartbeat checks that the lock
is still its own; a driver that finds another's lock in place of its own stops its sweep
(`on_lost`), so two drivers started in the same instant at one URI overlap by a heartbeat at most.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sweep.schema import LOCK_FILE

if TYPE_CHECKING:
    from sweep.storage import Storage

HEARTBEAT_S = 15.0
EXPIRY_S = 120.0
Log = Callable[[str], None]


class SweepLocked(Exception):
    """Another driver holds the sweep; the message names it."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def describe(holder: dict[str, Any]) -> str:
    """'pid 4242 on host-a since 2026-12-02 06:10:03 (python -m sweep resume runs/x)'."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({holder.get('command', '?')})"


def holder_state(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why the driver that wrote `holder` is gone, or None while it may still run."""
    if holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id():
        ticks = start_ticks(int(holder.get("pid", -1)))
        if ticks is None:
            return "its process is gone"
        return None if ticks == holder.get("pid_start") else "its pid belongs to another process now"
    age = (time.time() if now is None else now) - float(holder.get("heartbeat", 0))
    return f"its heartbeat is {age:.0f}s old (over {EXPIRY_S:.0f}s)" if age > EXPIRY_S else None


class SweepLock:
    """The lock of one sweep location, held by this process from `acquire` to `release`.

    Args:
        storage: The sweep's location (a directory, or a URI).
        command: What this driver runs, for the message a second driver gets.
        log: Where the take-over of a lock left by a dead driver is said.
    """

    def __init__(self, storage: Storage, command: str, log: Log = print) -> None:
        self.storage, self.log = storage, log
        self.mine = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                     "pid_start": start_ticks(os.getpid()), "command": command, "started": time.time(),
                     "heartbeat": time.time(), "token": uuid.uuid4().hex}
        self.created_dir = False  # acquire made the sweep directory: release removes it while empty
        self.on_lost: Callable[[str], None] = lambda why: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the file, in a directory or at a URI ----------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        return read_holder(self.storage)

    def _create(self) -> bool:
        """Write the lock if there is none; whether this process holds it now."""
        data = json.dumps(self.mine).encode()
        if self.storage.remote:
            if self._read() is not None:
                return False
            self.storage.write_bytes(LOCK_FILE, data)
            return (self._read() or {}).get("token") == self.mine["token"]
        try:
            fd = os.open(self.storage.path(LOCK_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _break(self, holder: dict[str, Any]) -> bool:
        """Remove a dead driver's lock, unless another driver replaced it meanwhile."""
        if self.storage.remote:
            self.storage.delete(LOCK_FILE)
            return True
        aside = self.storage.path(f"{LOCK_FILE}.{self.mine['token']}")
        try:
            os.rename(self.storage.path(LOCK_FILE), aside)  # atomic: one driver of several wins
        except FileNotFoundError:
            return False
        taken = json.loads(aside.read_bytes() or b"{}")
        if taken.get("token") != holder.get("token"):  # a live driver's, made after our read: put it back
            try:
                os.link(aside, self.storage.path(LOCK_FILE))
            except FileExistsError:
                pass
        aside.unlink()
        return taken.get("token") == holder.get("token")

    # --- the driver's side -------------------------------------------------------------------------

    def acquire(self, create: bool = False) -> "SweepLock":
        """Hold the sweep, taking over a lock left by a dead driver (saying so).

        Args:
            create: Make the sweep's folder if there is none (a new sweep; `release` removes it
                again while it is empty).

        Raises:
            SweepLocked: A live driver holds it.
        """
        if create and not self.storage.remote and not self.storage.local.exists():
            self.storage.local.mkdir(parents=True)
            self.created_dir = True
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return self
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            refuse_if_held(holder, str(self.storage))
            gone = holder_state(holder)
            if self._break(holder):
                self.log(f"took over the lock of {self.storage} from a driver that is gone ({describe(holder)}: "
                         f"{gone})")
        raise SweepLocked(f"{self.storage}: its lock keeps changing hands; another driver is starting there")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="certsweep-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = self._read()
                if holder is None or holder.get("token") != self.mine["token"]:
                    self.on_lost(f"the lock of {self.storage} was taken by "
                                 f"{describe(holder) if holder else 'nobody (it was removed)'}")
                    return
                self.mine["heartbeat"] = time.time()
                self.storage.write_bytes(LOCK_FILE, json.dumps(self.mine).encode())
            except OSError:
                continue  # a full disk: the sweep stops on its own writes; the pid check still holds

    def release(self) -> None:
        """Give the sweep up (the lock file goes, if it is still this driver's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self.mine["token"]:
                self.storage.delete(LOCK_FILE)
        except OSError:
            pass  # a lock that cannot be removed names a dead process: the next driver takes it over
        if self.created_dir:
            try:
                self.storage.local.rmdir()  # only while empty: a sweep that never started leaves nothing
            except OSError:
                pass


def read_holder(storage: Storage) -> dict[str, Any] | None:
    """The lock's content (None: no lock)."""
    return parse_holder(storage.read_bytes(LOCK_FILE))


def parse_holder(data: bytes | None) -> dict[str, Any] | None:
    """A lock file's content (None: no lock); an unreadable lock names no live driver."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"host": "?", "pid": "?", "command": "an unreadable lock file", "heartbeat": 0}


def refuse_if_held(holder: dict[str, Any] | None, where: str) -> None:
    """Raise SweepLocked when `holder` is a live driver's lock of `where`."""
    if holder is not None and holder_state(holder) is None:
        raise SweepLocked(f"{where} is in use by another driver: {describe(holder)}; wait for it to end, "
                          "or stop it")


def command_line() -> str:
    """This process's command, as its user typed it: 'python -m sweep resume runs/x'."""
    import shlex
    import sys

    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("sweep", "__main__.py")):
        argv[0:1] = ["python", "-m", "sweep"]
    return shlex.join(argv)
