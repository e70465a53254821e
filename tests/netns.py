"""Run a test scenario inside a fresh loopback-only network namespace.

Ray scenarios with several nodes (tests/cluster.py) must not be reachable from, or reach, any
other Ray on this machine: other engineers' and CI's test runs start clusters at the same time,
and Ray finds "the" cluster by address files and by scanning processes. A scenario therefore runs
as its own script under

    unshare -n bash -c 'ip link set lo up && exec python SCRIPT ARGS...'

so that its only network is a private `lo` (127.0.0.1 and ::1, no route anywhere else) that no
process outside the namespace can connect to.

`run_in_netns` starts that command in a session of its own and, when it ends or runs past its
timeout, kills the session and then every process still inside the namespace or still carrying
the run's marker environment variable. Ray node processes are started with `setsid` (a session
each) and Ray's core workers put themselves into process groups of their own, so a session kill
alone would miss them. The namespace catches them all; the marker (inherited environment) is a
second net, though not a complete one: Ray's agents rename themselves with setproctitle, which
can overwrite what /proc/PID/environ shows. What it had to kill is returned as `leftovers`: a
scenario that cleaned up after itself leaves none.

Unsharing a network namespace needs root (CAP_SYS_ADMIN), `unshare` (util-linux) and `ip`
(iproute2). CI runs as root, so a test does not skip without them: `require_unshare()` fails it
with a message that says what is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable that marks every process started (directly or not) by one netns run.
RUN_MARKER = "CERTSWEEP_NETNS_RUN"

#: Environment variable naming the file where the namespace's id (readlink /proc/self/ns/net)
#: is written from inside, so that the run can find every process left in the namespace.
NETNS_FILE = "CERTSWEEP_NETNS_FILE"

#: The command run inside the namespace: bring up loopback, note the namespace, become the
#: scenario.
_INNER = ('ip link set lo up && readlink /proc/self/ns/net > "$CERTSWEEP_NETNS_FILE" '
          '&& exec "$0" "$@"')


@dataclass
class RunResult:
    """What a scenario run left: exit status, output, and the processes that outlived it."""

    rc: int
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool = False
    #: pids that still carried the run's marker after the scenario ended (then killed)
    leftovers: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """rc, time and the tails of both streams: for an assertion message."""
        return (f"rc={self.rc} timed_out={self.timed_out} elapsed={self.elapsed:.1f}s "
                f"leftovers={self.leftovers}\n--- stdout (tail)\n{self.stdout[-4000:]}"
                f"\n--- stderr (tail)\n{self.stderr[-6000:]}")


def can_unshare() -> tuple[bool, str]:
    """Whether this process can make a network namespace; the reason when it cannot.

    Checks the tools and root, then really tries (`unshare -n true`): a container may be root yet
    lack CAP_SYS_ADMIN.
    """
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found (packages util-linux, iproute2)"
    if os.geteuid() != 0:
        return False, f"not root (euid {os.geteuid()}): unshare -n needs CAP_SYS_ADMIN"
    try:
        probe = subprocess.run(["unshare", "-n", "bash", "-c", "ip link set lo up"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"unshare -n failed to run: {exc!r}"
    if probe.returncode != 0:
        return False, f"unshare -n exited {probe.returncode}: {probe.stderr.strip()}"
    return True, ""


def require_unshare() -> None:
    """Fail (not skip) when a loopback-only namespace cannot be made: CI runs as root, so a
    missing capability is a broken machine, not a reason to skip."""
    ok, why = can_unshare()
    assert ok, ("this test runs a Ray cluster inside a loopback-only network namespace "
                f"(unshare -n) and cannot here: {why}. Run it as root on Linux.")


def marked_pids(name: str, value: str | None = None) -> list[int]:
    """pids (not this process) whose environment has `name`, or `name=value` exactly.

    Reads /proc/PID/environ, which is the environment a process started with: root reads any.
    Processes that end while being read are skipped.
    """
    key = name.encode() + b"="
    want = None if value is None else key + value.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item == want if want else item.startswith(key) for item in env):
            found.append(int(entry.name))
    return found


def kill_marked(name: str, value: str | None = None, *, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process marked `name[=value]` until none is left or `timeout` passes.

    Returns every pid it found (and killed). Repeats because a process can fork while the first
    pass runs.
    """
    return kill_until_gone(lambda: [pid for pid in marked_pids(name, value) if not _is_zombie(pid)], timeout)


def kill_until_gone(find, timeout: float) -> list[int]:
    """SIGKILL what `find()` lists, again and again (a process can fork meanwhile), until it lists
    nothing or `timeout` passes. Returns every pid it killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = find()
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if pid not in killed:
                killed.append(pid)
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    """A dead process not yet reaped by its parent: it holds no resources and cannot be killed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def netns_pids(netns: str) -> list[int]:
    """pids (not this process) whose network namespace is `netns` ("net:[4026532...]")."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/net") == netns and not _is_zombie(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_netns(netns: str, *, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process in network namespace `netns` until none is left (or `timeout`)."""
    if netns == os.readlink("/proc/self/ns/net"):
        raise ValueError("refusing to kill every process of this process's own namespace")
    return kill_until_gone(lambda: netns_pids(netns), timeout)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (started with start_new_session, so pgid == pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_session(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
                cwd: str | os.PathLike | None = None) -> RunResult:
    """Run `argv` in a new session with a wall-clock limit; kill its whole group when it ends.

    The group is killed also after a normal exit, so that a background child of the command
    cannot outlive it. Processes that left the group (setsid) are not reached: see run_in_netns.
    """
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_session(proc)
        stdout, stderr = proc.communicate()
    except BaseException:
        kill_session(proc)
        proc.wait()
        raise
    finally:
        kill_session(proc)
    return RunResult(proc.returncode, stdout, stderr, time.monotonic() - start, timed_out)


def run_in_netns(script: str | os.PathLike, *args: str, timeout: float,
                 env: dict[str, str] | None = None, python: str | None = None,
                 cwd: str | os.PathLike | None = None) -> RunResult:
    """Run `python SCRIPT ARGS` in a new loopback-only network namespace, in its own session.

    Args:
        script: the scenario script.
        args: its arguments.
        timeout: seconds of wall clock; past it the session is killed (rc then is -9).
        env: the scenario's environment (default: this process's); the run marker is added.
        python: the interpreter (default: this one).
        cwd: its working directory.

    Returns:
        The RunResult. Every process still in the namespace, or still carrying the run's marker,
        once the scenario has ended (Ray nodes it did not stop, their workers) is SIGKILLed and
        listed in `leftovers`.
    """
    run_env = dict(os.environ if env is None else env)
    marker = uuid.uuid4().hex
    fd, ns_file = tempfile.mkstemp(prefix="netns-", suffix=".id")
    os.close(fd)
    run_env[RUN_MARKER] = marker
    run_env[NETNS_FILE] = ns_file
    argv = ["unshare", "-n", "bash", "-c", _INNER, python or sys.executable, str(script),
            *map(str, args)]
    try:
        result = run_session(argv, timeout=timeout, env=run_env, cwd=cwd)
    finally:
        netns = Path(ns_file).read_text().strip()
        os.unlink(ns_file)
        leftovers = kill_netns(netns) if netns.startswith("net:") else []
        leftovers += [pid for pid in kill_marked(RUN_MARKER, marker) if pid not in leftovers]
    result.leftovers = leftovers
    return result
