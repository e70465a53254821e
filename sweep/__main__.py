"""Command line.

  python -m sweep run CONFIG [--set dotted.key=value ...] [--out DIR] [--address ADDR] [--sequential]
  python -m sweep resume DIR [--address ADDR]

`run` is a Ray Tune sweep (sweep/engine/) on a local Ray of its own unless --address (or RAY_ADDRESS)
names a running cluster; --sequential runs the same plan one trial after another in this process,
without Ray and without the scheduler.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sweep.checkpoint import CheckpointError
from sweep.config import ConfigError, load_config
from sweep.data import DataNotFoundError
from sweep.outpath import check_out
from sweep.protocol import NonFiniteLossError
from teachers.artifact import TeacherCacheError

USER_ERRORS = (ConfigError, DataNotFoundError, TeacherCacheError, CheckpointError, FileExistsError,
               NonFiniteLossError, ValueError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every seed x grid point x variant of a config")
    run.add_argument("config", help="YAML config, e.g. configs/demo_fashion_mnist.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed as YAML (e.g. --set seeds=[11,12,13])")
    run.add_argument("--out", help="new output directory, or a cloud URI with nothing at it yet "
                                   "(s3://bucket/path, gs://..., any pyarrow filesystem; default runs/<name>-<time>)")
    run.add_argument("--sequential", action="store_true",
                     help="no Ray: every trial one after another in this process (no scheduler)")
    resume = sub.add_parser("resume", help="carry an interrupted Ray sweep to completion")
    resume.add_argument("dir", help="the sweep directory (or URI) of the interrupted run")
    for command in (run, resume):
        command.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                             help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.command == "resume":
            from sweep.engine import resume_sweep  # heavy imports (torch, Ray) only when needed

            out, counts = args.dir, resume_sweep(args.dir, args.address)
        else:
            cfg = load_config(args.config, args.overrides)
            out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            check_out(out)  # before any data is read or Ray starts: a wrong --out costs nothing
            if args.sequential:
                from sweep.runner import run_config
                from sweep.results import RESULTS_FILE, status_counts

                run_config(cfg, out)
                counts = status_counts(Path(out) / RESULTS_FILE)
            else:
                from sweep.engine import run_sweep

                counts = run_sweep(cfg, out, args.address)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from sweep.results import RESULTS_FILE, endpoint_table
    from sweep.storage import Storage

    print(endpoint_table(Storage(out).path(RESULTS_FILE)))  # a URI's staged copy is current: synced at the end
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"done in {time.perf_counter() - t0:.1f}s ({tally or 'no trials'}): {str(out).rstrip('/')}/results.csv")
    return 1 if counts.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
