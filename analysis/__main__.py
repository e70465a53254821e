"""Command line: `python -m analysis DIR [--tau 0 0.05 0.15] [--no-images] [--no-tensorboard] [--no-figures]`.

DIR may be the cloud URI a sweep ran at (s3://..., any pyarrow filesystem): the sweep (but Tune's
own tune/ folder) is staged on this machine, analysed there, and what the analysis wrote is
uploaded back; TensorBoard can then read the staged copy, whose path is printed.

Prints the tables as Markdown on stdout, then one 'note: ...' or 'problem: <file>: <what>' line per
item on stderr; writes CSV, LaTeX, Markdown and PNG files into DIR/analysis/ and the HParams,
teacher and image data into each trial's TensorBoard run. Exit status 0 when tables were produced,
2 (one line on stderr) when DIR is not a sweep directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from analysis.collect import is_sweep_dir
from analysis.figures import PanelError
from analysis.render import markdown_report
from analysis.report import analyse
from analysis.tables import DEFAULT_TAUS
from sweep.config import ConfigError
from sweep.interrupt import exit_process
from sweep.schema import CONFIG_FILE
from sweep.storage import Storage, is_uri


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    p.add_argument("dir", help="a sweep directory (or URI) written by `python -m sweep run` (finished or running)")
    p.add_argument("--tau", type=float, nargs="+",
                   help="tau values of the tau-sensitivity table (default: the sweep's eval.tau and eval.taus "
                        "when it lists taus, else 0 0.05 0.15)")
    p.add_argument("--no-images", action="store_true", help="skip reconstruction grids (no model rebuilds)")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard data")
    p.add_argument("--no-figures", action="store_true", help="draw no PNG figures")
    p.add_argument("--panels", metavar="SETTING",
                   help="one figure panel per value of this setting, e.g. train.lam (default: one per grid point)")
    return p


def config_taus(root: Path) -> list[float]:
    """eval.tau with eval.taus (and a grid's eval.tau values) of the sweep's config.yaml when it lists
    taus, else DEFAULT_TAUS."""
    try:
        config = yaml.safe_load((root / CONFIG_FILE).read_text()) or {}
        evaluation, grid = config.get("eval", {}), (config.get("sweep") or {}).get("grid") or {}
        taus = [float(t) for t in [*(evaluation.get("taus") or []), *(grid.get("eval.tau") or [])]]
        return sorted({float(evaluation["tau"]), *taus}) if taus else list(DEFAULT_TAUS)
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError):
        return list(DEFAULT_TAUS)  # a broken config.yaml is reported by the analysis itself


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    storage = None
    if is_uri(args.dir):
        try:
            storage = Storage(args.dir)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        storage.reset_staging()
        storage.pull("", skip=("tune",))
        print(f"note: staged {args.dir} in {storage.local}", file=sys.stderr)
    root = storage.local if storage else Path(args.dir)
    if not is_sweep_dir(root):
        print(f"error: {args.dir} is not a sweep directory (no config.yaml, results.csv or trial folder in it)",
              file=sys.stderr)
        return 2
    try:
        report = analyse(root, tuple(args.tau or config_taus(root)), tensorboard=not args.no_tensorboard,
                         images=not args.no_images, figures=not args.no_figures, panels=args.panels)
    except PanelError as err:  # --panels names no setting: refused before anything is written
        print(f"error: --{err}", file=sys.stderr)
        return 2
    print(markdown_report(report.tables))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if storage:
        storage.push("")  # the analysis folder and each trial's TensorBoard additions (only what changed)
    print(f"wrote {len(report.files)} files to {root / 'analysis'}"
          + (f" (uploaded to {args.dir.rstrip('/')}/analysis)" if storage else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_process(main())  # as `python -m sweep` ends: without the interpreter's last walk over torch's objects
