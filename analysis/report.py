"""One analysis of a sweep directory: tables, TensorBoard additions and figures (issue 4).

`analyse` is what `python -m analysis DIR` runs: collect the directory (analysis.collect), build the
paper's tables (analysis.tables) and write them as CSV / LaTeX / Markdown (analysis.render), add
HParams, teacher and image data to each trial's TensorBoard run (analysis.board) and draw the
figures (analysis.figures). Nothing in it raises on bad files: every problem is a `Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.board import write_tensorboard
from analysis.collect import Sweep, collect
from analysis.figures import panel_keys, write_figures
from analysis.readers import Problem
from analysis.render import write_tables
from analysis.tables import DEFAULT_TAUS, Table, all_tables
from sweep.schema import ANALYSIS_DIR


@dataclass
class Report:
    """What one analysis produced.

    Attributes:
        sweep: The collected sweep.
        tables: Tables 1, 2, 3, 5, 6 and the trial listing.
        files: Files written under DIR/analysis/.
        notes: What was left out or rebuilt, and why (not errors).
        problems: Missing, partial or malformed files and failed writes.
    """

    sweep: Sweep
    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def analyse(root: str | Path, taus: tuple[float, ...] = DEFAULT_TAUS, tensorboard: bool = True,
            images: bool = True, figures: bool = True, panels: str | None = None) -> Report:
    """Tables, TensorBoard additions and figures for one sweep directory.

    Args:
        root: The sweep directory (finished or running).
        taus: The tau' of the tau-sensitivity table.
        tensorboard: Whether to write HParams, teacher data and images into the trial runs.
        images: Whether to rebuild models from checkpoints for reconstruction grids.
        figures: Whether to draw the PNG figures.
        panels: The setting whose values get one figure panel each (default: one per grid point).

    Returns:
        The report; its problems list every file that was missing, partial or malformed.

    Raises:
        PanelError: `panels` names no setting of the sweep's trials (before anything is written).
    """
    sweep = collect(root)
    if figures:
        panel_keys(sweep, panels)
    report = Report(sweep, all_tables(sweep, tuple(taus)), problems=list(sweep.problems))
    folder = sweep.root / ANALYSIS_DIR
    files, problems = write_tables(report.tables, folder, sweep.root)
    report.files += files
    report.problems += problems
    if tensorboard:
        notes, problems = write_tensorboard(sweep, images)
        report.notes += notes
        report.problems += problems
    if figures:
        files, notes, problems = write_figures(sweep, folder, panels)
        report.files += files
        report.notes += notes
        report.problems += problems
    write_problems(report, folder)
    return report


def write_problems(report: Report, folder: Path) -> None:
    """DIR/analysis/problems.txt: one line per note and problem (empty when all was well)."""
    lines = [f"note: {n}" for n in report.notes] + [str(p) for p in report.problems]
    try:
        (folder / "problems.txt").write_text("".join(f"{line}\n" for line in lines))
        report.files.append(folder / "problems.txt")
    except OSError as err:
        report.problems.append(Problem(str(folder), f"cannot write problems.txt ({err})"))
