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
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    with open(out / "results.csv", newline="") as f:
        margins = {r["trial_id"]: f"{float(r['G_tau']):+.4f}" for r in csv.DictReader(f)}
    return wall, margins


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sweep.bench_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo_fashion_mnist.yaml")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
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
