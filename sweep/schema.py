"""The sweep directory's schema in one place: its file names, the metric registry and the
results.csv row (imports no torch or Ray). Both engines, the Ray trainable, the trial logs and the
analysis (readers, tables, TensorBoard board) derive from it; adding a metric is one `Field` here.

  DIR/config.yaml  plan.jsonl  results.csv  scheduler.jsonl  driver.lock  analysis/
  DIR/seed_<s>/teacher[-<point>]/              the teacher artifact (teachers/artifact.py)
  DIR/seed_<s>/<variant>[-<point>]/            config.json  trial.json  placement.json
                                               metrics.jsonl  result.json  events.out.tfevents.*
                                               checkpoint.pt (+ checkpoint-prev.pt, checkpoint-step<N>.pt)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from sweep.variants import method_name

# --- the sweep directory ---------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
"""The sweep's resolved config: what `resume`, `fork` and `extend` read."""
PLAN_FILE = "plan.jsonl"
"""The plan's events (sweep/plan.py): what a killed driver's successor replays."""
RESULTS_FILE = "results.csv"
"""One row per ended trial (`ROW`)."""
DECISIONS_FILE = "scheduler.jsonl"
"""The Ray scheduler's decisions, one JSON line each."""
LOCK_FILE = "driver.lock"
"""Held by the one driver of a sweep (sweep/lock.py)."""
ANALYSIS_DIR = "analysis"
"""What `python -m analysis` writes."""
TEACHER_DIR = "teacher"
"""seed_<s>/teacher: a seed's teacher artifact."""

# --- a trial's folder ------------------------------------------------------------------------------
SETTINGS_FILE = "config.json"
"""The trial's resolved config (its settings)."""
TRIAL_FILE = "trial.json"
"""What the trial is and where it comes from: id, variant, seed, grid point, parent, teacher."""
PLACEMENT_FILE = "placement.json"
"""Where it ran: node, device, GPU ids and share, threads, peak GPU memory."""
METRICS_FILE = "metrics.jsonl"
"""Every report point, one JSON line each."""
RESULT_FILE = "result.json"
"""Its end: last report, status and reason."""
CHECKPOINT_FILE = "checkpoint.pt"
"""Its latest checkpoint (sweep/checkpoint.py); the one before it is PREVIOUS_CHECKPOINT."""
PREVIOUS_CHECKPOINT = "checkpoint-prev.pt"


def seed_dir(seed: int) -> str:
    """A seed's folder: 'seed_3'."""
    return f"seed_{seed}"


def cache_seed_dir(cache: str | Path, cache_seed: int, seed: int) -> Path:
    """The folder of a teacher cache (`teacher.cache`) that training seed `seed` reads: its own seed's,
    or `teacher.cache_seed`'s when that is set (>= 0)."""
    return Path(cache) / seed_dir(cache_seed if cache_seed >= 0 else seed)


# --- the metric registry ---------------------------------------------------------------------------
CERTIFICATE, LOSS, COLLAPSE = "certificate", "loss", "collapse"
"""TensorBoard namespaces, as cleanrl groups tags: the theorem quantities of the raw witness;
objective terms, reconstruction, lambda; collapse symptoms."""
METRIC, SETTING, TRIAL, END, DERIVED = "metric", "setting", "trial", "end", "derived"
"""Where a results.csv cell comes from: the trial's last report; its resolved config; its
trial.json; how it ended; computed from the others."""


@dataclass(frozen=True)
class Field:
    """One number or label of a trial: a report metric, a results.csv column, or both."""

    name: str
    source: str = METRIC
    """METRIC, SETTING, TRIAL, END or DERIVED."""
    group: str = ""
    """Its TensorBoard namespace (tag `<group>/<name>`); "" when it is no TensorBoard scalar."""
    column: bool = True
    """Whether results.csv has it."""
    text: bool = False
    """A label (kept as text by the readers), else a number."""
    tune: bool = False
    """Sent to Tune with each report: what the scheduler and the live table read."""
    path: str = ""
    """For a SETTING: its dotted config key; for a TRIAL fact: its trial.json key (dots go into
    nested objects), when it differs from `name`."""
    fmt: str = "+.4f"
    """How the end-of-run table prints it."""

    @property
    def tag(self) -> str:
        """Its TensorBoard tag, e.g. 'certificate/G_tau'."""
        return f"{self.group}/{self.name}"


FIELDS = (
    Field("dataset", SETTING, text=True, path="data.name"),
    Field("seed", TRIAL),
    Field("variant", TRIAL, text=True),
    Field("method", DERIVED, text=True),
    Field("witness", SETTING, text=True, path="model.witness"),
    Field("target", SETTING, text=True, path="teacher.target"),
    Field("teacher_feasible", TRIAL, text=True),
    Field("teacher_k", TRIAL),
    Field("I_T", group=CERTIFICATE),
    Field("L_align", group=CERTIFICATE),
    Field("G", group=CERTIFICATE),
    Field("G_tau", group=CERTIFICATE, tune=True),
    Field("G_fix", group=CERTIFICATE, tune=True),
    Field("G_lower", group=CERTIFICATE, tune=True),
    Field("G_upper", group=CERTIFICATE, tune=True),
    Field("G_fix_lower", group=CERTIFICATE),
    Field("G_fix_upper", group=CERTIFICATE),
    Field("certified", text=True, tune=True),
    Field("p_certified", fmt=".3g"),
    Field("alpha", SETTING, path="eval.alpha", fmt="g"),
    Field("student_mi", group=CERTIFICATE),
    Field("balance", group=CERTIFICATE),
    Field("kl", group=LOSS),
    Field("recon", group=LOSS),
    Field("psnr", group=LOSS),
    Field("active_units", group=COLLAPSE, fmt="g"),
    Field("mu_sq", group=COLLAPSE),
    Field("escape_force", group=COLLAPSE),
    Field("probe_acc", group=COLLAPSE),
    Field("posthoc_G_tau", group=CERTIFICATE),
    Field("posthoc_student_mi", group=CERTIFICATE),
    Field("posthoc_L_align", group=CERTIFICATE),
    Field("qy_G_tau", group=CERTIFICATE),
    Field("qy_student_mi", group=CERTIFICATE),
    Field("lam", group=LOSS, tune=True, fmt="g"),
    Field("alpha_kl", SETTING, path="train.alpha_kl", fmt="g"),
    Field("tau", SETTING, path="eval.tau", fmt="g"),
    Field("epoch", tune=True, fmt="d"),
    Field("step", tune=True, fmt="d"),
    Field("trial_id", TRIAL, text=True, path="trial"),
    Field("trial_dir", TRIAL, text=True, path="trial"),
    Field("point", TRIAL, text=True),
    Field("parent_trial", TRIAL, text=True, path="parent.trial"),
    Field("parent_checkpoint", TRIAL, text=True, path="parent.checkpoint"),
    Field("parent_step", TRIAL, path="parent.step"),
    Field("fork", TRIAL, text=True),
    Field("teacher_hash", TRIAL, text=True),
    Field("status", END, text=True),
    Field("reason", END, text=True),
    # report metrics that are no column: the scheduler's margin and the training means
    Field("margin", column=False, tune=True),
    *(Field(f"train_{term}", group=LOSS, column=False) for term in ("total", "recon", "kl", "align", "balance")),
)
BY_NAME = {f.name: f for f in FIELDS}
RESULT_COLUMNS = tuple(f.name for f in FIELDS if f.column)
TEXT_COLUMNS = tuple(f.name for f in FIELDS if f.column and f.text)
NUMERIC_COLUMNS = tuple(f.name for f in FIELDS if f.column and not f.text)
TUNE_KEYS = tuple(f.name for f in FIELDS if f.tune)
STATUSES = ("finished", "stopped", "error")
TAU_PREFIX = "G_tau@"
"""G_tau at each extra tau of eval.taus, e.g. 'G_tau@0.1': certificate scalars outside the registry."""


def group_of(metric: str) -> str:
    """A report metric's TensorBoard namespace; "" for one that is no TensorBoard scalar."""
    if metric.startswith(TAU_PREFIX):
        return CERTIFICATE
    field = BY_NAME.get(metric)
    return field.group if field and field.source == METRIC else ""


def tag(metric: str) -> str:
    """A metric's TensorBoard tag, e.g. 'G_tau' -> 'certificate/G_tau'."""
    return f"{group_of(metric)}/{metric}"


# --- which margin applies ----------------------------------------------------------------------------
FIXED = "fixed"
"""teacher.target of the fixed-target protocol."""


def margin_name(target: str) -> str:
    """The margin a trial is judged by: G_fix against a fixed target (the cached targets Ttilde),
    else G_tau (docs/method.md, "Certificate"). The scheduler, the tables and the figures read it."""
    return "G_fix" if target == FIXED else "G_tau"


def margin_label(targets: Iterable[str]) -> str:
    """The name of the margin of rows with these targets: one name, or both ('G_tau / G_fix') when
    they mix targets; G_tau for no rows."""
    names = sorted({margin_name(t) for t in targets}, key=lambda n: n != margin_name(""))
    return " / ".join(names) or margin_name("")


# --- the results row -------------------------------------------------------------------------------
def lookup(data: Mapping[str, Any], path: str) -> Any:
    """data['a']['b'] for path 'a.b'; None where a level is missing or no mapping."""
    for key in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def point_label(overrides: Mapping[str, Any]) -> str:
    """'lam=5,alpha_kl=2' for {'train.lam': 5, 'train.alpha_kl': 2}: a grid point's label, in trial
    ids and the `point` column; full keys where names clash."""
    names = [k.rsplit(".", 1)[-1] for k in overrides]
    return ",".join(f"{n if names.count(n) == 1 else k}={v}" for n, (k, v) in zip(names, overrides.items()))


def point_parts(label: str) -> dict[str, str]:
    """{'lam': '2', 'alpha_kl': '1.0'} of a point label 'lam=2,alpha_kl=1.0' (`point_label`'s
    inverse, values as text; a value may hold commas)."""
    return dict(part.split("=", 1) for part in re.split(r",(?=[\w.]+=)", label) if "=" in part)


def build_row(settings: Mapping[str, Any], metrics: Mapping[str, Any], info: Mapping[str, Any], status: str,
              reason: str = "") -> dict[str, Any]:
    """The results.csv row of one ended trial.

    Args:
        settings: Its resolved config as nested mappings (config.json, or `dataclasses.asdict`).
        metrics: Its last report ({} when it never reported); None values count as missing.
        info: Its trial.json (`sweep.stage.trial_info`).
        status: finished, stopped or error.
        reason: Why it stopped or failed ("" when it finished).
    """
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    row: dict[str, Any] = {}
    for f in FIELDS:
        if not f.column:
            continue
        if f.source == METRIC:
            value = metrics.get(f.name)
            row[f.name] = math.nan if value is None else value
        elif f.source == SETTING:
            row[f.name] = lookup(settings, f.path)
        elif f.source == TRIAL:
            value = lookup(info, f.path or f.name)
            row[f.name] = "" if value is None else value
    point = row["point"] or point_label(info.get("overrides") or {})  # a trial.json written before `point`
    row.update(method=method_name(row["variant"], row["witness"] or ""), point=point,
               teacher_k=row["teacher_k"] or 0, teacher_feasible=bool(row["teacher_feasible"]), status=status,
               reason=reason)
    return row
