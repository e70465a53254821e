"""The sweep's schema has one home (sweep/schema.py): every writer and reader derives its file
names, metric names, TensorBoard tags, results columns and margin choice from it."""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from sweep import schema
from sweep.config import from_dict, load_config
from sweep.runner import run_config

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted(p for folder in ("sweep", "analysis", "models", "teachers") for p in (ROOT / folder).rglob("*.py"))
SCHEMA_NAMES = {value for name, value in vars(schema).items()
                if name.endswith(("_FILE", "_CHECKPOINT")) and isinstance(value, str)}


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_file_names_and_tags_are_spelled_only_in_the_schema():
    """No module but sweep/schema.py spells a sweep file's name or a metric's TensorBoard tag."""
    tags = {f.tag for f in schema.FIELDS if f.group}
    found = []
    for path in CODE:
        if path.name == "schema.py":
            continue
        for line, value in string_literals(path):
            if value in tags or any(name in value.split("/") for name in SCHEMA_NAMES):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert SCHEMA_NAMES >= {"results.csv", "checkpoint.pt", "metrics.jsonl", "trial.json", "plan.jsonl"}
    assert not found, "spelled outside sweep/schema.py:\n" + "\n".join(found)


def test_readers_and_writers_share_the_registry():
    """The readers' column types, Tune's keys and the board's tags are the registry's own objects."""
    from analysis import readers
    from sweep import results

    assert readers.TEXT_COLUMNS is schema.TEXT_COLUMNS and readers.NUMERIC_COLUMNS is schema.NUMERIC_COLUMNS
    assert results.RESULT_COLUMNS is schema.RESULT_COLUMNS
    assert set(schema.TEXT_COLUMNS) | set(schema.NUMERIC_COLUMNS) == set(schema.RESULT_COLUMNS)
    assert len(set(schema.RESULT_COLUMNS)) == len(schema.RESULT_COLUMNS)
    assert {"margin", "G_tau", "G_lower", "G_upper", "lam", "step"} <= set(schema.TUNE_KEYS)
    assert schema.tag("G_tau") == "certificate/G_tau" and schema.tag("G_tau@0.1") == "certificate/G_tau@0.1"
    assert schema.group_of("seed") == "" and schema.group_of("train_total") == "loss"


@pytest.mark.parametrize("target, name", [("search", "G_tau"), ("fixed", "G_fix"), ("", "G_tau")])
def test_one_margin_rule(target, name):
    assert schema.margin_name(target) == name


def test_cache_seed_folder_rule():
    assert schema.cache_seed_dir("/c", -1, 3) == Path("/c/seed_3")
    assert schema.cache_seed_dir("/c", 7, 3) == Path("/c/seed_7")


def test_a_real_sweep_writes_only_registered_metrics_and_columns(tmp_path):
    """A sequential smoke sweep: every key of every report is a registered metric (or an extra
    tau), every TensorBoard tag comes from the registry, results.csv has exactly its columns in
    its order, and each row equals `build_row` of the trial's own files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(ROOT / "configs" / "smoke_digits.yaml", ["seeds=[0]", "variants=[full,noalign]"])
    out = tmp_path / "run"
    run_config(cfg, str(out))
    with open(out / schema.RESULTS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == schema.RESULT_COLUMNS
        rows = list(reader)
    assert {r["variant"] for r in rows} == {"full", "noalign"}
    for row in rows:
        folder = out / row["trial_dir"]
        reports = [json.loads(line) for line in (folder / schema.METRICS_FILE).read_text().splitlines()]
        keys = {k for report in reports for k in report}
        unregistered = {k for k in keys if k not in schema.BY_NAME and not k.startswith(schema.TAU_PREFIX)}
        assert not unregistered, f"{row['trial_dir']} reports metrics outside the registry: {unregistered}"
        events = EventAccumulator(str(folder)).Reload()
        logged = set(events.Tags()["scalars"])
        expected = {schema.tag(k) for k in keys if schema.group_of(k) and isinstance(reports[-1].get(k), (int, float))
                    and math.isfinite(reports[-1][k])}
        assert expected <= logged and all(t.split("/")[0] in (schema.CERTIFICATE, schema.LOSS, schema.COLLAPSE)
                                          or t.startswith("variant/") for t in logged)
        settings = json.loads((folder / schema.SETTINGS_FILE).read_text())
        info = json.loads((folder / schema.TRIAL_FILE).read_text())
        rebuilt = schema.build_row(settings, reports[-1], info, row["status"], row["reason"])
        assert set(rebuilt) == set(schema.RESULT_COLUMNS)
        for column, value in rebuilt.items():
            written = row[column]
            if isinstance(value, float) and math.isnan(value):
                assert written in ("", "nan"), column
            elif isinstance(value, float):
                assert float(written) == pytest.approx(value, rel=1e-12), column
            else:
                assert written == str(value), column
    assert dataclasses.asdict(from_dict(json.loads((out / rows[0]["trial_dir"] / schema.SETTINGS_FILE).read_text())))


def test_the_analysis_reads_registered_columns():
    """Every column the tables, the board and the figures read is a results column of the registry
    (or one the analysis derives: margin, qc, the FDR columns)."""
    from analysis import board, tables

    derived = {"margin", "qc", "p_bh", "certified_fdr"}
    read = set(tables.DIAGNOSTICS.values()) | set(tables.STATISTICAL.values()) | set(board.HPARAM_METRICS)
    assert read <= set(schema.RESULT_COLUMNS) | derived, read - set(schema.RESULT_COLUMNS) - derived


def test_a_rows_grid_point_reads_as_its_trial_id_does():
    """trial.json's `point` keeps the grid's key order (its overrides are written with sorted keys);
    a trial.json written before `point` existed gets the label of its overrides."""
    info = {"trial": "seed_0/full-lam=5,alpha_kl=2", "seed": 0, "variant": "full",
            "overrides": {"train.alpha_kl": 2, "train.lam": 5}}
    settings = {"model": {"witness": "head"}}
    assert schema.build_row(settings, {}, info | {"point": "lam=5,alpha_kl=2"}, "finished")["point"] == "lam=5,alpha_kl=2"
    assert schema.build_row(settings, {}, info, "finished")["point"] == "alpha_kl=2,lam=5"
