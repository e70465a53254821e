"""Command line: `python -m sweep run CONFIG [--set dotted.key=value ...] [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sweep.checkpoint import CheckpointError
from sweep.config import ConfigError, load_config
from sweep.data import DataNotFoundError
from sweep.protocol import NonFiniteLossError
from teachers.artifact import TeacherCacheError

USER_ERRORS = (ConfigError, DataNotFoundError, TeacherCacheError, CheckpointError, FileExistsError,
               NonFiniteLossError, ValueError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every seed x variant of a config")
    run.add_argument("config", help="YAML config, e.g. configs/demo_fashion_mnist.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed as YAML (e.g. --set seeds=[11,12,13])")
    run.add_argument("--out", help="new output directory (default runs/<name>-<time>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        from sweep.runner import run_config  # heavy imports (torch) only after the config is valid

        t0 = time.perf_counter()
        run_config(cfg, out)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f}s: {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
