"""The sweep's own local Ray, each scenario inside a loopback-only network namespace (tests/netns.py):

- it requires the user's token: while a default sweep runs, a client that connects through
  127.0.0.1 to the sweep's GCS without the token is refused (a raw gRPC call gets UNAUTHENTICATED,
  ray.init fails), while one with the token is let in; the token file is private (0600) and the
  token appears in no output and no file of the sweep;
- local means local: with the record of a dead `ray start` cluster on the machine (what makes a
  plain ray.init() attach and hang), a sweep starts its own Ray and finishes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(ROOT)]

from cluster import LocalCluster  # noqa: E402
from netns import require_unshare, run_in_netns, run_session  # noqa: E402

pytestmark = pytest.mark.ray

GCS_LINE = re.compile(r"Ray: local, GCS at (\S+), token authentication")

#: A client of the sweep's GCS that knows nothing of its token: a raw gRPC call, then ray.init.
CLIENT = r'''
import json, os, sys, time
import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
address, out = sys.argv[1], {}
stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(address))
try:
    stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
    out["grpc"] = "OK"
except grpc.RpcError as exc:
    out["grpc"], out["grpc_details"] = exc.code().name, exc.details()
import ray
t = time.monotonic()
try:
    ray.init(address=address, log_to_driver=False)
    out["init"] = "CONNECTED"
    out["nodes"] = len(ray.nodes())
    ray.shutdown()
except Exception as exc:
    out["init"] = type(exc).__name__
out["init_s"] = time.monotonic() - t
print("RESULT " + json.dumps(out))
'''


def tiny_config(path: Path, epochs: int) -> Path:
    from conftest import tiny_raw

    raw = tiny_raw(warmup_epochs=1, epochs=epochs, rescue_epochs=1, threads=1)
    raw |= {"seeds": [0], "variants": ["full"], "sweep": {"console_every_s": 60}}
    path.write_text(yaml.safe_dump(raw))
    return path


def clean_env(home: Path) -> dict[str, str]:
    """An environment with no Ray settings, no token, and a HOME of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CERTSWEEP_"))}
    return env | {"HOME": str(home), "PYTHONPATH": str(ROOT), "RAY_NUM_REDIS_GET_RETRIES": "2"}


def result_of(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])


def rogue_client(out: Path) -> None:
    """Inside the namespace: a default sweep, and clients without and with its token."""
    token = out / "user" / "ray_auth_token"
    env = clean_env(out / "home") | {"CERTSWEEP_RAY_TOKEN": str(token)}
    log = out / "sweep.log"
    with open(log, "wb") as f:
        sweep = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(tiny_config(out / "c.yaml", 60)),
                                  "--out", str(out / "sweep")], cwd=ROOT, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, found = time.monotonic() + 180, None
        while found is None and time.monotonic() < deadline and sweep.poll() is None:
            found = GCS_LINE.search(log.read_text())
            time.sleep(0.05)
        assert found, log.read_text()
        address = found.group(1)
        (out / "home").mkdir(exist_ok=True)
        stranger = run_session([sys.executable, "-c", CLIENT, address], timeout=120, env=clean_env(out / "home"))
        holder = run_session([sys.executable, "-c", CLIENT, address], timeout=120,
                             env=clean_env(out / "home") | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        rc = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, 9)
    summary = {"rc": rc, "address": address, "stranger": result_of(stranger.stdout), "holder": result_of(holder.stdout),
               "stranger_log": stranger.stderr[-3000:], "token_mode": stat.S_IMODE(token.stat().st_mode),
               "dir_mode": stat.S_IMODE(token.parent.stat().st_mode)}
    (out / "summary.json").write_text(json.dumps(summary))
    print("SCENARIO OK")


def stale_record(out: Path) -> None:
    """Inside the namespace: leave the record of a killed `ray start` head, then run a sweep."""
    root = Path(tempfile.mkdtemp(prefix="stale-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        stale_sweep(out, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("SCENARIO OK")


def stale_sweep(out: Path, root: Path) -> None:
    with LocalCluster(workers=0, head_cpus=1, root=root) as cluster:
        dead = cluster.address
    record = root / "ray" / "ray_current_cluster"
    assert record.exists() and dead in record.read_text(), "the killed head left no record"
    env = clean_env(out / "home") | {"RAY_TMPDIR": str(root), "CERTSWEEP_RAY_TOKEN": str(out / "token")}
    # the hazard is real: a plain ray.init() attaches to the record and waits for the dead GCS
    plain = run_session([sys.executable, "-c", "import ray; ray.init(); print('STARTED')"], timeout=15, env=env)
    t0 = time.monotonic()
    run = run_session([sys.executable, "-m", "sweep", "run", str(tiny_config(out / "c.yaml", 2)), "--out",
                       str(out / "sweep")], timeout=240, env=env, cwd=ROOT)
    summary = {"rc": run.rc, "seconds": time.monotonic() - t0, "dead": dead, "plain_timed_out": plain.timed_out,
               "plain_stdout": plain.stdout[-500:], "stdout": run.stdout[-3000:],
               "stderr": run.stderr[-3000:], "record_kept": record.read_text().strip()}
    (out / "summary.json").write_text(json.dumps(summary))


def run_scenario(name: str, out: Path) -> dict:
    require_unshare()
    out.mkdir(parents=True, exist_ok=True)
    run = run_in_netns(HERE, name, str(out), timeout=600, cwd=ROOT)
    assert run.rc == 0 and "SCENARIO OK" in run.stdout, run.describe()
    assert run.leftovers == [], run.describe()
    return json.loads((out / "summary.json").read_text())


def test_the_sweeps_own_ray_refuses_a_client_without_its_token(tmp_path: Path) -> None:
    got = run_scenario("rogue_client", tmp_path)
    assert got["rc"] == 0
    stranger, holder = got["stranger"], got["holder"]
    assert stranger["grpc"] == "UNAUTHENTICATED" and "InvalidAuthToken" in stranger["grpc_details"], got
    assert stranger["init"] != "CONNECTED" and stranger["init_s"] < 60, got
    assert holder["grpc"] == "UNAUTHENTICATED"  # a raw call carries no token either way
    assert holder["init"] == "CONNECTED" and holder["nodes"] == 1, got
    assert got["token_mode"] == 0o600 and got["dir_mode"] == 0o700
    token = (tmp_path / "user" / "ray_auth_token").read_text().strip()
    assert len(token) == 64
    written = [p for p in (tmp_path / "sweep").rglob("*") if p.is_file()] + [tmp_path / "sweep.log"]
    assert not [str(p) for p in written if token.encode() in p.read_bytes()]  # never printed, never stored


def test_a_stale_ray_start_record_does_not_catch_the_sweep(tmp_path: Path) -> None:
    got = run_scenario("stale_record", tmp_path)
    assert got["rc"] == 0, got
    assert got["dead"] in got["record_kept"]  # the dead cluster's record was there all along
    assert got["plain_timed_out"] and "STARTED" not in got["plain_stdout"], got  # what a plain ray.init() does
    assert "Ray: local, GCS at" in got["stdout"] and got["dead"] not in got["stdout"], got
    assert (tmp_path / "sweep" / "results.csv").exists()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("rogue_client", "stale_record"):
        globals()[sys.argv[1]](Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} rogue_client|stale_record OUT  (run inside a network namespace)")
