"""A sweep stays whole under what users do to it (README, "Stopping, resuming, a full disk"), as a
user does it: the driver runs in a process group of its own, as in a terminal, and gets SIGINT or
SIGTERM there; a second driver starts beside it; its --out fills up. Every scenario ends with
`resume` and every trial once. Synchronised on files and exit statuses, never on sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from sweep.interrupt import descendants
from sweep.lock import start_ticks
from sweep.schema import LOCK_FILE
from tests.conftest import rows, tiny_raw
from tests.netns import _is_zombie

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"PYTHONPATH": str(ROOT)}
TRIALS = ["seed_0/full", "seed_0/noalign", "seed_0/rescue"]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def config(tmp_path: Path, epochs: int = 40) -> Path:
    raw = tiny_raw(warmup_epochs=1, epochs=epochs, rescue_epochs=3, batch_size=64, lr=0.005, lam=20.0, threads=1)
    raw |= {"seeds": [0], "scheduler": {"collapse_patience": 0}, "sweep": {"console_every_s": 60}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Driver:
    """`python -m sweep ARGV` in a session of its own (a terminal's foreground group); its output in files."""

    def __init__(self, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / "stdout", logs / "stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "sweep", *argv], cwd=ROOT, env=env or ENV,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        self.pids: dict[int, int | None] = {}

    @property
    def output(self) -> str:
        return self.out_path.read_text() + self.err_path.read_text()

    def wait_for(self, ready, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the driver ended (rc {self.proc.returncode}) before {what}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{self.output[-3000:]}"
            time.sleep(0.05)

    def snapshot(self) -> None:
        """Remember every process of the run (pid and start time: a pid can be reused later)."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            self.pids.setdefault(pid, start_ticks(pid))

    def signal(self, sig: int) -> float:
        """Send `sig` to the whole group, as a terminal does."""
        self.snapshot()
        os.killpg(self.proc.pid, sig)
        return time.monotonic()

    def left(self) -> list[int]:
        """Processes of the run still running (not zombies, and still the same processes)."""
        return [pid for pid, start in self.pids.items()
                if start is not None and start_ticks(pid) == start and not _is_zombie(pid)]

    def kill(self) -> None:
        """SIGKILL it and everything it started (a test's clean-up, or a driver killed on purpose)."""
        if self.proc.poll() is None:
            self.snapshot()
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # frozen first: a raylet would restart its agents
            for pid in self.left():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        self.proc.wait()


def metrics_lines(out: Path, trial: str) -> int:
    path = out / trial / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def resume(out: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", "resume", out, *extra], cwd=ROOT, env=ENV,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def assert_every_trial_once(out: Path, before: list[dict[str, str]]) -> None:
    after = rows(out)
    assert sorted(r["trial_id"] for r in after) == TRIALS, [r["trial_id"] for r in after]
    assert after[:len(before)] == before  # rows written before the stop are kept as they were
    assert {r["status"] for r in after} <= {"finished", "stopped"}
    for row in after:  # each report point once, up to the step of the row
        epochs = [json.loads(line)["epoch"] for line in (out / row["trial_dir"] / "metrics.jsonl").open()]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs[-1] == int(row["epoch"])


@pytest.mark.parametrize(("engine", "sig"), [pytest.param("ray", signal.SIGINT, marks=pytest.mark.ray),
                                             pytest.param("ray", signal.SIGTERM, marks=pytest.mark.ray),
                                             pytest.param("sequential", signal.SIGINT, marks=pytest.mark.slow),
                                             pytest.param("sequential", signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["ray-SIGINT", "ray-SIGTERM", "sequential-SIGINT", "sequential-SIGTERM"])
def test_a_signal_stops_the_sweep_and_resume_completes_every_trial_once(tmp_path: Path, engine: str,
                                                                        sig: int) -> None:
    out, flags = tmp_path / "sweep", ["--sequential"] if engine == "sequential" else []
    driver = Driver(["run", str(config(tmp_path)), "--out", str(out), *flags], tmp_path / "logs")
    try:
        driver.wait_for(lambda: metrics_lines(out, "seed_0/full") >= 3, "3 reports of seed_0/full")
        sent = driver.signal(sig)
        assert driver.proc.wait(timeout=30) == EXIT[sig]
        while driver.left() and time.monotonic() < sent + 30:
            time.sleep(0.05)
        assert not driver.left(), f"processes of the run still there 30 s after the signal: {driver.left()}"
    finally:
        driver.kill()
    err = driver.err_path.read_text()
    expected = f"stopped; continue with: python -m sweep resume {out}" + (" --sequential" if flags else "")
    assert err.strip().splitlines()[-1] == expected, driver.output[-3000:]
    assert "Traceback" not in driver.output and "Tuner.restore" not in driver.output, driver.output[-3000:]
    assert not (out / LOCK_FILE).exists()
    before = rows(out)
    assert "seed_0/full" not in {r["trial_id"] for r in before}  # stopped mid-trial: no row, it goes on
    done = resume(str(out), *flags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_every_trial_once(out, before)


@pytest.mark.ray
def test_a_second_driver_is_refused_and_the_lock_of_a_killed_one_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    first = Driver(["run", str(config(tmp_path)), "--out", str(out)], tmp_path / "first")
    try:
        first.wait_for(lambda: metrics_lines(out, "seed_0/full") >= 1, "a report of seed_0/full")
        os.kill(first.proc.pid, signal.SIGSTOP)  # the holder cannot finish its sweep meanwhile
        for argv in (["resume", str(out)], ["run", str(config(tmp_path)), "--out", str(out)],
                     ["fork", str(out), "seed_0/full"], ["extend", str(out), "--set", "seeds=[0,1]"]):
            t0 = time.monotonic()
            second = subprocess.run([sys.executable, "-m", "sweep", *argv], cwd=ROOT, env=ENV, capture_output=True,
                                    text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert second.returncode == 2 and time.monotonic() - t0 < 20, second.stderr
            (line,) = second.stderr.strip().splitlines()
            assert line.startswith("error: ") and f"in use by another driver: pid {first.proc.pid} on " in line, line
            assert second.stdout == ""
        os.kill(first.proc.pid, signal.SIGCONT)
        assert first.proc.poll() is None
    finally:
        first.kill()  # SIGKILL: its lock stays behind
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.proc.pid
    before = rows(out)
    done = resume(str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"took over the lock of {out} from a driver that is gone (pid {first.proc.pid} " in done.stdout
    assert_every_trial_once(out, before)


HARD_STOP = """
import sys, threading, time
from pathlib import Path
from sweep import interrupt
interrupt.GRACE_S = float(sys.argv[3])
interrupt.STOP.install()
interrupt.STOP.cooperative = True  # as the Ray engine's driver: a first signal only asks the loop to stop
interrupt.STOP.on_hard_exit(lambda: Path(sys.argv[1]).write_text("hard stop ran"))
Path(sys.argv[2]).write_text("ready")
while True:
    time.sleep(60)  # a main thread that does not get back to the sweep's loop
"""


def pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits to be delivered to process `pid` (its pending masks in /proc)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return any(int(status[mask].strip(), 16) >> (sig - 1) & 1 for mask in ("SigPnd", "ShdPnd"))


@pytest.mark.parametrize("second", [True, False], ids=["second-signal", "grace-expired"])
def test_a_second_ctrl_c_or_a_stuck_driver_stops_at_once(tmp_path: Path, second: bool) -> None:
    marker, ready = tmp_path / "hard", tmp_path / "ready"
    script = tmp_path / "hard_stop.py"
    script.write_text(HARD_STOP)
    grace = "600" if second else "0.5"
    proc = subprocess.Popen([sys.executable, str(script), str(marker), str(ready), grace], cwd=ROOT, env=ENV,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        if second:  # once the first was delivered: two pending SIGINTs would be one
            while pending(proc.pid, signal.SIGINT) and proc.poll() is None:
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert marker.read_text() == "hard stop ran"
    stderr = proc.stderr.read()
    assert ("SIGINT again: stopping at once" if second else "did not stop within 0.5s") in stderr, stderr


def test_a_full_disk_injected_in_the_storage_layer_stops_the_sequential_sweep(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from sweep.config import from_dict
    from sweep.interrupt import EXIT_STORAGE_FAULT, SweepStopped
    from sweep.runner import resume_config, run_config

    cfg = from_dict(yaml.safe_load(config(tmp_path, epochs=4).read_text()))
    real_fsync, calls = os.fsync, []

    def fills_up(fd: int) -> None:  # every write of the sweep is synced: the 40th finds the disk full
        calls.append(fd)
        if len(calls) >= 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("sweep.files.os.fsync", fills_up)
    out = tmp_path / "sweep"
    with pytest.raises(SweepStopped) as stop:
        run_config(cfg, str(out), log=lambda line: None)
    assert stop.value.exit_code == EXIT_STORAGE_FAULT
    assert f"cannot write {out}/" in stop.value.why and "No space left on device" in stop.value.why
    assert not (out / LOCK_FILE).exists() and not list(out.rglob("*.tmp"))
    before = rows(out)
    monkeypatch.undo()
    resume_config(str(out), log=lambda line: None)
    assert sorted(r["trial_id"] for r in rows(out)) == TRIALS and rows(out)[:len(before)] == before


@pytest.mark.ray
def test_a_full_disk_on_the_drivers_side_stops_the_ray_sweep(tmp_path: Path, monkeypatch) -> None:
    """The driver's own write (a row) meets the full disk: the sweep stops (Tune's clean-up runs, as
    for a cluster), and resume writes that row."""
    import errno

    import ray

    from sweep import rows as rows_module
    from sweep.config import from_dict
    from sweep.engine import resume_sweep, run_sweep
    from sweep.engine.driver import start_ray
    from sweep.files import StorageFault
    from sweep.interrupt import EXIT_STORAGE_FAULT, SweepStopped

    def full(path, row) -> None:
        raise StorageFault(OSError(errno.ENOSPC, "No space left on device"), path)

    monkeypatch.setattr(rows_module, "append_row", full)
    cfg = from_dict(yaml.safe_load(config(tmp_path, epochs=3).read_text()))
    out = tmp_path / "sweep"
    start_ray(None, lambda line: None, num_cpus=2, num_gpus=0)
    try:
        with pytest.raises(SweepStopped) as stop:
            run_sweep(cfg, out, log=lambda line: None)
        assert stop.value.exit_code == EXIT_STORAGE_FAULT and "results.csv" in stop.value.why
        assert not (out / "results.csv").exists() and not (out / LOCK_FILE).exists()
        monkeypatch.undo()
        assert sum(resume_sweep(out, log=lambda line: None).values()) == 3
    finally:
        ray.shutdown()
    assert_every_trial_once(out, [])


@pytest.fixture
def small_disk():
    """A tmpfs of 700 KiB (a one-seed sweep writes about 1.2 MB), grown on demand; unmounted after."""
    assert os.geteuid() == 0, "this test mounts a tmpfs (a real full disk) and must run as root, as CI does"
    point = Path(tempfile.mkdtemp(prefix="certsweep-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(point)], check=True)

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(point)], check=True)

    yield point, grow
    subprocess.run(["umount", "-l", str(point)], check=False)
    point.rmdir()


@pytest.mark.ray
@pytest.mark.parametrize("at", ["directory", "uri"])
def test_a_full_disk_stops_the_sweep_with_one_message_and_resume_completes(tmp_path: Path, small_disk,
                                                                           at: str) -> None:
    point, grow = small_disk
    out = point / "sweep"
    where = str(out) if at == "directory" else f"file://{out}"
    env = ENV | {"CERTSWEEP_STAGING": str(tmp_path / "staging")}  # a URI's staging copy has room
    driver = Driver(["run", str(config(tmp_path)), "--out", where], tmp_path / "logs", env)
    try:
        assert driver.proc.wait(timeout=300) == 3, driver.output[-3000:]
    finally:
        driver.kill()
    err = driver.err_path.read_text().strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"error: cannot write {where}/"), err
    assert "No space left on device" in err[0], err
    if at == "directory":  # a URI names no local filesystem
        assert f"(the filesystem at {point})" in err[0], err
    assert err[1] == f"stopped; continue with: python -m sweep resume {where}"
    assert "Traceback" not in driver.output
    before = rows(out)
    grow()
    done = subprocess.run([sys.executable, "-m", "sweep", "resume", where], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_every_trial_once(out, before)


def test_a_stop_before_the_sweep_is_touched_says_nothing_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C while the command still imports torch (the handlers are in place from its first line),
    or while a fork is being planned: one line, and no `resume` advice for a sweep nothing was added to."""
    import sweep.__main__ as cli_module
    import sweep.engine
    from sweep.interrupt import SweepStopped

    def interrupted(*args, **kwargs):
        raise SweepStopped("interrupted (SIGINT)", 130)

    with monkeypatch.context() as patch:
        patch.setattr(cli_module, "user_errors", interrupted)
        assert cli_module.main(["resume", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "stopped before the sweep started: nothing was written\n"
    monkeypatch.setattr(sweep.engine, "resume_sweep", interrupted)
    assert cli_module.main(["fork", str(tmp_path), "seed_0/noalign"]) == 130
    assert capsys.readouterr().err == f"stopped before the fork was recorded: nothing was added to {tmp_path}\n"


EXIT_PROBE = """
import atexit, gc, sys
from sweep.interrupt import freeze_at_exit
# registered first, as Ray's shutdown is in a worker: it runs after the handlers registered later
atexit.register(lambda: print("objects frozen when the earlier handler ran:", gc.get_freeze_count() > 0))
handlers = atexit._ncallbacks()
if sys.argv[1] == "trial":
    freeze_at_exit()
    freeze_at_exit()
print("handlers added:", atexit._ncallbacks() - handlers, flush=True)
sys.exit(0)
"""


@pytest.mark.parametrize("kind", ["trial", "other"])
def test_a_trial_process_freezes_its_objects_before_the_exit_handlers_registered_earlier(kind: str) -> None:
    """A Ray worker exits through sys.exit when Tune lets its trial actor go (each segment's end):
    `freeze_at_exit` spares it the interpreter's last collections, once however often a trial of
    that worker calls it, and before Ray's own exit handler."""
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, kind], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    frozen = kind == "trial"
    assert done.stdout.splitlines() == [f"handlers added: {int(frozen)}",
                                        f"objects frozen when the earlier handler ran: {frozen}"]
