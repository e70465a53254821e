"""Engine benchmark (figures printed, never asserted): `python -m sweep.bench_engine`.

Runs one config three ways, one after another on this machine, and prints wall times and ratios:
  sequential   every trial one after another in one process (`python -m sweep run --sequential`),
               torch using every core (train.threads 0 = torch's default)
  ray-same     the Ray engine with the scheduler's collapse stop off: exactly the sequential run's
               trials and epochs (noalign runs to its endpoint, rescue starts there), one CPU and
               one torch thread per trial, trials side by side
  ray          the Ray engine as the demo runs it: noalign stopped after collapse_patience
               collapsed reports and its rescue forked from that checkpoint
Each is a fresh process, so each figure includes interpreter start-up, data loading and (for Ray)
ray.init, worker start and checkpoints. The machine is shared and noisy: compare within one run.

`--small-trials` instead runs the 8-seed smoke sweep (configs/smoke_digits.yaml, seeds 0-7, no
collapse stop: 8 warm-ups and 24 trials of about 0.2 s) `--rounds` times, alternating
`--sequential` and the Ray engine with default settings, then once on Ray in segments of
`--segment` trials, and prints the walls (median per engine) and a phase table: where the time goes
before the first trial starts, during the trials, after the last one ends until the end-of-run
table, and from there to the exit, beside the sequential run's; every segment boundary (the last
trial of a segment ended -> the first of the next started); and a bare `ray.init` + `ray.shutdown`
in a fresh process, the floor of any Ray run. Each phase is read off the driver's own output lines,
stamped as they arrive. It also prints the CPU seconds of every process each run started (read from
/proc every 0.25 s: the driver, the trial actors, the warm-up store, Ray's own processes), which
move far less than wall times on a shared machine: on two cores a run cannot take less wall than
half its CPU. From them, the least wall of the Ray run's work on this machine's cores: the time its
driver ran alone (no process started yet: its imports, data and checks), then the CPU of every
process spread over every core, none ever idle. A Ray run of the same work in the same order cannot
be shorter, so this says whether a target ratio to the sequential wall is within reach here.

`--driver-memory N` instead runs a Ray sweep of N seeds of tiny digits trials (4 trials per seed)
twice: as one Tune experiment (sweep.trials_per_segment 0) and in segments of `--segment` trials,
printing the driver's resident memory each time another tenth of the trials has ended and the
growth per 100 trials between the first and the last print: flat figures mean no per-trial state
accumulates in the driver.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sweep.schema import RESULT_FILE, RESULTS_FILE

MODES = {
    "sequential": ["--sequential"],
    "ray-same": ["--set", "scheduler.collapse_patience=0"],
    "ray": [],
}


def run(config: str, mode: str, out: Path, extra: list[str]) -> tuple[float, dict[str, str]]:
    """Wall seconds of one `python -m sweep run` and the endpoint G_tau per trial."""
    cmd = [sys.executable, "-m", "sweep", "run", config, "--out", str(out), *MODES[mode], *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{mode} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with open(out / RESULTS_FILE, newline="") as f:
        margins = {r["trial_id"]: f"{float(r['G_tau']):+.4f}" for r in csv.DictReader(f)}
    return wall, margins


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process, from /proc (Linux): all of it (VmRSS), the process's private
    heap (RssAnon) and shared memory (RssShmem: here, pages of Ray's object store the driver has
    touched by putting objects, which the store reuses and bounds)."""
    with open(f"/proc/{pid}/status") as f:
        fields = [line.split() for line in f]
    kib = {w[0].rstrip(":"): int(w[1]) for w in fields if len(w) > 1 and w[0] in ("VmRSS:", "RssAnon:", "RssShmem:")}
    return {k: v / 1024 for k, v in kib.items()}


def growth(seen: list[tuple[int, dict[str, float]]], key: str) -> float:
    """MiB per 100 ended trials of one /proc/PID/status field, first to last sample (nan with fewer than 2)."""
    if len(seen) < 2:
        return float("nan")
    return (seen[-1][1][key] - seen[0][1][key]) / max(1, seen[-1][0] - seen[0][0]) * 100


def driver_memory(n_seeds: int, segment: int) -> None:
    """Driver RSS as a sweep of 4 * n_seeds tiny trials proceeds, in one experiment and in segments."""
    import yaml

    raw = {"name": "driver_memory", "seeds": list(range(n_seeds)), "variants": ["full", "noalign", "rescue"],
           "data": {"name": "digits"}, "model": {"arch": "mlp", "latent_dim": 4, "hidden": 32},
           "teacher": {"ks": [4], "restarts": 1, "max_iter": 50, "min_teacher_mi": 0.0, "min_top1_margin": 0.0,
                       "min_high_margin_frac": 0.0},
           "train": {"warmup_epochs": 1, "epochs": 2, "rescue_epochs": 1, "batch_size": 64, "lr": 0.005,
                     "lam": 20.0, "device": "cpu", "threads": 1},
           "eval": {"probe_samples": 500}, "scheduler": {"collapse_patience": 1}, "sweep": {"console_every_s": 3600}}
    total = 4 * n_seeds
    with tempfile.TemporaryDirectory(prefix="certsweep-bench-") as tmp:
        config = Path(tmp) / "memory.yaml"
        config.write_text(yaml.safe_dump(raw))
        for per in (0, segment):
            label = "one experiment" if per == 0 else f"segments of {per}"
            out, t0, seen = Path(tmp) / f"out-{per}", time.perf_counter(), []
            driver = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(config), "--out", str(out),
                                       "--set", f"sweep.trials_per_segment={per}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            marks = [total * k // 10 for k in range(1, 10)]
            while driver.poll() is None:
                ended = len(list(out.glob(f"seed_*/*/{RESULT_FILE}"))) if out.exists() else 0
                if marks and ended >= marks[0]:
                    seen.append((ended, rss_mib(driver.pid)))
                    m = seen[-1][1]
                    print(f"{label:<16} {ended:>5}/{total} trials ended  driver RSS {m['VmRSS']:7.1f} MiB "
                          f"(private {m['RssAnon']:6.1f}, object-store pages {m['RssShmem']:5.1f})  "
                          f"{time.perf_counter() - t0:6.1f} s", flush=True)
                    while marks and ended >= marks[0]:
                        marks.pop(0)
                time.sleep(0.25)
            print(f"{label:<16} exit {driver.returncode} after {time.perf_counter() - t0:.1f} s; growth per 100 "
                  f"trials: RSS {growth(seen, 'VmRSS'):+.2f} MiB, private {growth(seen, 'RssAnon'):+.2f} MiB, "
                  f"object-store pages {growth(seen, 'RssShmem'):+.2f} MiB", flush=True)


SMALL = ["configs/smoke_digits.yaml", "--set", "seeds=[0,1,2,3,4,5,6,7]", "--set", "scheduler.collapse_patience=0"]
BARE_RAY = ("import time; t0 = time.perf_counter(); import ray; t1 = time.perf_counter(); "
            "ray.init(address='local', include_dashboard=False, log_to_driver=False, num_cpus=2); "
            "t2 = time.perf_counter(); ray.shutdown(); t3 = time.perf_counter(); "
            "print(f'{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}')")


CPU_KINDS = {"ray::ImplicitFunc": "trial actors", "ray::WarmupStore": "warm-up store"}
"""Process titles (Ray's) of the processes a Ray run's CPU is split by; the driver is the command's
own process (DRIVER), and every other process it started, and theirs, is Ray's own (RAY_OWN: GCS,
raylet, agents, dashboard, monitors, idle workers)."""
DRIVER, RAY_OWN = "driver", "Ray's own"
CORES = len(os.sched_getaffinity(0))  # the cores this benchmark and the runs it starts may use


class CpuSampler(threading.Thread):
    """CPU seconds (user + system) of a process and every process it starts, read from /proc
    (Linux) every `every` s until stopped, by kind: DRIVER, CPU_KINDS' values, RAY_OWN. A
    process that ends between two reads loses at most `every` s of its CPU.

    Also the least wall time in which its work fits on a number of cores (`least_wall`): up to the
    last read that found it without a child (`alone`: seconds since the sampler started, its CPU
    seconds then) the process ran by itself, and after that no run uses more cores than there are."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.done = pid, every, threading.Event()
        self.seen: dict[tuple[int, str], tuple[str, float]] = {}  # (pid, start time) -> (kind, CPU s)
        self.tick = os.sysconf("SC_CLK_TCK")
        self.started, self.alone, self.spawned = time.perf_counter(), (0.0, 0.0), False

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.read()

    def read(self) -> None:
        now = time.perf_counter()
        stats: dict[int, list[str]] = {}
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    stats[int(name)] = f.read().rsplit(")", 1)[1].split()  # fields from the state on
            except (ValueError, OSError):
                continue
        children: dict[int, list[int]] = {}
        for pid, fields in stats.items():
            children.setdefault(int(fields[1]), []).append(pid)
        tree, todo = [], [self.pid]
        while todo:
            tree.append(todo.pop())
            todo += children.get(tree[-1], [])
        for pid in tree:
            fields = stats.get(pid)
            if fields is None:
                continue
            key = (pid, fields[19])
            kind = self.seen.get(key, (RAY_OWN, 0.0))[0]
            if kind == RAY_OWN:  # a worker takes its title (ray::...) once it hosts an actor
                kind = self.kind(pid)
            self.seen[key] = (kind, (int(fields[11]) + int(fields[12])) / self.tick)
        self.spawned = self.spawned or len(tree) > 1
        if not self.spawned and self.pid in stats:
            self.alone = (now - self.started, self.seen[(self.pid, stats[self.pid][19])][1])

    def kind(self, pid: int) -> str:
        if pid == self.pid:
            return DRIVER
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                title = f.read()
        except OSError:
            return RAY_OWN
        return next((kind for prefix, kind in CPU_KINDS.items() if title.startswith(prefix)), RAY_OWN)

    def least_wall(self, cores: int) -> float:
        """Seconds: the time it ran alone, then the rest of all its processes' CPU spread over `cores`
        cores. No run of the same work in the same order on `cores` cores can be shorter."""
        alone_s, alone_cpu = self.alone
        return alone_s + max(0.0, sum(cpu for _, cpu in self.seen.values()) - alone_cpu) / cores

    def stop(self) -> dict[str, float]:
        """CPU seconds by kind, and "all"."""
        self.done.set()
        self.join()
        by_kind: dict[str, float] = {"all": 0.0}
        for kind, cpu in self.seen.values():
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu
            by_kind["all"] += cpu
        return by_kind


def stamped_run(argv: list[str]) -> tuple[list[tuple[float, str]], float, dict[str, float], tuple[float, float]]:
    """Run `python -m sweep run ARGV`; (seconds since the start at which each output line arrived,
    the line), the wall time to the process's exit, the CPU seconds of its processes by kind, and
    (the seconds the driver ran alone, the least wall of the run's work on this machine's cores)
    (CpuSampler)."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-u", "-m", "sweep", "run", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    sampler = CpuSampler(child.pid)
    sampler.start()
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in child.stdout]
    sampler.read()  # the last figures of the processes still there
    if child.wait() != 0:
        sys.exit(f"python -m sweep run {' '.join(argv)} failed ({child.returncode}):\n"
                 + "\n".join(line for _, line in lines[-30:]))
    wall, cpu = time.perf_counter() - t0, sampler.stop()
    return lines, wall, cpu, (sampler.alone[0], sampler.least_wall(CORES))


def phases(lines: list[tuple[float, str]], wall: float, sequential: bool) -> dict[str, float]:
    """Phase durations of one run from its stamped output lines (see the module docstring)."""
    def first(test) -> float:
        return next(t for t, line in lines if test(line))

    table = first(lambda line: line.startswith("trial ") and "status" in line)
    done = first(lambda line: line.startswith("done in"))
    if sequential:  # no start lines: the trials begin after the sweep's first line, end before the table
        start, last = lines[0][0], max(t for t, line in lines if t < table)
        ray_up = start
    else:
        ray_up = first(lambda line: line.startswith("Ray: "))
        start = first(lambda line: " started " in line)
        last = max(t for t, line in lines if " ended " in line)
    out = {"imports, data, Ray start": ray_up, "plan and publish to the first trial": start - ray_up,
           "the trials": last - start, "last trial's end to the end of the table": done - last,
           "teardown to exit": wall - done}
    boundaries = [i for i, (_, line) in enumerate(lines) if line.startswith("segment ")]
    for n, i in enumerate(boundaries, 1):
        before = max(t for t, line in lines[:i] if " ended " in line)
        after = next(t for t, line in lines[i:] if " started " in line)
        out[f"segment boundary {n}"] = after - before
    return out


def small_trials(rounds: int, segment: int) -> None:
    """The small-trials benchmark: walls and phases of sequential and Ray runs of the smoke sweep."""
    import statistics

    runs: dict[str, list[tuple[dict[str, float], float, int]]] = {"sequential": [], "ray": []}
    cpus: dict[str, list[dict[str, float]]] = {"sequential": [], "ray": []}
    least: list[tuple[float, float]] = []  # the Ray runs' (driver alone, least wall)
    with tempfile.TemporaryDirectory(prefix="certsweep-bench-") as tmp:
        for r in range(rounds):
            for mode in ("sequential", "ray") if r % 2 == 0 else ("ray", "sequential"):
                out = Path(tmp) / f"{mode}-{r}"
                engine = ["--sequential"] if mode == "sequential" else []
                lines, wall, cpu, bound = stamped_run([*SMALL, "--out", str(out), *engine])
                with open(out / RESULTS_FILE, newline="") as f:
                    n_rows = sum(1 for _ in csv.DictReader(f))
                runs[mode].append((phases(lines, wall, mode == "sequential"), wall, n_rows))
                cpus[mode].append(cpu)
                if mode == "ray":
                    least.append(bound)
                print(f"round {r + 1} {mode:<10} {wall:6.2f} s wall, {cpu['all']:6.2f} s CPU, {n_rows} rows", flush=True)
        lines, wall, _, _ = stamped_run([*SMALL, "--out", str(Path(tmp) / "segments"),
                                      "--set", f"sweep.trials_per_segment={segment}"])
        segmented = phases(lines, wall, False)
    bare = subprocess.run([sys.executable, "-c", BARE_RAY], capture_output=True, text=True, check=True).stdout.split()
    walls = {mode: statistics.median(w for _, w, _ in r) for mode, r in runs.items()}
    print(f"\nwall, median of {rounds} round(s): sequential {walls['sequential']:.2f} s, ray {walls['ray']:.2f} s "
          f"({walls['ray'] / walls['sequential']:.2f}x sequential)")
    print(f"bare Ray in a fresh process: import ray {float(bare[0]):.2f} s, ray.init {float(bare[1]):.2f} s, "
          f"ray.shutdown {float(bare[2]):.2f} s")
    med = {mode: {k: statistics.median(p[k] for p, _, _ in r) for k in r[0][0]} for mode, r in runs.items()}
    print(f"\n{'phase (median s)':<44} {'ray':>7} {'sequential':>11} {'segments of ' + str(segment):>16}")
    for key in med["ray"]:
        print(f"{key:<44} {med['ray'][key]:7.2f} {med['sequential'][key]:11.2f} {segmented[key]:16.2f}")
    for key in [k for k in segmented if k.startswith("segment boundary")]:
        print(f"{key:<44} {'':>7} {'':>11} {segmented[key]:16.2f}")
    fixed = {m: sum(v for k, v in med[m].items() if k != "the trials") for m in med}
    floor = float(bare[1]) + float(bare[2])
    print(f"\nfixed cost (all but the trials): ray {fixed['ray']:.2f} s, sequential {fixed['sequential']:.2f} s; "
          f"excess over sequential {fixed['ray'] - fixed['sequential']:.2f} s, of which beyond a bare ray.init + "
          f"ray.shutdown ({floor:.2f} s): {fixed['ray'] - fixed['sequential'] - floor:.2f} s")
    print(f"the trials: ray {med['ray']['the trials']:.2f} s, sequential {med['sequential']['the trials']:.2f} s "
          f"({med['ray']['the trials'] / med['sequential']['the trials']:.2f}x)")
    kinds = ["all", DRIVER, *CPU_KINDS.values(), RAY_OWN]
    print(f"\n{'CPU s of all processes (median; /proc, 0.25 s)':<44} {'ray':>7} {'sequential':>11}")
    for kind in kinds:
        print(f"{kind:<44} " + " ".join(f"{statistics.median(c.get(kind, 0.0) for c in cpus[mode]):{w}.2f}"
                                         for mode, w in (("ray", 7), ("sequential", 11))))
    alone, least_wall = (statistics.median(b[i] for b in least) for i in (0, 1))
    print(f"\nleast wall of the Ray run's work on {CORES} cores (median): {least_wall:.2f} s "
          f"({least_wall / walls['sequential']:.2f}x the sequential wall): the driver alone for {alone:.2f} s until "
          f"it starts Ray, then the CPU of every process spread over every core, with none idle")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sweep.bench_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo_fashion_mnist.yaml")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--driver-memory", type=int, metavar="N_SEEDS",
                   help="measure the driver's memory over a sweep of N_SEEDS x 4 tiny digits trials instead")
    p.add_argument("--segment", type=int, default=200,
                   help="trials per segment of --driver-memory's second run (of --small-trials' last run: 8)")
    p.add_argument("--small-trials", action="store_true", help="the small-trials benchmark and its phase table")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of --small-trials")
    args = p.parse_args()
    if args.small_trials:
        small_trials(args.rounds, 8 if args.segment == 200 else args.segment)
        return
    if args.driver_memory:
        driver_memory(args.driver_memory, args.segment)
        return
    extra = [a for o in args.overrides for a in ("--set", o)]
    walls = {}
    with tempfile.TemporaryDirectory(prefix="certsweep-bench-") as tmp:
        for mode in args.modes:
            walls[mode], margins = run(args.config, mode, Path(tmp) / mode, extra)
            print(f"{mode:<11} {walls[mode]:7.1f} s wall  G_tau {' '.join(f'{k}={v}' for k, v in sorted(margins.items()))}",
                  flush=True)
    if "sequential" in walls:
        for mode in [m for m in walls if m != "sequential"]:
            print(f"speed-up {mode} vs sequential: {walls['sequential'] / walls[mode]:.2f}x")


if __name__ == "__main__":
    main()
