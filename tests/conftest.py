"""Shared fixtures: a tiny digits config and its data, small enough for CPU tests."""

from __future__ import annotations

import csv
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sweep.config import from_dict
from sweep.data import DataConfig, ImageData, load_data
from sweep.engine.security import TOKEN_ENV

# The tests' local Rays use a token of their own, not the user's ~/.certsweep/ray_auth_token
# (set at import, so that the drivers the tests start as subprocesses inherit it too).
os.environ.setdefault(TOKEN_ENV, str(Path(tempfile.gettempdir()) / f"certsweep-tests-{os.getuid()}" / "ray_auth_token"))


def tiny_raw(**train) -> dict:
    """A digits config dict: 8x8 images, K=4, a couple of epochs per stage."""
    return {
        "name": "tiny", "seeds": [3], "variants": ["full", "noalign", "rescue"],
        "data": {"name": "digits"},
        "model": {"arch": "mlp", "latent_dim": 6, "hidden": 32},
        "teacher": {"ks": [4], "restarts": 1, "min_teacher_mi": 0.0, "min_top1_margin": 0.0,
                    "min_high_margin_frac": 0.0},
        "train": {"warmup_epochs": 2, "epochs": 3, "rescue_epochs": 2, "batch_size": 128,
                  "lam": 5.0, "device": "cpu", **train},
        "eval": {"probe_samples": 500},
    }


def rows(out: Path) -> list[dict[str, str]]:
    """The rows of a sweep's results.csv ([] before its first)."""
    if not (out / "results.csv").exists():
        return []
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def digits() -> ImageData:
    return load_data(DataConfig(name="digits"))


@pytest.fixture
def tiny_cfg():
    return from_dict(tiny_raw())


# --- the tiers: a test that starts Ray must be marked `ray` --------------------------------------
#
# `make test-fast` runs `-m "not ray and not slow"`: the unit and numeric tests, no Ray cluster. So that
# an unmarked test cannot start Ray unnoticed (in-process, or in a `python -m sweep run` subprocess,
# which starts a local Ray unless `--sequential`), a watcher thread scans /proc for Ray's node
# processes (gcs_server, raylet) every RAY_POLL_S while each test runs (setup, call, teardown). A new
# one that is this session's own (a descendant of this pytest, or carrying its marker environment
# variable, inherited by every child) fails an unmarked test with its name and pid; so does a call of
# `ray.init` (which may connect to a running cluster without starting a process). Ray processes of
# other test runs on the machine, or left shutting down by an earlier test, are not counted: only
# pids first seen during the test and ours.

RAY_PROCESSES = ("gcs_server", "raylet")
RAY_POLL_S = 0.1
SESSION_MARKER = "CERTSWEEP_PYTEST_SESSION"
os.environ.setdefault(SESSION_MARKER, f"{os.getpid()}-{time.time_ns()}")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if ")" in stat else 0


class RayWatch:
    """Ray node processes of this session, each attributed to the test during which it appeared."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first_seen: dict[int, float] = {}  # every pid looked at, when first seen
        self.settled: set[int] = set()  # pids seen long enough ago that an exec into Ray is over
        self.current: str | None = None
        self.found: dict[str, list[str]] = {}  # test nodeid -> "gcs_server pid N"
        self.scan(baseline=True)
        threading.Thread(target=self.loop, name="ray-watch", daemon=True).start()

    def ours(self, pid: int) -> bool:
        marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}"
        if marker in _read(f"/proc/{pid}/environ").split("\0"):
            return True
        me, seen = os.getpid(), 0
        while pid > 1 and seen < 64:
            pid, seen = _ppid(pid), seen + 1
            if pid == me:
                return True
        return False

    def scan(self, baseline: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            try:
                pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            except OSError:
                return
            for pid in pids:
                if pid in self.settled:
                    continue
                first = self.first_seen.setdefault(pid, now)
                if now - first > 2.0:  # forked long ago: its exec (into gcs_server, say) is behind it
                    self.settled.add(pid)
                comm = _read(f"/proc/{pid}/comm").strip()
                if comm not in RAY_PROCESSES:
                    continue
                self.settled.add(pid)
                if not baseline and self.current and self.ours(pid):
                    self.found.setdefault(self.current, []).append(f"{comm} pid {pid}")

    def loop(self) -> None:
        while True:
            time.sleep(RAY_POLL_S)
            self.scan()

    def start(self, nodeid: str) -> None:
        self.scan()  # what appeared before this test is not its own
        with self.lock:
            self.current = nodeid

    def take(self, nodeid: str) -> list[str]:
        self.scan()
        with self.lock:
            return self.found.pop(nodeid, [])


_WATCH: RayWatch | None = None


def _in_fast_tier(item: pytest.Item) -> bool:
    return item.get_closest_marker("ray") is None


def pytest_configure(config: pytest.Config) -> None:
    global _WATCH
    if os.path.isdir("/proc/self") and _WATCH is None:
        _WATCH = RayWatch()
    try:
        import ray
    except ImportError:
        return
    real_init = ray.init

    def init(*args, **kwargs):
        if _WATCH is not None and _WATCH.current is not None:
            with _WATCH.lock:
                _WATCH.found.setdefault(_WATCH.current, []).append(f"ray.init({kwargs.get('address', '')!r}) in-process")
        return real_init(*args, **kwargs)

    ray.init = init


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _WATCH is not None and _in_fast_tier(item):
        _WATCH.start(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if _WATCH is None or not _in_fast_tier(item) or report.when == "setup" and report.passed:
        return
    started = _WATCH.take(item.nodeid)
    if report.when == "teardown":
        with _WATCH.lock:
            _WATCH.current = None
    if started:
        report.outcome = "failed"
        report.longrepr = (f"this test started Ray ({', '.join(started)}) but is not marked: mark it "
                           "pytest.mark.ray (the fast tier, `make test-fast`, runs no Ray cluster)")
