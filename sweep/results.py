"""results.csv: its columns, the row of one ended trial, and appending rows safely (imports no torch
or Ray, so the analysis' table tool and both engines share it).

A row joins three sources:
  metrics     the trial's last report (sweep/metrics.py: I_T, L_align, G, G_tau, ...)
  the config  dataset, witness, target, alpha_KL and tau of the trial's resolved config
  trial.json  what the trial is and where it comes from (sweep/stage.py writes it): trial id,
              variant, seed, parent trial, checkpoint and step, the fork it is (sweep/grow.py),
              teacher K / QC / hash
plus the trial's status (finished / stopped / error) and the reason it ended.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.files import append_line
from sweep.schema import RESULT_COLUMNS, build_row
from sweep.variants import variant_rank

if TYPE_CHECKING:  # annotations only: this module must stay importable without torch
    from sweep.config import RunConfig



def make_row(cfg: RunConfig, metrics: dict[str, Any], info: dict[str, Any], status: str,
             reason: str = "") -> dict[str, Any]:
    """The results.csv row of one ended trial (`sweep.schema.build_row` of its resolved config)."""
    return build_row(dataclasses.asdict(cfg), metrics, info, status, reason)


def append_row(csv_path: Path, row: dict[str, Any]) -> None:
    """Append one row, writing the header first when the file is new; synced to disk, so a killed
    process never loses a row it wrote. A results.csv an older certsweep began keeps its own
    columns (a column added since stays empty for its new rows: its rows stay aligned)."""
    text = io.StringIO(newline="")
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    columns = RESULT_COLUMNS if new else header(csv_path)
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    if new:
        writer.writeheader()
    writer.writerow(row)
    append_line(csv_path, text.getvalue())  # whole or not at all, a full disk included


def header(csv_path: Path) -> tuple[str, ...]:
    """The columns of an existing results.csv, as its first line names them."""
    with open(csv_path, newline="") as f:
        return tuple(next(csv.reader(f), RESULT_COLUMNS))


def trial_ids(csv_path: Path) -> set[str]:
    """The trial ids that already have a row (an empty set without results.csv)."""
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as f:
        return {row["trial_id"] for row in csv.DictReader(f)}


def status_counts(csv_path: Path) -> dict[str, int]:
    """Trials per status in results.csv."""
    counts: dict[str, int] = {}
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def last_report(path: Path, chunk: int = 1 << 16) -> dict[str, Any]:
    """The last line of a metrics.jsonl as a dict ({} when there is none), read from the end of the
    file: the cost does not grow with the number of reports."""
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        tail = b""
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            tail = f.read(end - start) + tail
            lines = [line for line in tail.splitlines() if line.strip()]
            if len(lines) > 1 or (lines and start == 0):
                return json.loads(lines[-1])
            end = start
    return {}


def endpoint_table(csv_path: Path) -> str:
    """The per-seed endpoint table a sweep ends with: trial, status, G_tau, [G_lower, G_upper] and
    whether the trial is certified (G_lower > 0 at the sweep's eval.alpha), in seed and variant order."""
    if not csv_path.exists():
        return "no results"
    with open(csv_path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (int(r["seed"]), variant_rank(r["variant"]), r["trial_id"]))
    width = max([len(r["trial_id"]) for r in rows] + [5])
    alpha = next((r["alpha"] for r in rows if r.get("alpha")), "")
    lines = [f"{'trial':<{width}}  {'status':<8} {'G_tau':>8}  {'[G_lower, G_upper]':>20}  certified (alpha {alpha})"]
    for r in rows:
        bounds = f"[{_signed(r.get('G_lower'))}, {_signed(r.get('G_upper'))}]"
        lines.append(f"{r['trial_id']:<{width}}  {r['status']:<8} {_signed(r['G_tau']):>8}  {bounds:>20}  "
                     f"{'yes' if r.get('certified') == 'True' else 'no'}")
    return "\n".join(lines)


def _signed(text: str | None) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return "-"
    return f"{value:+.4f}" if math.isfinite(value) else "-"
