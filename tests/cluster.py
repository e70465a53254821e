"""A multi-node Ray cluster on one machine, for tests: a head and N worker nodes, each a
`ray start --block` process of its own. A helper used by tests, not a test.

It must run INSIDE a loopback-only network namespace (tests/netns.py: `run_in_netns`): every
node binds 127.0.0.1 and picks its ports freely, which is only safe where no other Ray can see or
be seen. It keeps away from other Rays on the machine in the file system too: each cluster has
its own root directory (RAY_TMPDIR and HOME of its nodes), so Ray's `ray_current_cluster` file,
session folders and any token file live there and not in /tmp/ray or ~/.ray.

    with LocalCluster(workers=2, auth=True) as cluster:
        cluster.wait_for_nodes(3)                      # head + 2 workers alive
        ids = cluster.node_ids()                       # {"head": ..., "w0": ..., "w1": ...}
        out = cluster.run_driver(CODE)                 # a driver that has the token
        cluster.kill_worker("w0")                      # SIGKILL its process group
        cluster.wait_for_dead("w0")                    # until the GCS marks it dead
        cluster.add_worker()                           # "w2" joins

Processes. Each node is started with start_new_session (setsid), so its `ray start` process
leads a session and a process group of its own; the group holds the node's gcs_server (head),
raylet, agents, monitors; `kill_worker` and `stop` SIGKILL that group. Ray's core workers (the
processes that run tasks and actors) put themselves into process groups of their own but stay in
the node's session, so after killing the group the cluster kills the rest of the node's session
too (a busy core worker otherwise outlives its raylet by a second or two). Every process of a node
also inherits `CERTSWEEP_CLUSTER=<cluster id>/<node name>`, a second way to find what is left.
`stop()` runs on `__exit__` (also on exceptions) and at interpreter exit (atexit), and
SIGTERM/SIGHUP are turned into SystemExit while the cluster is open so that the with-block
unwinds. As a last resort each `ray start` gets PR_SET_PDEATHSIG=SIGTERM: if the process that
started it dies, even by SIGKILL, `ray start --block` gets SIGTERM and shuts its node down
(SIGTERM, not SIGKILL: a SIGKILLed `ray start` takes gcs_server and raylet with it through Ray's
fate-sharing, but its dashboard and runtime-env agents live on). PDEATHSIG follows the *thread*
that started the child: start nodes from a thread that outlives them (the main thread).

Authentication. `auth=True` starts every node with RAY_AUTH_MODE=token and the token in a file
of mode 0600 named by RAY_AUTH_TOKEN_PATH; without it nodes get RAY_AUTH_MODE=disabled
explicitly (since Ray 2.59 a `ray start --head` turns token mode on by itself when a token file
exists). `client_env()` gives a driver the environment it needs to connect.

Waiting. A node counts as started when its `ray start` prints "Ray runtime started." (a worker
prints it only after its node is in the GCS's node table); nodes start one at a time. Node state
is read from the GCS by a short Python subprocess (ray._raylet.GcsClient,
get_all_node_info) that polls until the condition holds or its deadline passes: no fixed sleeps.
Using a subprocess keeps Ray's process-wide auth state (RAY_AUTH_MODE, the cached token) out of
the process that owns the cluster, so a scenario can run clients with and without the token.
Nodes are told apart by their node-manager port, which the cluster picks for each.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from netns import RunResult, kill_marked, kill_until_gone, marked_pids, run_session

#: Marks every process of a cluster: value "<cluster id>/<node name>".
CLUSTER_MARKER = "CERTSWEEP_CLUSTER"

#: Variables of the caller that must not leak into nodes or drivers: they would point Ray at
#: another cluster or another token.
_SCRUBBED = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
             "RAY_TMPDIR", "RAY_NAMESPACE", "RAY_JOB_CONFIG_JSON_ENV_VAR")

# Polls the GCS until the node condition holds; prints the node table as JSON either way.
# argv: address, timeout, want_alive (-1: any), ports that must be ALIVE, ports that must be DEAD
# (comma-separated node-manager ports).
_QUERY = r"""
import json, sys, time
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
address, timeout, want = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
up, dead = ({int(p) for p in arg.split(",") if p} for arg in sys.argv[4:6])
deadline, client, nodes, error = time.monotonic() + timeout, None, [], None
while True:
    try:
        if client is None:
            client = GcsClient(address=address)
        infos = client.get_all_node_info(timeout=5)
        nodes = [{"node_id": nid.hex(), "port": info.node_manager_port,
                  "alive": info.state == GcsNodeInfo.ALIVE, "head": info.is_head_node,
                  "end_time_ms": info.end_time_ms,
                  "death": info.death_info.reason_message}
                 for nid, info in infos.items()]
        alive = {n["port"] for n in nodes if n["alive"]}
        gone = {n["port"] for n in nodes if not n["alive"]}
        error = None
        if (want < 0 or len(alive) == want) and up <= alive and dead <= gone:
            print(json.dumps({"ok": True, "nodes": nodes}))
            sys.exit(0)
    except Exception as exc:
        error = repr(exc)
    if time.monotonic() > deadline:
        print(json.dumps({"ok": False, "nodes": nodes, "error": error}))
        sys.exit(0)
    time.sleep(0.1)
"""


#: What `ray start` prints once its node is up (and, for a worker, registered with the GCS).
STARTED_LINE = "Ray runtime started."


class ClusterError(RuntimeError):
    """A node did not start, or the cluster did not reach the state waited for."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (inside a private namespace nobody else takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the thread that started it dies (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (AttributeError, OSError):
        pass


@dataclass
class Node:
    """One `ray start --block` process and what identifies its node."""

    name: str
    proc: subprocess.Popen
    log: Path
    node_manager_port: int
    head: bool = False
    #: set by kill_worker / stop: its end is expected
    killed: bool = False

    @property
    def pgid(self) -> int:
        """Its process group (start_new_session: the group of `ray start` itself)."""
        return self.proc.pid

    def running(self) -> bool:
        """Whether `ray start` is still running."""
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its `ray start` output."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"


class LocalCluster:
    """A head and worker nodes on 127.0.0.1, each `ray start --block` in its own process group.

    Args:
        workers: worker nodes to start on __enter__ ("w0", "w1", ...).
        head_cpus: CPUs of the head (0: tasks run only on workers).
        worker_cpus: CPUs of each worker added without an explicit count.
        auth: start every node with token authentication.
        token: the token (default: a fresh 256-bit hex one when auth is set).
        root: the cluster's directory (RAY_TMPDIR, HOME, logs, token file); default a new one
            under /tmp that is removed on a clean stop and kept (and named on stderr) after an
            exception.
        object_store_mb: object store of each node (Ray's minimum is 75 MB).
        timeout: default seconds for starting and waiting.
        python: the interpreter whose Ray to use (default: this one).
        node_env: extra environment of every node, e.g. Ray system config such as
            {"RAY_health_check_period_ms": "500"} (the GCS reads it on the head).
    """

    def __init__(self, workers: int = 0, *, head_cpus: float = 0, worker_cpus: float = 1,
                 auth: bool = False, token: str | None = None, root: str | os.PathLike | None = None,
                 object_store_mb: int = 80, timeout: float = 60.0, python: str | None = None,
                 node_env: dict[str, str] | None = None):
        self.initial_workers = workers
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.auth = auth
        self.token = (token or secrets.token_hex(32)) if auth else None
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="lc-", dir="/tmp"))
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self.timeout = timeout
        self.python = python or sys.executable
        self.extra_node_env = dict(node_env or {})
        self.ray_cli = str(Path(self.python).parent / "ray")
        if not Path(self.ray_cli).exists():
            self.ray_cli = shutil.which("ray") or self.ray_cli
        self.id = uuid.uuid4().hex[:12]
        self.port: int | None = None
        self.nodes: dict[str, Node] = {}
        #: the GCS's node table once start() returned
        self.started_nodes: list[dict] = []
        self._next_worker = 0
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stopped = False
        self._old_handlers: dict[int, object] = {}

    # ----------------------------------------------------------------- environment

    @property
    def address(self) -> str:
        """The GCS address, host:port."""
        if self.port is None:
            raise ClusterError("the cluster has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def token_path(self) -> Path:
        return self.root / "auth_token"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(RAY_TMPDIR=str(self.root), HOME=str(self.home), RAY_USAGE_STATS_ENABLED="0",
                   PYTHONUNBUFFERED="1")
        return env

    def node_env(self, name: str) -> dict[str, str]:
        """The environment of node `name`'s `ray start` (and so of all its processes)."""
        env = self._base_env()
        env.update(self.extra_node_env)
        env[CLUSTER_MARKER] = f"{self.id}/{name}"
        if self.auth:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        return env

    def client_env(self, token: bool = True) -> dict[str, str]:
        """The environment of a driver of this cluster, with or without the token.

        token=False gives a client that knows nothing of auth: RAY_AUTH_MODE unset, no token in
        its environment or in its HOME. It carries the cluster's marker (as node "client"), so
        `stop` also ends a driver left behind.
        """
        env = self._base_env()
        env[CLUSTER_MARKER] = f"{self.id}/client"
        if token and self.auth:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        elif not self.auth:
            env["RAY_AUTH_MODE"] = "disabled"
        return env

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(keep_root=exc_type is not None)

    def start(self) -> None:
        """Start the head and the initial workers; return once all are registered and alive."""
        for sub in ("logs", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.auth:
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
        atexit.register(self.stop)
        self._install_signal_handlers()
        try:
            self.port = free_port()
            with self._start_lock:
                self._wait_started(self._start_node("head", head=True, cpus=self.head_cpus))
            for _ in range(self.initial_workers):
                self.add_worker()
            self.started_nodes = self.wait_for_nodes(1 + self.initial_workers)
        except BaseException:
            self.stop(keep_root=True)
            raise

    def _start_node(self, name: str, *, head: bool, cpus: float) -> Node:
        nm_port = free_port()
        common = [f"--num-cpus={cpus}", "--num-gpus=0",  # CPU nodes on any machine: Ray would detect its GPUs
                  "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                  f"--node-manager-port={nm_port}",
                  f"--object-store-memory={self.object_store_bytes}",
                  # defaults are fixed ports (52365, ...): two nodes on one host would clash
                  f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}", "--block"]
        if head:
            argv = [self.ray_cli, "start", "--head", f"--port={self.port}",
                    "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                    *common]
        else:
            argv = [self.ray_cli, "start", f"--address={self.address}", *common]
        log = self.root / "logs" / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.node_env(name),
                                    cwd=self.root, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        node = Node(name, proc, log, nm_port, head)
        with self._lock:
            self.nodes[name] = node
        return node

    def add_worker(self, cpus: float | None = None) -> str:
        """Start one more worker node and return its name once the GCS has it ALIVE.

        Nodes start one at a time (a lock held until the node is alive): two `ray start` on one
        machine and session at once can pick the same socket names (raylet.1, plasma_store.1),
        and the second raylet then aborts with "bind: Address already in use".
        """
        with self._start_lock:
            with self._lock:
                name = f"w{self._next_worker}"
                self._next_worker += 1
            self._wait_started(self._start_node(name, head=False,
                                                cpus=self.worker_cpus if cpus is None else cpus))
        return name

    def _wait_started(self, node: Node, timeout: float | None = None) -> None:
        """Wait for `ray start` to print STARTED_LINE, which it does once its node has
        registered with the GCS (it waits for its own node in the node table first). Reading the
        log costs nothing, where a GCS query costs a Python start (about a second here)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while STARTED_LINE not in node.log_tail(100_000):
            if not node.running():
                raise ClusterError(f"`ray start` of node {node.name} exited with "
                                   f"{node.proc.returncode}:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node.name} did not start in time:\n{node.log_tail()}")
            time.sleep(0.1)

    def kill_worker(self, name: str, *, sweep: bool = True) -> float:
        """SIGKILL node `name`'s process group (as a lost machine would end); with `sweep`, also
        the rest of its session and its marked processes (core workers still running a task).
        Returns the monotonic time of the kill."""
        node = self.nodes[name]
        if node.head:
            raise ValueError("kill_worker kills worker nodes; stop() ends the head")
        killed_at = time.monotonic()
        self._kill_group(node)
        if sweep:
            self._sweep_node(node)
        return killed_at

    def _sweep_node(self, node: Node) -> list[int]:
        """Kill what is left of `node`: its session's processes and its marked ones."""
        killed = kill_session_members(node.pgid)
        killed += kill_marked(CLUSTER_MARKER, f"{self.id}/{node.name}", timeout=5)
        return killed

    def _kill_group(self, node: Node) -> None:
        node.killed = True
        try:
            os.killpg(node.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, keep_root: bool = False) -> list[int]:
        """Kill every node's process group (workers first), then every process still marked as
        this cluster's. Idempotent. Returns the pids that the marker sweep still had to kill."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
            nodes = list(self.nodes.values())
        for node in sorted(nodes, key=lambda n: n.head):
            self._kill_group(node)
        swept = self._sweep()
        self._restore_signal_handlers()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        if self._own_root:
            if keep_root:
                print(f"LocalCluster: kept {self.root} (logs, Ray session)", file=sys.stderr)
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        return swept

    def _sweep(self) -> list[int]:
        """Kill what is left of this cluster: the nodes' sessions, then any of its markers."""
        prefix = f"{self.id}/"
        killed: list[int] = []
        for node in list(self.nodes.values()):
            killed += self._sweep_node(node)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = [pid for pid in marked_pids(CLUSTER_MARKER)
                    if _marker_of(pid).startswith(prefix)]
            if not pids:
                break
            for pid in pids:
                value = _marker_of(pid)
                killed += kill_marked(CLUSTER_MARKER, value, timeout=2)
        return sorted(set(killed))

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still alive (not zombies), by node session or marker:
        none after stop()."""
        prefix = f"{self.id}/"
        pids = {pid for node in self.nodes.values() for pid in session_members(node.pgid)}
        pids |= {pid for pid in marked_pids(CLUSTER_MARKER) if _marker_of(pid).startswith(prefix)}
        return sorted(pids)

    # ----------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                self._old_handlers[sig] = signal.signal(sig, _raise_system_exit)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    # ----------------------------------------------------------------- node state

    def _query(self, *, want_alive: int = -1, alive_ports=(), dead_ports=(),
               timeout: float = 0.0) -> dict:
        """Run the GCS poller: it polls every 0.1 s for up to `timeout` s until the condition
        holds, and returns {"ok", "nodes", "error"}."""
        argv = [self.python, "-c", _QUERY, self.address, str(timeout), str(want_alive),
                ",".join(map(str, alive_ports)), ",".join(map(str, dead_ports))]
        res = run_session(argv, timeout=timeout + 60, env=self.client_env(token=True))
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"ok": False, "nodes": [], "error": res.describe()}

    def _wait_until(self, what: str, *, want_alive: int = -1, alive_ports=(), dead_ports=(),
                    timeout: float | None = None) -> list[dict]:
        """Poll the GCS until the condition holds or `timeout` passes (then ClusterError).

        The poller runs in slices of at most 5 s so that a node whose `ray start` exited is
        reported at once, with its log, instead of at the deadline.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            self._check_nodes_running()
            left = max(0.0, deadline - time.monotonic())
            res = self._query(want_alive=want_alive, alive_ports=alive_ports,
                              dead_ports=dead_ports, timeout=min(left, 5.0))
            if res.get("ok"):
                return res["nodes"]
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}: "
                                   f"{json.dumps(res)[:2000]}\n" + self._logs_summary())

    def wait_for_nodes(self, alive: int, timeout: float | None = None) -> list[dict]:
        """Wait until exactly `alive` nodes (the head included) are ALIVE in the GCS.

        Fails early when a node's `ray start` exits. Returns the node table (dicts: node_id,
        port, alive, head, end_time_ms, death).
        """
        return self._wait_until(f"{alive} alive nodes", want_alive=alive, timeout=timeout)

    def wait_for_dead(self, name: str, timeout: float | None = None) -> list[dict]:
        """Wait until the GCS marks node `name` DEAD; returns the node table.

        The GCS notices a SIGKILLed node by missed health checks: 14.5-16.6 s after the kill with
        Ray's defaults here (period 3 s, threshold 5), 1.6-4.2 s with node_env
        RAY_health_check_period_ms=500, RAY_health_check_failure_threshold=3,
        RAY_health_check_timeout_ms=500. Give `timeout` accordingly.
        """
        return self._wait_until(f"node {name} to be dead",
                                dead_ports=(self.nodes[name].node_manager_port,),
                                timeout=timeout)

    def node_table(self) -> list[dict]:
        """The GCS's node table now, each entry with our node name added ("name")."""
        res = self._query()
        if not res.get("ok"):
            raise ClusterError(f"cannot read the node table: {res}")
        by_port = {n.node_manager_port: n.name for n in self.nodes.values()}
        for entry in res["nodes"]:
            entry["name"] = by_port.get(entry["port"])
        return res["nodes"]

    def node_ids(self, alive_only: bool = True) -> dict[str, str]:
        """{node name: node id hex} of the nodes the GCS knows now (only alive ones by default).

        A task can compare `ray.get_runtime_context().get_node_id()` with these."""
        return self.names_to_ids(self.node_table(), alive_only)

    def names_to_ids(self, table: list[dict], alive_only: bool = True) -> dict[str, str]:
        """{node name: node id hex} from a node table (e.g. `started_nodes`), no GCS query."""
        by_port = {n.node_manager_port: n.name for n in self.nodes.values()}
        return {by_port[n["port"]]: n["node_id"] for n in table
                if n["port"] in by_port and (n["alive"] or not alive_only)}

    def _check_nodes_running(self) -> None:
        for node in list(self.nodes.values()):
            if not node.killed and not node.running():
                raise ClusterError(f"`ray start` of node {node.name} exited with "
                                   f"{node.proc.returncode}:\n{node.log_tail()}")

    def _logs_summary(self) -> str:
        return "\n".join(f"--- {n.name} ({'running' if n.running() else n.proc.returncode})\n"
                         f"{n.log_tail(1500)}" for n in self.nodes.values())

    # ----------------------------------------------------------------- drivers

    def run_driver(self, code: str, *, token: bool = True, timeout: float = 60.0,
                   env: dict[str, str] | None = None) -> RunResult:
        """Run `python -c CODE` as a driver of this cluster (RAY_ADDRESS is set), in its own
        session, killed at `timeout`. `token=False`: a client without the token."""
        run_env = self.client_env(token=token)
        run_env["RAY_ADDRESS"] = self.address
        run_env.update(env or {})
        return run_session([self.python, "-c", code], timeout=timeout, env=run_env,
                           cwd=self.root)


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is `sid`, this process excepted."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def kill_session_members(sid: int, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process of session `sid` until none is left (or `timeout`)."""
    return kill_until_gone(lambda: session_members(sid), timeout)


def _marker_of(pid: int) -> str:
    """The CLUSTER_MARKER value of process `pid` ('' when it has none or is gone)."""
    key = CLUSTER_MARKER.encode() + b"="
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(key):
                return item[len(key):].decode(errors="replace")
    except OSError:
        pass
    return ""
