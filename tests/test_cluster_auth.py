"""A token-authenticated multi-node Ray cluster refuses a client without the token.

The scenario runs as this file's `scenario()` in a loopback-only network namespace
(tests/netns.py), with a LocalCluster (tests/cluster.py): a head with no CPUs and one worker
node, both `ray start --block` with RAY_AUTH_MODE=token.

- A driver that has the token connects and runs a task, which lands on the worker node (the only
  node with a CPU): its `get_node_id()` is the worker's node id.
- A client that knows nothing of auth (RAY_AUTH_MODE unset, no token in its environment or HOME)
  connecting to the GCS on 127.0.0.1 is refused: a raw gRPC call gets UNAUTHENTICATED at once,
  and `ray.init(address=...)` raises ConnectionError, the GCS's "InvalidAuthToken" in its log.
  `ray.init` retries the GCS once a second, 20 times by default (RAY_NUM_REDIS_GET_RETRIES), before
  it gives up; the client here is given 2, so the refusal shows within seconds.
- Every process of the scenario is gone afterwards: the cluster's own check, and the netns run's
  (nothing left in the namespace).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from cluster import LocalCluster
from netns import require_unshare, run_in_netns

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve()

#: A driver with the token: which node does a 1-CPU task run on?
WITH_TOKEN = r'''
import json, ray
ray.init(log_to_driver=False)
@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()
print("RESULT " + json.dumps({"node": ray.get(where.remote(), timeout=60)}))
ray.shutdown()
'''

#: A client without the token: a raw gRPC call to the GCS, then ray.init.
WITHOUT_TOKEN = r'''
import json, os, time
import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
out = {"auth_mode": os.environ.get("RAY_AUTH_MODE")}
stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(os.environ["RAY_ADDRESS"]))
t = time.monotonic()
try:
    stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
    out["grpc"] = "OK"
except grpc.RpcError as exc:
    out["grpc"], out["grpc_details"] = exc.code().name, exc.details()
out["grpc_s"] = time.monotonic() - t
import ray
t = time.monotonic()
try:
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    out["init"] = "CONNECTED"
    ray.shutdown()
except Exception as exc:
    out["init"], out["init_error"] = type(exc).__name__, str(exc)
    out["init_cause"] = repr(exc.__cause__)[-3000:]
out["init_s"] = time.monotonic() - t
print("RESULT " + json.dumps(out))
'''


def result_of(run) -> dict:
    """The JSON a driver printed after "RESULT "."""
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.describe()
    return json.loads(lines[-1][len("RESULT "):])


def scenario() -> None:
    """Inside the namespace: start the cluster, run both clients, check, stop."""
    t0 = time.monotonic()
    with LocalCluster(workers=1, head_cpus=0, worker_cpus=1, auth=True) as cluster:
        ids = cluster.names_to_ids(cluster.started_nodes)
        assert set(ids) == {"head", "w0"}, ids
        print(f"cluster of 2 nodes up in {time.monotonic() - t0:.1f}s: {ids}")

        run = cluster.run_driver(WITH_TOKEN, token=True, timeout=90)
        assert run.rc == 0, run.describe()
        assert result_of(run)["node"] == ids["w0"], (result_of(run), ids)
        print(f"driver with the token ran its task on w0 ({run.elapsed:.1f}s)")

        run = cluster.run_driver(WITHOUT_TOKEN, token=False, timeout=60,
                                 env={"RAY_NUM_REDIS_GET_RETRIES": "2"})
        assert run.rc == 0, run.describe()
        got = result_of(run)
        assert got["auth_mode"] is None, got
        assert got["grpc"] == "UNAUTHENTICATED", got
        assert "InvalidAuthToken" in got["grpc_details"], got
        assert got["grpc_s"] < 5, got
        assert got["init"] == "ConnectionError", got
        assert cluster.address in got["init_error"], got
        assert "InvalidAuthToken" in run.stderr, run.describe()
        assert got["init_s"] < 30, got
        print(f"client without the token refused: gRPC {got['grpc']} in {got['grpc_s']:.3f}s, "
              f"ray.init {got['init']} in {got['init_s']:.1f}s")
    left = cluster.leftover_pids()
    assert left == [], f"processes of the cluster left after stop: {left}"
    print(f"SCENARIO OK in {time.monotonic() - t0:.1f}s")


def test_token_auth_cluster_refuses_client_without_token():
    require_unshare()
    run = run_in_netns(HERE, "scenario", timeout=300, cwd=HERE.parent.parent)
    print(run.stdout)
    assert not run.timed_out, run.describe()
    assert run.rc == 0, run.describe()
    assert "SCENARIO OK" in run.stdout, run.describe()
    assert run.leftovers == [], f"the scenario left processes behind: {run.describe()}"


if __name__ == "__main__":
    if sys.argv[1:] == ["scenario"]:
        scenario()
    else:
        sys.exit(f"usage: {sys.argv[0]} scenario  (run inside a network namespace)")
