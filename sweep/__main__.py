"""Command line.

  python -m sweep run CONFIG [--set dotted.key=value ...] [--out DIR] [--address ADDR] [--sequential]
  python -m sweep resume DIR [--address ADDR] [--sequential]
  python -m sweep fork DIR TRIAL [--step N] [--set KEY=VALUE ...] [--address ADDR] [--sequential]
  python -m sweep extend DIR --set KEY=VALUE [...] [--address ADDR] [--sequential]

`run` is a Ray Tune sweep (sweep/engine/) on a local Ray of its own unless --address (or RAY_ADDRESS)
names a running cluster; --sequential runs the same plan one trial after another in this process,
without Ray and without the scheduler. `fork` starts new trials from a checkpoint of TRIAL with
other training settings (a list value is a grid); `extend` adds seeds, variants or grid values and
runs only the new trials (sweep/grow.py). Ctrl-C (or SIGTERM) stops a sweep and prints the `resume`
command that continues it; a second Ctrl-C stops at once.

Exit status: 0; 1 when some trial ended in error; 2 for a problem found before the sweep started (a
bad config, another driver holding the sweep); 3 when a storage fault stopped it (a full disk);
130 / 143 when SIGINT / SIGTERM stopped it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sweep.interrupt import STOP, SweepStopped, exit_process, resume_command  # light: no torch, no Ray


def user_errors() -> tuple[type[Exception], ...]:
    """The errors that are the user's input (exit 2, one line), imported once the handlers are in
    place: torch takes seconds to import, and a Ctrl-C then must stop the command cleanly too."""
    from sweep.checkpoint import CheckpointError
    from sweep.config import ConfigError
    from sweep.data import DataNotFoundError
    from sweep.lock import SweepLocked
    from sweep.protocol import NonFiniteLossError
    from teachers.artifact import TeacherCacheError

    return (ConfigError, DataNotFoundError, TeacherCacheError, CheckpointError, FileExistsError, NonFiniteLossError,
            ValueError, SweepLocked)


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
    resume = sub.add_parser("resume", help="carry a stopped or interrupted sweep to completion")
    resume.add_argument("dir", help="the sweep directory (or URI) of the stopped run")
    fork = sub.add_parser("fork", help="new trials from a checkpoint of one trial, with other training settings")
    fork.add_argument("dir", help="the sweep directory (or URI), finished or stopped")
    fork.add_argument("trial", help="the trial to fork, e.g. seed_0/noalign (a fork of a noalign is a rescue)")
    fork.add_argument("--step", type=int, help="start from the checkpoint kept at this step (default: its last)")
    extend = sub.add_parser("extend", help="add seeds, variants or grid values; run only the new trials")
    extend.add_argument("dir", help="the sweep directory (or URI), finished or stopped")
    for command, what in ((fork, "a training setting of the forks; a list is a grid (--set train.lam=[2,5])"),
                          (extend, "seeds, variants, sweep.grid.KEY or sweep.* (--set seeds=[0,1,2,3])")):
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=what)
    for command in (run, resume, fork, extend):
        command.add_argument("--sequential", action="store_true",
                             help="no Ray: every trial one after another in this process (no scheduler)")
        command.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                             help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    return p


def drive(args: argparse.Namespace) -> tuple[str, dict[str, int]]:
    """Run or resume the sweep the arguments name; returns its location and its trials per status."""
    from sweep.config import load_config
    from sweep.checks import check_out
    from sweep.results import status_counts
    from sweep.schema import RESULTS_FILE

    args.growth = growth(args)
    cfg = load_config(args.config, args.overrides) if args.command == "run" else None
    if cfg is not None:
        args.dir = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.dir
    STOP.hint = f"stopped; continue with: {resume_command(out, args.sequential)}"
    args.begun = True  # past the imports: `stopped` may read the sweep's storage
    if cfg is None:
        if args.sequential:
            from sweep.runner import resume_config  # heavy imports (torch, Ray) only when needed

            resume_config(out, growth=args.growth)
            return out, status_counts(Path(out) / RESULTS_FILE)
        from sweep.engine import resume_sweep

        return out, resume_sweep(out, args.address, growth=args.growth)
    check_out(out)  # before any data is read or Ray starts: a wrong --out costs nothing
    if args.sequential:
        from sweep.runner import run_config

        run_config(cfg, out)
        return out, status_counts(Path(out) / RESULTS_FILE)
    from sweep.engine import run_sweep

    return out, run_sweep(cfg, out, args.address)


def growth(args: argparse.Namespace):  # -> sweep.grow.Growth | None
    """What `fork` and `extend` add to the sweep (None for `resume`)."""
    from sweep.grow import Extend, Fork

    if args.command == "fork":
        return Fork(args.trial, args.step, args.overrides)
    return Extend(args.overrides) if args.command == "extend" else None


def stopped(err: SweepStopped, args: argparse.Namespace) -> int:
    """What a stopped sweep prints: the fault (if one stopped it), then how to continue."""
    if err.fault:
        print(f"error: {err.why}", file=sys.stderr)
    where = getattr(args, "dir", None)
    started = False
    if getattr(args, "begun", False):  # else stopped while importing: nothing was written
        from sweep.schema import CONFIG_FILE
        from sweep.storage import Storage

        try:
            started = Storage(where).exists(CONFIG_FILE)
        except OSError:
            started = True
    grown = getattr(args, "growth", None)
    if grown is not None and not grown.applied:
        print(f"stopped before the {grown.what} was recorded: nothing was added to {where}", file=sys.stderr,
              flush=True)
    elif started:
        print(STOP.hint, file=sys.stderr, flush=True)
    else:
        print("stopped before the sweep started: nothing was written", file=sys.stderr, flush=True)
    return err.exit_code


def main(argv: list[str] | None = None) -> int:
    """The command; its exit status. Signals are the caller's: `cli` installs the sweep's handlers."""
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        errors = user_errors()
        try:
            out, counts = drive(args)
        except errors as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    except SweepStopped as err:
        return stopped(err, args)
    from sweep.results import endpoint_table
    from sweep.schema import RESULTS_FILE
    from sweep.storage import Storage

    print(endpoint_table(Storage(out).path(RESULTS_FILE)))  # a URI's staged copy is current: synced at the end
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"done in {time.perf_counter() - t0:.1f}s ({tally or 'no trials'}): {str(out).rstrip('/')}/{RESULTS_FILE}")
    return 1 if counts.get("error") else 0


def cli() -> None:
    """`python -m sweep`: Ctrl-C and SIGTERM stop the sweep (sweep/interrupt.py), from the first
    line on; the process ends killing the sweep's own Ray, if it started one."""
    STOP.install()
    exit_process(main())


if __name__ == "__main__":
    cli()
