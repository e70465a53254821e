"""Sequential runner: every seed x variant of a config in one process, results.csv + TensorBoard.

Run directory layout (what analysis globs):
  DIR/config.yaml                          resolved config
  DIR/results.csv                          one row per trial endpoint, appended as trials finish
  DIR/seed_<s>/warmup/                     warm-up checkpoint.pt, metrics, events
  DIR/seed_<s>/teacher/                    teacher artifact (targets.npz, teacher.json)
  DIR/seed_<s>/<variant>/                  checkpoint.pt, config.json, metrics.jsonl,
                                           result.json, TensorBoard event file
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from models.baselines import BASELINES
from models.vae import build
from sweep.config import RunConfig, to_dict
from sweep.data import ImageData, load_data
from sweep.events import TrialLog
from sweep.protocol import (Trial, cached_stage, cached_warmup, new_trial, prepare_seed, resolve_device, run_trial,
                            uses_cache)
from sweep.checkpoint import load_checkpoint
from teachers.artifact import TeacherArtifact

RESULT_COLUMNS = (
    "dataset", "seed", "variant", "method", "witness", "target", "teacher_feasible", "teacher_k", "I_T", "L_align", "G",
    "G_tau", "G_fix", "student_mi", "balance", "kl", "recon", "psnr", "active_units", "mu_sq",
    "escape_force", "probe_acc", "posthoc_G_tau", "posthoc_student_mi", "posthoc_L_align", "qy_G_tau",
    "qy_student_mi", "lam", "alpha_kl", "tau", "epoch", "step", "trial_id", "trial_dir",
    "parent_trial", "parent_checkpoint", "teacher_hash", "status", "reason",
)
ORDER = ("full", "noalign", "rescue", "prefit", *BASELINES)  # rescue needs the noalign endpoint
Log = Callable[[str], None]


def prepare_out_dir(out: Path, cfg: RunConfig) -> None:
    """Create DIR and write config.yaml; never reuse a directory that already holds files."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} already exists and is not empty: "
                              "choose another --out (nothing there was touched)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def result_row(trial: Trial, metrics: dict[str, Any], trial_dir: Path, out: Path) -> dict[str, Any]:
    """The results.csv row of a finished trial."""
    teacher, parent = trial.teacher, trial.parent or {}
    return make_row(trial.cfg, metrics, seed=trial.seed, variant=trial.stage,
                    teacher_feasible=teacher.feasible, teacher_k=teacher.k,
                    trial_id=f"seed_{trial.seed}/{trial.stage}", trial_dir=str(trial_dir.relative_to(out)),
                    parent_trial=parent.get("trial", ""), parent_checkpoint=parent.get("checkpoint", ""),
                    teacher_hash=trial.teacher_hash, status="finished")


def make_row(cfg: RunConfig, metrics: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A results.csv row: `metrics` where they name a column, the config's columns, then `fields`
    (seed, variant, trial_id, trial_dir, lineage, teacher, status, ...)."""
    row = {k: metrics.get(k, math.nan) for k in RESULT_COLUMNS}
    row.update(dataset=cfg.data.name, witness=cfg.model.witness, target=cfg.teacher.target,
               alpha_kl=cfg.train.alpha_kl, tau=cfg.eval.tau, reason="")
    row.update(fields)
    row["method"] = method_name(row["variant"], cfg.model.witness)
    return row


def method_name(variant: str, witness: str) -> str:
    """The baseline, else certificate training (RST with the simplex witness)."""
    if variant in BASELINES:
        return variant
    return "rst" if witness == "simplex" else "certificate"


def append_row(csv_path: Path, row: dict[str, Any]) -> None:
    """Append one row, writing the header first when the file is new; synced to disk, so a killed
    process never loses a row it wrote."""
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def console_reporter(trial_id: str, n_epochs: int, log: Log, sink: TrialLog) -> Callable:
    """Reporter: logs the report point to TensorBoard / JSON and prints one line."""
    def report(metrics: dict[str, Any], checkpoint: Path) -> None:
        sink.report(metrics, checkpoint)
        cert = f" G_tau {metrics['G_tau']:+.4f} MI {metrics['student_mi']:.3f}" if "G_tau" in metrics else ""
        log(f"{trial_id:<16} epoch {metrics['epoch']:>3}/{n_epochs} step {metrics['step']:>6}"
            f"{cert} recon {metrics['recon']:.2f} psnr {metrics['psnr']:.2f} AU {metrics['active_units']}")
    return report


def train_logged(trial: Trial, trial_dir: Path, log: Log) -> dict[str, Any]:
    """run_trial with a TrialLog; returns the endpoint metrics."""
    trial_id = f"seed_{trial.seed}/{trial.stage}"
    sink = TrialLog(trial_dir, to_dict(trial.cfg) | {"variant": trial.stage, "seed": trial.seed,
                                                     "parent": trial.parent})
    metrics = run_trial(trial, trial_dir, console_reporter(trial_id, trial.n_epochs, log, sink))
    sink.close(metrics)
    return metrics


def warm_start(cfg: RunConfig, data: ImageData, seed: int, out: Path,
               log: Log) -> tuple[dict[str, Any], TeacherArtifact, str]:
    """Warm-up state and teacher of a seed: from the cache, or trained and searched here."""
    if uses_cache(cfg):
        warm_state, teacher = cached_stage(cfg, data.fingerprint(), seed)
        return warm_state, teacher, str(cached_warmup(cfg, seed))
    seed_dir = out / f"seed_{seed}"
    sink = TrialLog(seed_dir / "warmup", to_dict(cfg) | {"variant": "warmup", "seed": seed})
    reporter = console_reporter(f"seed_{seed}/warmup", cfg.train.warmup_epochs, log, sink)
    warm_state, teacher = prepare_seed(cfg, data, seed, seed_dir, reporter)
    sink.close({})
    return warm_state, teacher, f"seed_{seed}/warmup/checkpoint.pt"


def run_seed(cfg: RunConfig, data: ImageData, seed: int, out: Path, log: Log = print) -> list[dict[str, Any]]:
    """Warm-up, teacher, then every configured variant of one seed; rows appended to results.csv."""
    seed_dir = out / f"seed_{seed}"
    t0 = time.perf_counter()
    warm_state, teacher, warm_path = warm_start(cfg, data, seed, out, log)
    qc = "feasible" if teacher.feasible else "stress case"
    log(f"seed_{seed}: teacher K={teacher.k} I_T(eval)={teacher.I_T:.4f} {qc} "
        f"({len(teacher.candidates)} candidates, {time.perf_counter() - t0:.1f}s incl. warm-up)")
    rows = []
    for variant in [v for v in ORDER if v in cfg.variants]:
        init, parent = warm_state, {"trial": f"seed_{seed}/warmup", "checkpoint": warm_path}
        if variant in BASELINES:  # trained from scratch, against the same teacher
            init, parent = None, None
        elif variant == "rescue":
            rel = f"seed_{seed}/noalign/checkpoint.pt"
            init, parent = load_checkpoint(out / rel), {"trial": f"seed_{seed}/noalign", "checkpoint": rel}
        trial = new_trial(cfg, variant, seed, data, teacher, init, parent)
        trial_dir = seed_dir / variant
        metrics = train_logged(trial, trial_dir, log)
        row = result_row(trial, metrics, trial_dir, out)
        append_row(out / "results.csv", row)
        rows.append(row)
    return rows


def check_caches(cfg: RunConfig, data: ImageData) -> dict[int, tuple[dict[str, Any], TeacherArtifact]]:
    """Load and verify every cached warm-up / teacher before anything trains (fixed target)."""
    if not uses_cache(cfg):
        return {}
    return {seed: cached_stage(cfg, data.fingerprint(), seed) for seed in cfg.seeds}


def run_config(cfg: RunConfig, out: str | Path, log: Log = print) -> list[dict[str, Any]]:
    """Run every seed x variant of `cfg` into the new directory `out`."""
    out = Path(out)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = load_data(cfg.data).to(device)  # one tensor per split on the trial's device
    build(cfg.model, data.shape, max(cfg.teacher.ks))  # a backbone that cannot take these images fails here
    check_caches(cfg, data)
    prepare_out_dir(out, cfg)
    log(f"{cfg.name}: {data.name} train {tuple(data.x_train.shape)} eval {tuple(data.x_eval.shape)} "
        f"on {device}; seeds {cfg.seeds}; variants {cfg.variants}; out {out}")
    rows = []
    for seed in cfg.seeds:
        rows += run_seed(cfg, data, seed, out, log)
    return rows
