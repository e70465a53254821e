"""Stopping a sweep (imports no torch or Ray): Ctrl-C or SIGTERM, and a storage fault.

A driver (`python -m sweep run / resume`) installs `STOP`'s handlers for SIGINT and SIGTERM, in
place of Python's KeyboardInterrupt, Ray Tune's own SIGINT handler (which ends the experiment and
advises `Tuner.restore`, which a sweep never uses) and Ray's C++ SIGTERM handler (which kills the
process with a stack dump).

  first signal   the sweep stops: `SweepStopped` is raised in the driver's main thread, at once by
                 the sequential engine (a row and its plan event are written together, never one
                 without the other: `deferred`), at the Tune loop's next step by the Ray engine
                 (`cooperative`); the driver stops its trials (their last checkpoints are on disk)
                 and its own Ray, releases the sweep's lock and prints how to continue
  second signal  at once: the registered hard-stop actions (kill the sweep's own Ray, release the
                 lock) and exit. Every file of a sweep is written aside and renamed or appended
                 whole (sweep/files.py), so nothing is left half written under its name. A driver
                 that has not stopped GRACE_S after the first signal (its main thread blocked in a
                 call that does not return, to a Ray that is gone, say) is stopped the same way, by a
                 watchdog thread that signals reach through Python's wakeup fd.
  storage fault  (sweep/files.py: a full disk, a quota, a read-only filesystem) stops the sweep
                 like a first signal, naming the path and the error, instead of failing trials.

`python -m sweep resume DIR` continues a stopped sweep: every trial once.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from sweep.files import storage_fault
from sweep.lock import SweepLock, command_line

if TYPE_CHECKING:
    from sweep.storage import Storage

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""A driver stopped by a signal exits as a shell reports it: 128 + the signal's number."""
EXIT_STORAGE_FAULT = 3
"""A driver stopped by a storage fault (README, "Usage": exit status)."""
GRACE_S = 20.0
"""How long a driver has after a first signal to stop by itself (README, "Stopping, resuming, a full disk")."""
FAULT_STATUS = "storage_fault"
"""The status of a Ray trial's report that it met a storage fault: the driver stops the sweep."""


class SweepStopped(Exception):
    """The sweep was stopped (a signal, a storage fault); `resume` continues it.

    Attributes:
        why: What stopped it: "interrupted (SIGINT)", or the storage fault's message.
        exit_code: 130 / 143 for SIGINT / SIGTERM, EXIT_STORAGE_FAULT for a storage fault.
    """

    def __init__(self, why: str, exit_code: int) -> None:
        super().__init__(why)
        self.why, self.exit_code = why, exit_code

    @property
    def fault(self) -> bool:
        return self.exit_code == EXIT_STORAGE_FAULT


def resume_command(out: str, sequential: bool = False) -> str:
    """The command that continues a stopped sweep at `out`."""
    import shlex

    return f"python -m sweep resume {shlex.quote(str(out).rstrip('/'))}" + (" --sequential" if sequential else "")


class Interrupts:
    """The stop state of this process's sweep and its signal handlers (see the module docstring)."""

    def __init__(self) -> None:
        self.installed = False
        self._exiting = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self.hint = ""  # what a stop prints last: the command that continues the sweep (the CLI's)
        self.own_ray = False  # this process started a Ray of its own: it kills it when it exits
        self.reset()

    def reset(self) -> None:
        """A new sweep in this process (tests run several): nothing requested, nothing registered."""
        self.requested: SweepStopped | None = None
        self.cooperative = False
        self._deferring = 0
        self._hard: list[Callable[[], None]] = []

    # --- the signals ---------------------------------------------------------------------------------

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here. Call again after `ray.init`, which installs its own."""
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # read by every tune.run: never its handler
        for sig in EXIT_CODES:
            signal.signal(sig, self._on_signal)
        if self._watchdog is None:
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._watchdog = threading.Thread(target=self._watch, args=(reader, writer), daemon=True,
                                              name="certsweep-stop-watchdog")
            self._watchdog.start()
        self.installed = True

    def _watch(self, reader: socket.socket, writer: socket.socket) -> None:
        """Signals as the C handler saw them (the main thread may be blocked in C++): the second
        one, or GRACE_S after the first, ends the process."""
        first: float | None = None
        while True:
            reader.settimeout(None if first is None else max(0.0, first + GRACE_S - time.monotonic()))
            try:
                got = reader.recv(16)
            except TimeoutError:
                self.hard_exit(self.requested.exit_code if self.requested else 130,
                               f"the sweep did not stop within {GRACE_S:g}s: stopping at once")
                return
            for signum in got:
                if signum not in EXIT_CODES:
                    continue
                if first is not None:
                    self.hard_exit(EXIT_CODES[signum], f"{signal.Signals(signum).name} again: stopping at once")
                first = time.monotonic()

    def reinstall(self) -> None:
        """After a library replaced the handlers (ray.init does), where they were installed."""
        if self.installed:
            self.install()

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and not self.requested.fault:
            self.hard_exit(EXIT_CODES[signum], f"{name} again: stopping at once")
        self.requested = SweepStopped(f"interrupted ({name})", EXIT_CODES[signum])
        if not self.cooperative and not self._deferring:
            raise self.requested

    def hard_exit(self, code: int, why: str) -> None:
        """Run the hard-stop actions (each on its own: one failing does not keep the next from
        running) and exit with `code` without unwinding (no other thread is waited for)."""
        if not self._exiting.acquire(blocking=False):
            return  # the other thread (handler or watchdog) is exiting already
        print(f"\n{why}", file=sys.stderr, flush=True)
        for action in reversed(self._hard):
            try:
                action()
            except BaseException:  # noqa: BLE001 - exiting whatever happens
                pass
        if self.hint:
            print(self.hint, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)

    def on_hard_exit(self, action: Callable[[], None]) -> None:
        """Register what a second signal must still do (kill the sweep's Ray, release the lock)."""
        self._hard.append(action)

    # --- the stop itself ---------------------------------------------------------------------------

    def fault(self, why: str) -> None:
        """A storage fault (or the sweep's lock lost): stop as after a first signal (a signal
        already received wins)."""
        if self.requested is None:
            self.requested = SweepStopped(why, EXIT_STORAGE_FAULT)

    def absorb(self, err: BaseException) -> bool:
        """Whether `err` is a storage fault, then requested as the stop (inside Tune's callbacks,
        whose errors Tune would blame on a trial and retry)."""
        fault = storage_fault(err)
        if fault is not None:
            self.fault(str(fault))
        return fault is not None

    @contextmanager
    def absorbing(self) -> Iterator[None]:
        """A block whose storage faults become the sweep's stop (`absorb`)."""
        try:
            yield
        except OSError as err:
            if not self.absorb(err):
                raise

    @contextmanager
    def stopping_on_faults(self) -> Iterator[None]:
        """A driver's block whose storage faults stop the sweep: raised as SweepStopped (exit 3)."""
        try:
            yield
        except OSError as err:
            if not self.absorb(err):
                raise
            raise self.requested from None

    @property
    def stopping(self) -> bool:
        return self.requested is not None

    def check(self) -> None:
        """Raise SweepStopped if the sweep was asked to stop."""
        if self.requested is not None:
            raise self.requested

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a first signal does not interrupt (it stops the sweep right after)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and not self.cooperative:
            self.check()


STOP = Interrupts()
"""This process's sweep stop (one driver per process)."""


@contextmanager
def driving(storage: Storage, log: Callable[[str], None] = print, new: bool = False) -> Iterator[SweepLock]:
    """What a driver of the sweep at `storage` runs inside: the sweep's lock (sweep/lock.py, refused
    with SweepLocked while another driver holds it; `new`: the folder is made if missing), a stop
    state of its own, and the lock released however it ends (a second signal included)."""
    STOP.reset()
    lock = SweepLock(storage, command_line(), log).acquire(create=new)
    lock.on_lost = STOP.fault
    STOP.on_hard_exit(lock.release)
    try:
        yield lock
    finally:
        lock.release()


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, now (ps: Linux and macOS alike)."""
    try:
        ps = subprocess.Popen(["ps", "-A", "-o", "pid=,ppid="], stdout=subprocess.PIPE, text=True)
        table, _ = ps.communicate(timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        if child != ps.pid:
            children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def kill_descendants() -> list[int]:
    """SIGKILL every process this one started, and theirs (a local Ray: its GCS, raylet, agents
    and workers, which live in process groups of their own). All are stopped (SIGSTOP) first, until
    the tree holds still: a raylet that saw its agents die would start new ones, orphans that no
    kill would reach. Returns their pids."""
    found: list[int] = []
    for _ in range(10):
        new = [pid for pid in descendants(os.getpid()) if pid not in found]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        found += new
    for pid in found:
        _signal(pid, signal.SIGKILL)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


@contextmanager
def shielded_children() -> Iterator[None]:
    """SIGTERM blocked in this process while it starts processes that a SIGTERM to its process
    group must not reach (they inherit the mask: the sweep's own Ray's GCS and raylet, which would
    shut down and take the driver with them before it could stop the sweep; Ray itself blocks
    SIGINT for them the same way). A SIGTERM that arrives meanwhile is delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_process(code: int) -> None:
    """End the CLI's process: with a Ray of its own, kill that Ray (SIGKILL: its node processes
    ignore SIGTERM, see `shielded_children`, and a sweep that ended has nothing left for a graceful
    shutdown to save) and exit without Ray's exit handler, which would wait on it. Otherwise a
    normal exit (exit handlers run), with every object there is frozen out of the garbage collector
    first: the interpreter's last collections would walk the millions of objects torch's modules
    hold, about 1.4 s of a 1.8 s exit, to free memory the process gives back whole anyway. Every
    file the command wrote is closed by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    if STOP.own_ray:
        kill_descendants()
        os._exit(code)
    gc.freeze()
    sys.exit(code)


def freeze_at_exit() -> None:
    """For a process that others end, e.g. a Ray worker hosting trial actors (its task loop returns
    and it calls sys.exit when Tune lets its actor go, as at each segment's end): freeze every
    object out of the garbage collector when it exits, before the exit handlers registered earlier
    (Ray's) run, for `exit_process`'s reason. A trial actor holding torch took 2.3-3.1 s to exit,
    on a core that the next segment's trial actors were starting on; 0.3-0.5 s with this. Calling it
    again changes nothing."""
    global _freezes_at_exit
    if not _freezes_at_exit:
        atexit.register(gc.freeze)
        _freezes_at_exit = True


_freezes_at_exit = False
