"""Gather a finished or running sweep directory into one `Sweep`: endpoint rows, trials, problems.

Aggregation as disentanglement_lib does it ("a glob into one pandas DataFrame"), over the run
directory that sweep/runner.py documents (the Ray engine writes the same files):

  DIR/config.yaml                      resolved config (the sweep's name)
  DIR/results.csv                      one row per finished trial
  DIR/seed_<s>/teacher/teacher.json    selected teacher with diagnostics, candidate table
  DIR/seed_<s>/<variant>/              config.json (settings), trial.json (variant, seed, lineage,
                                       teacher), metrics.jsonl, result.json, events.out.tfevents.*

A trial with metrics.jsonl but neither result.json nor a results.csv row is "running": it has curves
and TensorBoard runs but no endpoint row. A finished trial missing from results.csv gets its row
rebuilt from result.json, config.json and teacher.json. Sweep parameters are the config keys that
differ between trials of one variant (a Ray grid over train.lam, say); tables group by them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.readers import (Problem, normalise, read_config_yaml, read_json, read_jsonl, read_results, rel,
                              scan_events)
from sweep.schema import (ANALYSIS_DIR, CONFIG_FILE, METRICS_FILE, RESULT_FILE, RESULTS_FILE, SETTINGS_FILE,
                          TEACHER_DIR, TRIAL_FILE, build_row, cache_seed_dir, margin_name, seed_dir)
from sweep.variants import WARMUP, applies, variant_rank
from teachers.artifact import META_FILE
from teachers.certificate import bh_adjust

NOT_SETTINGS = ("seeds", "variants", "name", "sweep")
"""Keys of a resolved config that are the sweep's, not one trial's settings."""
FORK_SETTING = "fork"
"""The setting that tells forks by hand (sweep/grow.py) apart: trial.json's `fork`."""
NOT_APPLICABLE = "-"
"""A setting's value for a trial whose variant does not train with it (sweep.variants.applies:
lambda for noalign and the baselines), which one trial serves for every value of it."""
LEGACY_INFO = ("seed", "variant", "parent", "trial", "overrides", "teacher_dir", "placement", "row")
"""Trial facts that sweeps written before trial.json existed kept in config.json."""
TRIAL_FILES = (METRICS_FILE, SETTINGS_FILE, TRIAL_FILE, RESULT_FILE)
SKIP_DIRS = (ANALYSIS_DIR, TEACHER_DIR, WARMUP, "tune")  # tune/: Ray Tune's own checkpoints and state


@dataclass
class TrialRecord:
    """One trial directory as found on disk.

    Attributes:
        trial_id: Path relative to the sweep directory, e.g. "seed_0/full" (its TensorBoard run).
        path: The directory.
        seed: From trial.json or the directory name; None when neither says.
        variant: full / noalign / rescue / ... (trial.json, else the directory name).
        status: "finished" (result.json or a results.csv row) or "running".
        config: config.json, the trial's settings ({} when missing or malformed).
        info: trial.json: what the trial is and where it comes from ({} when missing).
        history: metrics.jsonl rows in file order.
        logged: (tag, step) pairs in the event files training wrote.
        result: result.json (None when absent or malformed).
    """

    trial_id: str
    path: Path
    seed: int | None
    variant: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    logged: set[tuple[str, int]] = field(default_factory=set)
    result: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """One part of config.json, e.g. 'teacher' ({} when absent or not a mapping)."""
        part = self.config.get(name)
        return part if isinstance(part, dict) else {}

    @property
    def margin(self) -> str:
        """The name of the margin it is judged by (`sweep.schema.margin_name`)."""
        return margin_name(str(self.section("teacher").get("target", "")))


@dataclass
class Sweep:
    """Everything the tables, the TensorBoard writer and the figures read.

    Attributes:
        root: The sweep directory.
        name: The sweep's name (config.yaml, else a trial's config.json, else the directory name).
        config: config.yaml ({} when missing).
        results: Endpoint rows of finished trials (`analysis.readers.normalise`), plus one column per
            sweep parameter.
        trials: Trial directories on disk, warm-ups excluded, in (seed, variant) order.
        settings: The sweep parameters: config keys that differ between trials of one variant.
        problems: Everything that was missing or malformed.
    """

    root: Path
    name: str
    config: dict[str, Any]
    results: pd.DataFrame
    trials: list[TrialRecord]
    settings: list[str]
    problems: list[Problem]


def is_sweep_dir(root: Path) -> bool:
    """Whether `root` is a sweep directory at all: a config, a results table or a trial in it."""
    if not root.is_dir():
        return False
    if (root / CONFIG_FILE).exists() or (root / RESULTS_FILE).exists():
        return True
    return any(root.glob("seed_*")) or any(root.glob(f"*/{METRICS_FILE}")) or any(root.glob(f"*/*/{METRICS_FILE}"))


def find_trial_dirs(root: Path) -> list[Path]:
    """Directories under `root` holding a trial file, warm-up, teacher and analysis folders excluded."""
    found = {p.parent for name in TRIAL_FILES for p in root.rglob(name)}
    return sorted(d for d in found if d != root and not set(d.relative_to(root).parts) & set(SKIP_DIRS))


def _seed_of(path: Path, info: dict[str, Any]) -> int | None:
    """Seed from trial.json, else from a 'seed_<s>' folder on the path."""
    if isinstance(info.get("seed"), int):
        return info["seed"]
    for part in reversed(path.parts):
        if match := re.fullmatch(r"seed_(-?\d+)", part):
            return int(match.group(1))
    return None


def read_info(root: Path, path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Problem]]:
    """(settings, trial facts, problems): trial.json beside config.json, or, in a sweep written
    before trial.json existed, the facts config.json carried beside the settings."""
    if (path / TRIAL_FILE).exists():
        info, problems = read_json(root, path / TRIAL_FILE)
        return config, info or {}, problems
    info = {k: config[k] for k in LEGACY_INFO if k in config}
    return {k: v for k, v in config.items() if k not in LEGACY_INFO}, info, []


def read_trial(root: Path, path: Path) -> tuple[TrialRecord, list[Problem]]:
    """One trial directory: config, facts, status, curves and event-file check."""
    problems: list[Problem] = []
    config: dict[str, Any] = {}
    if (path / SETTINGS_FILE).exists():
        config, problems = read_json(root, path / SETTINGS_FILE)
        config = config or {}
    config, info, more = read_info(root, path, config)
    problems += more
    result = None
    if (path / RESULT_FILE).exists():
        result, more = read_json(root, path / RESULT_FILE)
        problems += more
    status = "finished" if (path / RESULT_FILE).exists() else "running"
    if result and result.get("status") in ("stopped", "error"):  # the Ray engine's scheduler or a failure
        status = str(result["status"])
    history: list[dict[str, Any]] = []
    if (path / METRICS_FILE).exists():
        history, more = read_jsonl(root, path / METRICS_FILE)
        problems += more
    elif status == "finished":
        problems.append(Problem(rel(root, path / METRICS_FILE), "missing: the trial has no curve"))
    logged, more = scan_events(root, path, running=status == "running")
    variant = str(info.get("variant") or path.name)
    trial = TrialRecord(rel(root, path), path, _seed_of(path, info), variant, status, config, history,
                        logged, result, info)
    return trial, problems + more


def teacher_dir(root: Path, trial: TrialRecord) -> Path | None:
    """The teacher artifact folder a trial used: beside it, under seed_<s>/, or in the fixed-target cache."""
    teacher = trial.section("teacher")
    candidates = [trial.path.parent / TEACHER_DIR, root / seed_dir(trial.seed) / TEACHER_DIR]
    if isinstance(trial.info.get("teacher_dir"), str):  # the trial names its teacher folder
        candidates.insert(0, root / trial.info["teacher_dir"])
    if teacher.get("cache") and trial.seed is not None:
        source = teacher.get("cache_seed", -1)
        candidates.append(cache_seed_dir(teacher["cache"], source if isinstance(source, int) else -1, trial.seed)
                          / TEACHER_DIR)
    return next((c for c in candidates if (c / META_FILE).is_file()), None)


def read_teacher(root: Path, trial: TrialRecord) -> tuple[dict[str, Any] | None, list[Problem]]:
    """teacher.json of a trial's teacher; None (no problem) when there is no teacher folder."""
    folder = teacher_dir(root, trial)
    if folder is None:
        return None, []
    data, problems = read_json(root, folder / META_FILE)
    if data is not None and not isinstance(data.get("selected"), dict):
        return None, [Problem(rel(root, folder / "teacher.json"), "has no 'selected' candidate")]
    return data, problems


def rebuilt_row(root: Path, trial: TrialRecord) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The results.csv row of a finished trial (`sweep.schema.build_row`), from result.json,
    config.json, trial.json and, where trial.json lacks them, teacher.json's K and QC."""
    file = rel(root, trial.path / RESULT_FILE)
    teacher, problems = read_teacher(root, trial)
    if not trial.result or "G_tau" not in trial.result or teacher is None or trial.seed is None:
        return None, problems + [Problem(file, "finished but not in results.csv, and its row cannot be rebuilt "
                                               "(result.json, seed or teacher.json missing)")]
    selected = teacher["selected"]
    info = {"teacher_feasible": selected.get("feasible"), "teacher_k": selected.get("k")} | trial.info | {
        "trial": trial.trial_id, "seed": trial.seed, "variant": trial.variant}
    status = str(trial.result.get("status") or "finished")
    row = build_row(trial.config, trial.result, info, status, str(trial.result.get("reason") or ""))
    return row, problems + [Problem(file, "finished but not in results.csv; row rebuilt from result.json, "
                                          "config.json and teacher.json")]


def add_missing_rows(root: Path, results: pd.DataFrame,
                     trials: list[TrialRecord]) -> tuple[pd.DataFrame, list[Problem]]:
    """Mark trials with a results.csv row finished; rebuild rows of finished trials missing from it."""
    listed = set(results["trial_dir"].astype(str))
    rows, problems = [], []
    for trial in trials:
        if trial.trial_id in listed:
            trial.status = "finished" if trial.status == "running" else trial.status
        elif trial.status == "finished":
            row, more = rebuilt_row(root, trial)
            problems += more
            rows += [row] if row else []
    if not rows:
        return results, problems
    extra, more = normalise(pd.DataFrame(rows), "rebuilt rows")
    return pd.concat([results, extra], ignore_index=True), problems + more


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lam': 1}} -> {'train.lam': 1}; lists become JSON text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + str(key)] = json.dumps(value) if isinstance(value, list) else value
    return flat


def trial_settings(trial: TrialRecord) -> dict[str, Any]:
    """A trial's settings as dotted keys (its config.json, the sweep's own keys aside), and `fork`:
    the fork it is (trial.json, e.g. "noalign@471"; "" for the sweep's own trials), so that a fork
    by hand is never pooled with the sweep's own trials or with forks from elsewhere. A setting the
    trial's variant does not train with reads NOT_APPLICABLE ("-"): noalign's lambda, whose one
    trial serves every lambda of the grid."""
    settings = flatten({k: v for k, v in trial.config.items() if k not in NOT_SETTINGS})
    settings = {k: v if applies(trial.variant, k) else NOT_APPLICABLE for k, v in settings.items()}
    return settings | {FORK_SETTING: trial.info.get(FORK_SETTING) or ""}


def differing_settings(trials: list[TrialRecord]) -> list[str]:
    """Settings (`trial_settings`) that take more than one value among the trials of some variant."""
    values: dict[tuple[str, str], set[str]] = {}
    for trial in trials:
        for key, value in trial_settings(trial).items():
            values.setdefault((trial.variant, key), set()).add(json.dumps(value))
    return sorted({key for (_, key), seen in values.items() if len(seen) > 1})


def attach_settings(results: pd.DataFrame, trials: list[TrialRecord], settings: list[str]) -> pd.DataFrame:
    """One column per sweep parameter, from the config.json (and trial.json) of each row's trial."""
    by_dir = {t.trial_id: trial_settings(t) for t in trials}
    results = results.copy()
    for key in settings:
        results[key] = [by_dir.get(str(d), {}).get(key) for d in results["trial_dir"]]
    return results


def relative_trial_dirs(root: Path, results: pd.DataFrame) -> pd.DataFrame:
    """trial_dir as a path relative to the sweep directory (an engine may write absolute ones)."""
    def relative(value: object) -> str:
        path = Path(str(value))
        return rel(root.resolve(), path.resolve()) if path.is_absolute() else str(value)
    return results.assign(trial_dir=[relative(v) for v in results["trial_dir"]])


def sweep_name(root: Path, config: dict[str, Any], trials: list[TrialRecord]) -> str:
    """config.yaml's name, else the first trial's, else the directory name."""
    names = [config.get("name")] + [t.config.get("name") for t in trials]
    return next((str(n) for n in names if isinstance(n, str) and n), root.resolve().name)


def with_fdr(results: pd.DataFrame) -> pd.DataFrame:
    """Sweep-wide false-discovery control of the endpoint claims "certified" (G > 0): the
    Benjamini-Hochberg adjusted p-value `p_bh` of every row's `p_certified` over all rows that have
    one, and `certified_fdr` = p_bh <= alpha (the sweep's eval.alpha; NaN where a row has no p-value).
    BH controls the FDR for independent or positively dependent p-values; trials of one seed share
    its evaluation rows and teacher."""
    p = results["p_certified"].to_numpy(dtype=float)
    adjusted = bh_adjust(p) if len(p) else p
    alpha = float(results["alpha"].dropna().iloc[0]) if results["alpha"].notna().any() else math.nan
    fdr = pd.Series([bool(a <= alpha) if not math.isnan(a) else np.nan for a in adjusted], index=results.index,
                    dtype=object)
    return results.assign(p_bh=adjusted, certified_fdr=fdr)


def collect(root: str | Path) -> Sweep:
    """Read everything in a sweep directory; never raises on bad files (see `Sweep.problems`)."""
    root = Path(root)
    config, problems = read_config_yaml(root)
    results, more = read_results(root)
    results, problems = relative_trial_dirs(root, results), problems + more
    trials = []
    for path in find_trial_dirs(root):
        trial, more = read_trial(root, path)
        problems += more
        if trial.variant != "warmup":
            trials.append(trial)
    trials.sort(key=lambda t: (t.seed is None, t.seed or 0, variant_rank(t.variant), t.trial_id))
    results, more = add_missing_rows(root, results, trials)
    failed = results["status"].astype(str) == "error"
    more += [Problem(str(r["trial_dir"]), f"ended in error, left out of the tables: {r['reason']}")
             for _, r in results[failed].iterrows()]
    results = results[~failed].reset_index(drop=True)
    results = with_fdr(results)
    settings = differing_settings(trials)
    return Sweep(root, sweep_name(root, config, trials), config, attach_settings(results, trials, settings),
                 trials, settings, problems + more)
