"""File readers of a sweep directory that never raise: each returns (data, problems).

A missing, partial or malformed file becomes one `Problem` naming the file (relative to the sweep
directory), and the analysis goes on with what is there. results.csv is normalised into the
endpoint frame the tables read: every column of sweep.schema.RESULT_COLUMNS (an older results.csv
without the baselines' `method`, `posthoc_G_tau`, `posthoc_student_mi` gets them empty, its method
"certificate"), teacher QC as in docs/method.md ("Protocol" step 2: teacher_feasible True -> "feasible",
False -> "stress case") and `margin`, the margin that applies to the row's target
(`sweep.schema.margin_name`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

from sweep.schema import CONFIG_FILE, NUMERIC_COLUMNS, RESULT_COLUMNS, RESULTS_FILE, TEXT_COLUMNS, margin_name

CORE_COLUMNS = ("I_T", "L_align", "G", "G_tau", "student_mi")
ANALYSIS_SUFFIX = ".analysis"  # event files this package writes end so; training's never do


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file; printed as 'problem: <file>: <what>'."""

    file: str
    what: str

    def __str__(self) -> str:
        return f"problem: {self.file}: {self.what}"


def rel(root: Path, path: Path) -> str:
    """`path` relative to the sweep directory, for problem lines."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_json(root: Path, path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A JSON object from `path`; None and a problem when unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, [Problem(rel(root, path), f"cannot be read as JSON ({err})")]
    if not isinstance(data, dict):
        return None, [Problem(rel(root, path), "is not a JSON object")]
    return data, []


def read_jsonl(root: Path, path: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """metrics.jsonl rows; a line that is not a JSON object is skipped with a problem."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return [], [Problem(rel(root, path), f"cannot be read ({err})")]
    rows, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            problems.append(Problem(rel(root, path), f"line {number} is not a report point (JSON with a step); skipped"))
    return rows, problems


def read_config_yaml(root: Path) -> tuple[dict[str, Any], list[Problem]]:
    """DIR/config.yaml as a dict; {} with a problem when missing or malformed."""
    path = root / CONFIG_FILE
    if not path.exists():
        return {}, [Problem(CONFIG_FILE, "missing; the sweep is named after its directory")]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {}, [Problem(CONFIG_FILE, f"cannot be read as YAML ({str(err).splitlines()[0]})")]
    if not isinstance(data, dict):
        return {}, [Problem(CONFIG_FILE, "is not a mapping")]
    return data, []


def _csv_records(text: str, file: str) -> tuple[list[str], list[dict[str, str]], list[Problem]]:
    """Header and rows of a CSV text; rows with the wrong number of fields are skipped."""
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        return [], [], [Problem(file, f"is not valid CSV ({err})")]
    lines = [(n, line) for n, line in enumerate(lines, 1) if any(cell.strip() for cell in line)]
    if not lines:
        return [], [], [Problem(file, "is empty: no finished trial yet")]
    (_, header), body = lines[0], lines[1:]
    rows, problems = [], []
    for number, line in body:
        if len(line) != len(header):
            problems.append(Problem(file, f"line {number} has {len(line)} fields, the header {len(header)}; skipped"))
        else:
            rows.append(dict(zip(header, line)) | {"_line": str(number)})
    return header, rows, problems


def _text(column: pd.Series) -> pd.Series:
    """Cells as stripped strings; missing cells become ''."""
    return pd.Series([v.strip() if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in column],
                     index=column.index, dtype=object)


def _numbers(frame: pd.DataFrame, file: str) -> list[Problem]:
    """Known numeric columns to float in place, a cell that is no number becoming NaN with a problem;
    any other column becomes float silently when every cell in it is a number."""
    problems = []
    for column in [c for c in frame.columns if c not in TEXT_COLUMNS and c != "_line"]:
        raw = _text(frame[column])
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & ~raw.str.lower().isin(("", "nan", "none"))
        if column not in NUMERIC_COLUMNS:
            frame[column] = raw if bad.any() else values.astype(float)
            continue
        for line, cell in zip(frame.loc[bad, "_line"], raw[bad]):
            problems.append(Problem(file, f"line {line}: {column} = {cell[:40]!r} is not a number"))
        frame[column] = values.astype(float)
    return problems


def _qc(value: Any) -> str:
    """Teacher QC label of a teacher_feasible cell."""
    text = str(value).strip().lower()
    return {"true": "feasible", "1": "feasible", "1.0": "feasible",
            "false": "stress case", "0": "stress case", "0.0": "stress case"}.get(text, "unknown")


def normalise(frame: pd.DataFrame, file: str = RESULTS_FILE) -> tuple[pd.DataFrame, list[Problem]]:
    """Types and derived columns of an endpoint frame of string cells.

    Adds every missing result column (NaN / ""), `method` ("certificate" when absent), `qc`
    (feasible / stress case / unknown), `margin` (`sweep.schema.margin_name` of its target) and
    `certified` as True / False (NaN where the row has no statistical certificate).
    Rows without an integer seed or a variant are dropped with a problem.

    Args:
        frame: One row per trial; cells as read (strings) or already typed.
        file: Name used in problem lines.

    Returns:
        The normalised frame and the problems found.
    """
    frame = frame.copy()
    if "_line" not in frame:
        frame["_line"] = [str(i + 2) for i in range(len(frame))]
    for column in dict.fromkeys((*RESULT_COLUMNS, *TEXT_COLUMNS, *NUMERIC_COLUMNS)):
        if column not in frame:
            frame[column] = "" if column in TEXT_COLUMNS else np.nan
    frame["method"] = _text(frame["method"]).replace({"": "certificate", "nan": "certificate"})
    problems = _numbers(frame, file)
    frame["variant"] = _text(frame["variant"])
    bad = frame["seed"].isna() | (frame["seed"] % 1 != 0) | (frame["variant"] == "")
    problems += [Problem(file, f"line {n}: no integer seed or no variant; row skipped") for n in frame.loc[bad, "_line"]]
    frame = frame[~bad].copy()
    frame["seed"] = frame["seed"].astype(int)
    frame["qc"] = frame["teacher_feasible"].map(_qc)
    unknown = frame[frame["qc"] == "unknown"]
    problems += [Problem(file, f"line {line}: teacher_feasible = {v!r} is neither True nor False; reported as "
                               "unknown QC, never pooled") for line, v in zip(unknown["_line"], unknown["teacher_feasible"])]
    frame["target"] = _text(frame["target"]).replace({"": "search", "nan": "search"})
    frame["margin"] = pd.Series([frame.at[i, margin_name(t)] for i, t in frame["target"].items()], index=frame.index,
                                dtype=float)
    # the statistical certificate (absent from results.csv files written before it): True / False / NaN
    frame["certified"] = _text(frame["certified"]).str.lower().map({"true": True, "false": False})
    return frame.reset_index(drop=True), problems


def read_results(root: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """DIR/results.csv, normalised; an empty normalised frame plus problems when unusable."""
    path, empty = root / RESULTS_FILE, pd.DataFrame({c: [] for c in RESULT_COLUMNS})
    if not path.exists():
        return normalise(empty)[0], [Problem(RESULTS_FILE, "missing: no trial has finished yet")]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return normalise(empty)[0], [Problem(RESULTS_FILE, f"cannot be read ({err})")]
    header, rows, problems = _csv_records(text, RESULTS_FILE)
    lacking = [c for c in ("seed", "variant") if c not in header]
    if header and lacking:
        return normalise(empty)[0], problems + [Problem(RESULTS_FILE, f"header lacks {', '.join(lacking)}: "
                                                                       "not a results table; ignored")]
    missing = [c for c in CORE_COLUMNS if header and c not in header]
    if missing:
        problems.append(Problem(RESULTS_FILE, f"header lacks {', '.join(missing)}; those cells stay empty"))
    if header and not rows and not problems:
        problems.append(Problem(RESULTS_FILE, "has a header but no rows: no finished trial yet"))
    frame, more = normalise(pd.DataFrame(rows, columns=[*header, "_line"]) if header else empty)
    return _last_per_trial(frame, problems + more)


def _last_per_trial(frame: pd.DataFrame, problems: list[Problem]) -> tuple[pd.DataFrame, list[Problem]]:
    """A trial appended twice (e.g. resumed) keeps its later row, with a problem line."""
    key = _text(frame["trial_dir"])
    repeated = (key != "") & key.duplicated(keep="last")
    problems += [Problem(RESULTS_FILE, f"line {line}: trial {k} appears again later; the later row is used")
                 for line, k in zip(frame.loc[repeated, "_line"], key[repeated])]
    return frame[~repeated].reset_index(drop=True), problems


def _records(path: Path) -> tuple[list[bytes], str | None]:
    """TFRecord payloads of an event file up to the first bad record, and what was bad there."""
    reader = PyRecordReader_New(str(path))
    records: list[bytes] = []
    try:
        while True:
            reader.GetNext()
            records.append(reader.record())
    except errors.OutOfRangeError:
        return records, None
    except errors.DataLossError as err:
        return records, "truncated" if "truncated" in str(err) else "corrupt"
    finally:
        reader.file_handle.close()


def _scalar_keys(records: list[bytes]) -> tuple[set[tuple[str, int]], int | None]:
    """(tag, step) of every summary value, and the index of the first record that does not parse."""
    keys = set()
    for i, record in enumerate(records):
        try:
            event = event_pb2.Event.FromString(record)
        except DecodeError:
            return keys, i
        keys.update((value.tag, int(event.step)) for value in event.summary.value)
    return keys, None


def scan_events(root: Path, trial_dir: Path, running: bool) -> tuple[set[tuple[str, int]], list[Problem]]:
    """(tag, step) pairs in the event files that training wrote into `trial_dir`.

    Files this package wrote (suffix ANALYSIS_SUFFIX) are skipped. A record that fails its CRC
    check or does not parse is a problem; a truncated last record only when the trial has
    finished (a running trial may be writing it).

    Args:
        root: The sweep directory (for problem lines).
        trial_dir: The trial's directory.
        running: Whether the trial is still running.

    Returns:
        The pairs read, and the problems found.
    """
    keys: set[tuple[str, int]] = set()
    problems = []
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        if path.name.endswith(ANALYSIS_SUFFIX) or not path.is_file():
            continue
        try:
            records, bad = _records(path)
        except OSError as err:
            problems.append(Problem(rel(root, path), f"cannot be read ({err})"))
            continue
        found, unparsed = _scalar_keys(records)
        keys |= found
        if unparsed is not None or bad == "corrupt":
            n = len(records) if unparsed is None else unparsed
            problems.append(Problem(rel(root, path), f"corrupt event file: record {n + 1} is damaged "
                                                     f"({n} records readable before it)"))
        elif bad == "truncated" and not running:
            problems.append(Problem(rel(root, path), f"truncated event file: its last record is cut off "
                                                     f"({len(records)} records readable)"))
    return keys, problems
