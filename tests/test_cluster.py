"""The Ray engine on a real multi-node cluster (tests/cluster.py), each scenario inside a loopback-only
network namespace (tests/netns.py): nothing binds or travels beyond this machine, and every node is
stopped by its process group, also when a scenario fails.

- node loss: a head with no CPUs (Ray's advice for real clusters: trials and actors live on the
  workers) and two one-CPU workers, token authentication on every node. A sweep runs with
  `--address`; each starting worker is killed with SIGKILL while a trial runs on it (the scenario
  waits for that trial's placement.json and first report), and a fresh node joins once the GCS
  has the lost one dead. Every trial ends once, none in error, with the certificate pattern.
- driver loss: on the same cluster the driver is killed with SIGKILL as the first row appears,
  and `python -m sweep resume DIR --address ...` finishes with every trial once; then
  `python -m sweep fork DIR seed_0/noalign --set train.lam=[2,5] --address ...` adds two rescues.
- Ctrl-C: on the same cluster SIGINT reaches the driver's process group mid-sweep: the driver
  exits 130 with the resume line, its trials (and warm-up store) end, every node stays up, and
  resume finishes with every trial once.

The scenario functions run inside the namespace (`python tests/test_cluster.py SCENARIO OUT`);
the tests check what they left in OUT, which lies on the shared file system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(ROOT)]  # cluster.py, netns.py, conftest and the project, run as a script

from cluster import LocalCluster  # noqa: E402
from conftest import rows  # noqa: E402
from netns import require_unshare, run_in_netns  # noqa: E402

pytestmark = pytest.mark.ray

FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_timeout_ms": "500"}
"""The head marks a lost node dead in a few seconds instead of about 15."""


def sweep_config(path: Path, full_epochs: int) -> Path:
    """Two digits seeds x full / noalign / rescue, long enough trials to be killed mid-run."""
    from conftest import tiny_raw

    raw = tiny_raw(warmup_epochs=1, epochs=full_epochs, rescue_epochs=6, batch_size=64, lr=0.005, lam=20.0,
                   threads=1)
    raw |= {"seeds": [0, 1], "scheduler": {"collapse_patience": 2, "collapse_threshold": 0.05},
            "sweep": {"console_every_s": 5}}  # the default max_failures: what a user gets
    raw["model"]["latent_dim"] = 4
    path.write_text(yaml.safe_dump(raw))
    return path


def running_on(out: Path, node_id: str) -> str | None:
    """A trial that has reported at least once on node `node_id` and not ended yet."""
    for placement in out.glob("seed_*/*/placement.json"):
        folder = placement.parent
        try:
            where = json.loads(placement.read_text())
        except (OSError, ValueError):
            continue  # being written
        if where.get("node_id") == node_id and (folder / "metrics.jsonl").exists() \
                and not (folder / "result.json").exists():
            return str(folder.relative_to(out))
    return None


def wait_for(what: str, condition, driver: subprocess.Popen, timeout: float = 240.0):
    """Poll a file condition (no fixed sleep decides anything) until it holds or the driver ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if driver.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {driver.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def driver(cluster: LocalCluster, *args: str, log: Path) -> subprocess.Popen:
    """`python -m sweep ARGS --address` as a driver of the cluster (with its token)."""
    env = cluster.client_env(token=True) | {"PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sweep", *args, "--address", cluster.address], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def lose_nodes(cluster: LocalCluster, out: Path) -> dict:
    """Kill each starting worker in turn while a trial runs on it; a fresh node joins after each."""
    config = sweep_config(out.parent / "config.yaml", full_epochs=30)
    run = driver(cluster, "run", str(config), "--out", str(out), log=out.parent / "nodes.log")
    events = []
    try:
        for name in ("w0", "w1"):
            node = cluster.node_ids()[name]
            trial = wait_for(f"a trial running on {name}", lambda node=node: running_on(out, node), run)
            cluster.kill_worker(name)
            cluster.wait_for_dead(name, timeout=60)
            events.append({"killed": name, "node": node, "trial": trial, "joined": cluster.add_worker()})
        rc = run.wait(timeout=400)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
    return {"rc": rc, "events": events}


def lose_driver(cluster: LocalCluster, out: Path) -> dict:
    """SIGKILL the driver as the first row appears, then resume on the same cluster."""
    config = sweep_config(out.parent / "config.yaml", full_epochs=25)
    run = driver(cluster, "run", str(config), "--out", str(out), log=out.parent / "driver.log")
    try:
        before = wait_for("the first row", lambda: rows(out), run)
        os.killpg(run.pid, 9)
        run.wait()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
    resumed = driver(cluster, "resume", str(out), log=out.parent / "resume.log")
    try:
        rc = resumed.wait(timeout=400)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, 9)
    return {"rc": rc, "before": len(before)}


def fork_on_cluster(cluster: LocalCluster, out: Path) -> dict:
    """`python -m sweep fork DIR seed_0/noalign --set train.lam=[2,5] --address ...` on the finished sweep."""
    fork = driver(cluster, "fork", str(out), "seed_0/noalign", "--set", "train.lam=[2,5]", log=out.parent / "fork.log")
    try:
        return {"rc": fork.wait(timeout=400)}
    finally:
        if fork.poll() is None:
            os.killpg(fork.pid, 9)


def trial_processes() -> list[int]:
    """Processes of this namespace that run a trial or the warm-up store (Ray's process titles)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith((b"ray::ImplicitFunc", b"ray::WarmupStore")):
            found.append(int(entry.name))
    return found


def interrupt_driver(cluster: LocalCluster, out: Path) -> dict:
    """Ctrl-C to the driver's process group mid-sweep: the driver's trials stop, the cluster stays
    up; then resume on the same cluster."""
    config = sweep_config(out.parent / "config.yaml", full_epochs=25)
    run = driver(cluster, "run", str(config), "--out", str(out), log=out.parent / "interrupt.log")
    try:
        wait_for("a downstream trial's report", lambda: list(out.glob("seed_*/full/metrics.jsonl")), run)
        alive = sum(bool(n["alive"]) for n in cluster.node_table())
        os.killpg(run.pid, 2)
        rc = run.wait(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
    deadline = time.monotonic() + 30
    while trial_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = {"rc": rc, "trials_left": trial_processes(), "nodes": alive,
               "nodes_after": sum(bool(n["alive"]) for n in cluster.node_table()), "rows_before": len(rows(out))}
    resumed = driver(cluster, "resume", str(out), log=out.parent / "resume.log")
    try:
        summary["resume_rc"] = resumed.wait(timeout=400)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, 9)
    return summary


def scenario(out: Path) -> None:
    """Inside the namespace: one token cluster, node loss, then driver loss, then Ctrl-C."""
    with LocalCluster(workers=2, head_cpus=0, worker_cpus=1, auth=True, node_env=FAST_HEALTH,
                      timeout=120) as cluster:
        summary = {"nodes": lose_nodes(cluster, out / "nodes" / "sweep")}
        summary["driver"] = lose_driver(cluster, out / "driver" / "sweep")
        summary["fork"] = fork_on_cluster(cluster, out / "driver" / "sweep")
        summary["interrupt"] = interrupt_driver(cluster, out / "interrupt" / "sweep")
    summary["leftovers"] = cluster.leftover_pids()
    (out / "summary.json").write_text(json.dumps(summary))
    print("SCENARIO OK")


def check_sweep(out: Path, forks: int = 0) -> list[dict[str, str]]:
    """Every planned trial exactly once (and `forks` forks of seed_0/noalign from where the scheduler
    stopped it), none in error, the certificate pattern, lineage intact."""
    got = rows(out)
    ids = [r["trial_id"] for r in got if not r["fork"]]
    assert sorted(ids) == sorted(f"seed_{s}/{v}" for s in (0, 1) for v in ("full", "noalign", "rescue")), ids
    forked = [r for r in got if r["fork"]]
    noalign = next(r for r in got if r["trial_id"] == "seed_0/noalign")
    assert len(forked) == forks and len({r["trial_id"] for r in forked}) == forks
    assert all((r["parent_trial"], r["parent_step"], r["variant"]) == ("seed_0/noalign", noalign["step"], "rescue")
               for r in forked), forked
    by = {r["trial_id"]: r for r in got}
    for s in (0, 1):
        full, noalign, rescue = (by[f"seed_{s}/{v}"] for v in ("full", "noalign", "rescue"))
        assert float(full["G_tau"]) > 0 and float(rescue["G_tau"]) > 0 and float(noalign["G_tau"]) < 0
        assert rescue["parent_trial"] == f"seed_{s}/noalign"
    assert {r["status"] for r in got} <= {"finished", "stopped"}, [(r["trial_id"], r["reason"]) for r in got]
    for row in got:  # each report point once, up to the row's
        epochs = [json.loads(line)["epoch"] for line in (out / row["trial_dir"] / "metrics.jsonl").open()]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs[-1] == int(row["epoch"]), row["trial_id"]
    return got


def test_a_sweep_on_a_cluster_survives_lost_workers_and_a_lost_driver(tmp_path: Path) -> None:
    require_unshare()
    run = run_in_netns(HERE, "scenario", str(tmp_path), timeout=1500, cwd=ROOT)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*/*.log"))
    assert run.rc == 0 and "SCENARIO OK" in run.stdout, run.describe() + logs
    assert run.leftovers == [], run.describe()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["leftovers"] == []
    lost = summary["nodes"]
    assert lost["rc"] == 0 and [e["killed"] for e in lost["events"]] == ["w0", "w1"], (lost, logs)
    check_sweep(tmp_path / "nodes" / "sweep")
    assert summary["driver"]["rc"] == 0 and summary["driver"]["before"] >= 1, (summary, logs)
    assert summary["fork"]["rc"] == 0, (summary, logs)  # then two forks of it, on the same cluster
    check_sweep(tmp_path / "driver" / "sweep", forks=2)
    stop = summary["interrupt"]  # Ctrl-C: the driver's trials stopped, every node still up
    assert stop["rc"] == 130 and stop["trials_left"] == [] and stop["nodes_after"] == stop["nodes"], (stop, logs)
    interrupted = (tmp_path / "interrupt" / "interrupt.log").read_text()
    assert "stopped; continue with: python -m sweep resume" in interrupted and "Traceback" not in interrupted
    assert stop["resume_rc"] == 0, (stop, logs)
    check_sweep(tmp_path / "interrupt" / "sweep")


if __name__ == "__main__":
    if sys.argv[1:2] == ["scenario"]:
        out = Path(sys.argv[2])
        for sub in ("nodes", "driver", "interrupt"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        scenario(out)
    else:
        sys.exit(f"usage: {sys.argv[0]} scenario OUT  (run inside a network namespace)")
