"""TensorBoard for a sweep: HParams, teacher/ scalars and text, reconstruction grids, per trial run.

Training already wrote each trial's certificate/, loss/ and collapse/ scalars (sweep/trial_log.py) into
the trial directory, which TensorBoard shows as the run `seed_<s>/<variant>`. The analysis adds one
event file per run (suffix `.analysis`, replaced on every analysis) holding:
- HParams, cleanrl style (hyperparameters beside the scalars): one session per trial in the trial's
  own run, so its metrics are the last values of its own scalars (certificate/G_tau, ...); the
  experiment (hyperparameter domains and metric list) goes into the top-level run;
- teacher/ scalars: the selected candidate's diagnostics (docs/method.md, "Protocol" step 2), constant
  over the trial's report steps, and teacher/selected, teacher/candidates as Markdown text;
- reconstruction/eval: the first evaluation images over their reconstructions sigmoid(decoder(mu(x))),
  rebuilt from the trial's checkpoint (the data set must be on disk);
- any scalar that metrics.jsonl holds but no readable training event file does (a corrupt,
  truncated or missing file), so every run has its curves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torchvision.utils import make_grid

from analysis.collect import Sweep, TrialRecord, flatten, read_teacher, teacher_dir, trial_settings
from analysis.readers import ANALYSIS_SUFFIX, Problem, rel
from analysis.tables import fmt
from models.vae import build
from sweep.checkpoint import CheckpointError, load_checkpoint
from sweep.config import ConfigError, from_dict
from sweep.data import DataConfig, as_unit, load_data
from sweep.schema import CHECKPOINT_FILE, group_of, tag
from sweep.variants import method_name
from teachers.artifact import TARGETS_FILE

HPARAM_METRICS = ("G_tau", "G", "L_align", "I_T", "student_mi", "psnr", "active_units", "probe_acc")
"""The HParams tab's metrics: the last value of each one's scalar (tags from sweep.schema)."""
TEACHER_SCALARS = ("teacher_mi", "top1_margin", "high_margin_frac", "hard_balance_kl", "soft_usage_kl", "min_mass", "k")
CANDIDATE_COLUMNS = ("index", "k", "covariance_type", "pca_dim", "restart", "teacher_mi", "top1_margin",
                     "high_margin_frac", "hard_balance_kl", "soft_usage_kl", "min_mass", "feasible", "failed")
N_IMAGES = 16
MIN_IMAGE_SIDE = 28  # 8x8 digits are upscaled (nearest) so the grid is readable


def clear_previous(dirs: list[Path]) -> None:
    """Delete event files an earlier analysis wrote into these directories (never training's)."""
    for folder in dirs:
        for path in folder.glob(f"events.out.tfevents.*{ANALYSIS_SUFFIX}"):
            path.unlink(missing_ok=True)


def endpoint_row(sweep: Sweep, trial: TrialRecord) -> dict[str, Any]:
    """The trial's row of the endpoint frame ({} while it runs)."""
    rows = sweep.results[sweep.results["trial_dir"].astype(str) == trial.trial_id]
    return rows.iloc[-1].to_dict() if len(rows) else {}


def _known(*values: Any) -> Any:
    """The first value that is neither None, NaN nor ''."""
    return next((v for v in values if v is not None and v != "" and not (isinstance(v, float) and math.isnan(v))), None)


def trial_hparams(sweep: Sweep, trial: TrialRecord, teacher: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep parameters of one trial (None where unknown, e.g. no config.json)."""
    row, flat = endpoint_row(sweep, trial), flatten(trial.config)
    last = trial.history[-1] if trial.history else {}
    selected = (teacher or {}).get("selected", {})
    qc = {True: "feasible", False: "stress case"}.get(selected.get("feasible"))
    witness = _known(row.get("witness"), flat.get("model.witness"))
    hparams = {"seed": trial.seed, "variant": trial.variant,
               "method": _known(row.get("method"), method_name(trial.variant, str(witness))),
               "target": _known(row.get("target"), flat.get("teacher.target")), "witness": witness,
               "lam": _known(row.get("lam"), last.get("lam"), flat.get("train.lam")),
               "alpha_kl": _known(row.get("alpha_kl"), flat.get("train.alpha_kl")),
               "tau": _known(row.get("tau"), flat.get("eval.tau")),
               "teacher_k": _known(row.get("teacher_k"), selected.get("k")),
               "teacher_qc": _known(row.get("qc"), qc), "status": trial.status}
    settings = trial_settings(trial)
    return hparams | {key: settings.get(key) for key in sweep.settings}


def typed_hparams(per_trial: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """HParams values TensorBoard takes: a key whose known values are all numbers is a float, else
    text; unknown values are left out. Also returns each key's discrete domain (sorted values)."""
    keys = list(dict.fromkeys(k for hp in per_trial for k in hp))
    numeric = {k: all(isinstance(hp.get(k), (int, float, np.number)) and not isinstance(hp.get(k), bool)
                      for hp in per_trial if hp.get(k) is not None) for k in keys}
    typed = [{k: (float(v) if numeric[k] else str(v)) for k, v in hp.items() if v is not None} for hp in per_trial]
    domains = {k: sorted({hp[k] for hp in typed if k in hp}) for k in keys}
    return typed, {k: v for k, v in domains.items() if v}


def metric_tags(sweep: Sweep) -> list[str]:
    """The HParams metrics: final margins and diagnostics (G_fix first for a fixed-target sweep)."""
    names = dict.fromkeys(sorted({t.margin for t in sweep.trials} - set(HPARAM_METRICS)) + list(HPARAM_METRICS))
    return [tag(name) for name in names]


def _cell(value: Any) -> str:
    """A Markdown cell: numbers to 4 decimals, lists comma-separated."""
    return ", ".join(map(str, value)) if isinstance(value, list) else fmt(value)


def teacher_markdown(teacher: dict[str, Any]) -> tuple[str, str]:
    """The selected candidate (diagnostic | value) and the whole candidate table, as Markdown."""
    selected = teacher["selected"]
    chosen = "| diagnostic | value |\n|---|---|\n" + "\n".join(f"| {k} | {_cell(v)} |" for k, v in sorted(selected.items()))
    columns = ("selected", *CANDIDATE_COLUMNS)
    rows = [c | {"selected": "yes" if c.get("index") == selected.get("index") else ""}
            for c in teacher.get("candidates", []) if isinstance(c, dict)]
    table = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return chosen, table + "\n".join("| " + " | ".join(_cell(c.get(k)) for k in columns) + " |" for c in rows)


def write_teacher(writer: SummaryWriter, trial: TrialRecord, teacher: dict[str, Any]) -> None:
    """teacher/ scalars at every report step of the trial, and the teacher's Markdown text."""
    selected = teacher["selected"]
    steps = [int(r["step"]) for r in trial.history] or [0]
    values = {name: selected.get(name) for name in TEACHER_SCALARS}
    values |= {"feasible": float(bool(selected.get("feasible"))), "n_candidates": len(teacher.get("candidates", []))}
    for name, value in values.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            for step in steps:
                writer.add_scalar(f"teacher/{name}", float(value), step)
    chosen, table = teacher_markdown(teacher)
    writer.add_text("teacher/selected", chosen, steps[0])
    writer.add_text("teacher/candidates", table, steps[0])


def backfill_scalars(writer: SummaryWriter, trial: TrialRecord) -> int:
    """Write the metrics.jsonl scalars that no readable training event file holds; returns how many."""
    written = 0
    for row in trial.history:
        step = int(row["step"])
        for key, value in row.items():
            if group_of(key) and isinstance(value, (int, float)) and math.isfinite(value) \
                    and (tag(key), step) not in trial.logged:
                writer.add_scalar(tag(key), float(value), step)
                written += 1
    return written


def eval_images(cfg: DataConfig, cache: dict[str, Any]) -> tuple[torch.Tensor | None, list[Problem]]:
    """The first N_IMAGES evaluation images of a data config, loaded once per config.

    When the data set cannot be loaded, returns None and (the first time only) a problem line.
    """
    key = json.dumps(cfg.__dict__, sort_keys=True, default=str)
    if key in cache:
        return cache[key], []
    try:
        cache[key] = as_unit(load_data(cfg).x_eval[:N_IMAGES].clone())
        return cache[key], []
    except (OSError, ValueError) as err:  # DataNotFoundError is an OSError
        cache[key] = None
        return None, [Problem(f"data set {cfg.name}", "cannot be loaded, so there are no reconstruction images "
                                                      f"({str(err).splitlines()[0]})")]


def reconstruct(state: dict[str, Any], x: torch.Tensor, targets: np.ndarray | None) -> torch.Tensor:
    """Images (N, C, H, W) over their reconstructions sigmoid(decoder(mu(x))), as one grid (3, H', W')."""
    cfg = from_dict(state["config"])
    model = build(cfg.model, tuple(x.shape[1:]), int(state["n_components"]))
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(x)
        t = None if model.teacher_in is None else torch.as_tensor(targets[:len(x)], dtype=torch.float32)
        recon = torch.sigmoid(model.decode(mu, t))  # (N, C, H, W) in [0, 1]
    both = torch.cat([x, recon])  # inputs in the first grid row, reconstructions in the second
    scale = max(1, -(-MIN_IMAGE_SIDE // x.shape[-1]))
    both = both.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return make_grid(both, nrow=len(x), padding=2, pad_value=1.0)


def write_images(writer: SummaryWriter, sweep: Sweep, trial: TrialRecord, cache: dict[str, Any]) -> list[Problem]:
    """reconstruction/eval from the trial's checkpoint; a problem when that is impossible."""
    path = trial.path / CHECKPOINT_FILE
    if not path.exists():
        return [] if trial.status == "running" else [Problem(rel(sweep.root, path), "missing: no reconstruction images")]
    try:
        state = load_checkpoint(path)
        x, problems = eval_images(from_dict(state["config"]).data, cache)
    except (CheckpointError, ConfigError) as err:
        return [Problem(rel(sweep.root, path), f"cannot be used for reconstruction images ({str(err).splitlines()[0]})")]
    if x is None:
        return problems
    folder = teacher_dir(sweep.root, trial)
    try:
        targets = np.load(folder / TARGETS_FILE)["targets_eval"] if folder else None
        grid = reconstruct(state, x, targets)
    except Exception as err:  # noqa: BLE001  optional pictures: any failure is one problem line, never a traceback
        return [Problem(rel(sweep.root, path), f"model cannot be rebuilt for reconstruction images ({err})")]
    writer.add_image("reconstruction/eval", grid, int(state["step"]))
    return []


def write_trial(sweep: Sweep, trial: TrialRecord, hparams: dict[str, Any], teacher: dict[str, Any] | None,
                cache: dict[str, Any] | None) -> tuple[list[str], list[Problem]]:
    """The analysis event file of one trial run; returns notes and problems."""
    _, start, end = hparams_summaries(hparams, {})
    writer = SummaryWriter(str(trial.path), filename_suffix=ANALYSIS_SUFFIX)
    writer.file_writer.add_summary(start)
    if trial.status == "finished":
        writer.file_writer.add_summary(end)
    notes, problems = [], []
    if teacher is not None:
        write_teacher(writer, trial, teacher)
    if n := backfill_scalars(writer, trial):
        notes.append(f"{trial.trial_id}: {n} scalars rebuilt from metrics.jsonl (no readable training event file held them)")
    if cache is not None:
        problems += write_images(writer, sweep, trial, cache)
    writer.close()
    return notes, problems


def write_experiment(sweep: Sweep, typed: list[dict[str, Any]], domains: dict[str, list[Any]]) -> None:
    """The HParams experiment (every hyperparameter with its domain, the metric tags) at the top level."""
    example = {k: v[0] for k, v in domains.items()}
    experiment, _, _ = hparams_summaries(example, {t: 0.0 for t in metric_tags(sweep)}, domains)
    writer = SummaryWriter(str(sweep.root), filename_suffix=ANALYSIS_SUFFIX)
    writer.file_writer.add_summary(experiment)
    writer.close()


def write_tensorboard(sweep: Sweep, images: bool = True) -> tuple[list[str], list[Problem]]:
    """HParams, teacher scalars and text, reconstruction grids for every trial of the sweep.

    Args:
        sweep: The collected sweep.
        images: Whether to rebuild models from checkpoints for reconstruction grids.

    Returns:
        Notes (what was rebuilt) and problems (what could not be written).
    """
    try:
        clear_previous([sweep.root, *(t.path for t in sweep.trials)])
        teachers = [read_teacher(sweep.root, t) for t in sweep.trials]
        typed, domains = typed_hparams([trial_hparams(sweep, t, teacher) for t, (teacher, _) in zip(sweep.trials, teachers)])
        if sweep.trials:
            write_experiment(sweep, typed, domains)
        notes, problems, cache = [], [p for _, more in teachers for p in more], {} if images else None
        for trial, hp, (teacher, _) in zip(sweep.trials, typed, teachers):
            more_notes, more = write_trial(sweep, trial, hp, teacher, cache)
            notes, problems = notes + more_notes, problems + more
    except OSError as err:
        return [], [Problem(rel(sweep.root, sweep.root) or ".", f"cannot write TensorBoard files ({err})")]
    return notes, problems
