"""The paper's protocol for one seed, as plain functions that import no Ray (docs/method.md, "Protocol").

  warm-up (L_rec + alpha_KL * KL)  ->  teacher search on warm-up features mu(x), or a cached target
  ->  full (lambda > 0) | noalign (lambda = 0) | rescue (from the noalign ENDPOINT, full objective,
      optional student-first phase) | prefit (alignment alone for prefit_steps, then full: the
      companion paper's RST-prefit) | a baseline of Table 3 (models/baselines.py: from scratch,
      lambda = 0, its own regulariser), all scored against the same teacher

Each stage is a `Trial`; `run_trial` trains it, evaluates at every report point, writes a checkpoint
(weights, optimizer and RNG state, resolved config, metrics, lineage) and hands (metrics, checkpoint)
to a reporter callback: the sequential runner logs to TensorBoard, the Ray trainable calls
tune.report. A trial restored from its checkpoint on CPU continues exactly as the uninterrupted run.

The fixed-target protocol (`teacher.target: fixed`) trains and evaluates against targets read back
from a teacher cache on disk (hash-checked) and reports G_fix; `teacher.cache` names an earlier run
directory whose seed_<s>/ holds the warm-up checkpoint (warmup/checkpoint.pt) and the teacher
artifact (teacher/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from models.baselines import latent_spec, make_objective
from models.objective import Objective
from models.vae import CertVAE, build
from sweep.checkpoint import LATEST, CheckpointError, keep, save_checkpoint
from sweep.config import RunConfig, reported_taus, to_dict
from sweep.data import ImageData, as_unit
from sweep.metrics import evaluate
from sweep.rules import guard_step
from sweep.schema import FIXED, margin_name
from sweep.variants import ALIGNED, BASELINES, STAGES, WARMUP, stage_seed
from teachers import certificate as cert
from teachers.artifact import TeacherArtifact

Reporter = Callable[[dict[str, Any], Path], None]
Ends = Callable[[str, list[dict[str, Any]], float], bool]
"""ends(stage, reports so far, lambda): whether the engine ends the trial at its latest report."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the stage, seed and step."""


@dataclass
class Trial:
    """One stage of one seed: the model, its optimizer and RNG, and where training stands."""

    cfg: RunConfig
    stage: str
    seed: int
    data: ImageData
    teacher: TeacherArtifact | None
    model: CertVAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    lam: float
    targets: torch.Tensor | None = None  # (N_train, K) float32 on the data's device
    epoch: int = 0
    step: int = 0
    start_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    parent: dict[str, Any] | None = None
    teacher_hash: str = ""  # hashed once: the targets are fixed, and every checkpoint records it

    @property
    def n_epochs(self) -> int:
        t = self.cfg.train
        if self.stage in BASELINES:  # trained from scratch: the warm-up's budget plus the variants'
            return t.warmup_epochs + t.epochs
        return {"warmup": t.warmup_epochs, "rescue": t.rescue_epochs}.get(self.stage, t.epochs)

    @property
    def vae_weight(self) -> float:
        """0 during a rescue's student-first phase or a prefit: alignment alone (Appendix H)."""
        t, done = self.cfg.train, self.step - self.start_step
        if (self.stage == "rescue" and done < t.student_first_steps) or (self.stage == "prefit" and done < t.prefit_steps):
            return 0.0
        return 1.0

    def objective(self) -> Objective:
        """The shared objective, or a baseline's hook on it."""
        cfg = self.cfg
        return make_objective(self.stage, cfg.model.recon, cfg.train.alpha_kl, cfg.train.gamma,
                              cfg.baselines, self.model)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.generator.get_state(), "rng_device": self.generator.device.type,
                "config": to_dict(self.cfg), "variant": self.stage,
                "seed": self.seed, "epoch": self.epoch, "step": self.step, "start_step": self.start_step,
                "lam": self.lam, "metrics": self.history,
                "n_components": self.teacher.k if self.teacher else 0,
                "teacher_hash": self.teacher_hash,
                "data_fingerprint": self.data.fingerprint(), "parent": self.parent}


def new_trial(cfg: RunConfig, stage: str, seed: int, data: ImageData, teacher: TeacherArtifact | None,
              init: dict[str, Any] | None = None, parent: dict[str, Any] | None = None) -> Trial:
    """A fresh stage: the model from `init` (the warm-up state; for a rescue or a fork the parent's
    checkpoint, whose step axis it continues).

    Baselines start from scratch (`init` ignored): their own objective shapes training from the
    first step; they are evaluated against the seed's teacher like every other variant.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    device = data.x_train.device
    torch.manual_seed(seed)  # model initialisation is part of the seed
    k = teacher.k if teacher else 0
    model = build(cfg.model, data.shape, k, latent_spec(stage, cfg.baselines, k)).to(device)
    model.backbone_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    step = 0
    if stage in BASELINES:
        init = None
    if init is not None:
        if init["variant"] == WARMUP:
            model.load_warmup(init["model"])
        else:  # a rescue or a fork: the parent's whole model, and its step axis continued
            model.load_state_dict(init["model"])
            step = int(init["step"])
    generator = torch.Generator(device=device)
    generator.manual_seed(stage_seed(seed, stage))
    lam = cfg.train.lam if stage in ALIGNED else 0.0  # noalign and the baselines: no alignment
    targets = None
    if teacher is not None:
        targets = torch.as_tensor(teacher.targets_train, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    return Trial(cfg, stage, seed, data, teacher, model, opt, generator, lam, targets,
                 step=step, start_step=step, parent=parent,
                 teacher_hash=teacher.content_hash() if teacher else "")


CPU_RNG_BYTES = 5056
"""The size of a CPU generator's state (a CUDA generator's is 16 bytes): what tells a checkpoint
written before `rng_device` was recorded."""


def rng_device(state: dict[str, Any]) -> str:
    """The device type of a checkpoint's generator state."""
    return state.get("rng_device") or ("cpu" if state["rng"].numel() == CPU_RNG_BYTES else "cuda")


def restore(trial: Trial, state: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Continue `trial` from its own checkpoint (same stage, seed, teacher and data), on this
    trial's device whatever device wrote it. A generator state of the other device type (a GPU
    checkpoint resumed on a CPU node, or the reverse) cannot be restored: the generator is reseeded
    from the trial's seed and step, with a line saying so (the batch order from there differs from
    the uninterrupted run's). Any checkpoint that does not fit the trial is a CheckpointError."""
    expected = {"variant": trial.stage, "seed": trial.seed, "teacher_hash": trial.teacher_hash,
                "data_fingerprint": trial.data.fingerprint(), "n_components": trial.model.n_components}
    for key in ("variant", "seed", "teacher_hash", "data_fingerprint", "n_components"):
        if state[key] != expected[key]:
            raise CheckpointError(f"checkpoint belongs to another trial: {key} is {state[key]!r}, "
                                  f"this trial has {expected[key]!r}")
    try:
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint does not fit this trial's model or optimizer: {err}") from err
    trial.epoch, trial.step, trial.lam = int(state["epoch"]), int(state["step"]), float(state["lam"])
    trial.start_step, trial.history = int(state["start_step"]), list(state["metrics"])
    trial.parent = state["parent"]
    here, saved = trial.generator.device.type, rng_device(state)
    if saved == here:
        try:
            trial.generator.set_state(state["rng"])
            return
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint's random state cannot be restored: {err}") from err
    trial.generator.manual_seed(resume_seed(trial.seed, trial.stage, trial.step))
    log(f"{trial.stage} seed {trial.seed}: its checkpoint's random state is a {saved} generator's and this trial "
        f"runs on {here}: reseeded from seed {trial.seed} and step {trial.step} (the batch order from here on "
        "differs from an uninterrupted run's)")


def resume_seed(seed: int, stage: str, step: int) -> int:
    """The generator seed of a trial continued at `step` on another device type: fixed by its seed,
    stage and step, so every such resume of it reseeds alike."""
    return (stage_seed(seed, stage) * 1_000_003 + step) % 2**63


def train_epoch(trial: Trial, objective: Objective) -> dict[str, float]:
    """One pass over the training tensor in a seeded random order; returns mean train terms."""
    cfg, x = trial.cfg.train, trial.data.x_train
    perm = torch.randperm(len(x), generator=trial.generator, device=x.device)
    sums = torch.zeros(5, dtype=torch.float64, device=x.device)
    n_batches = 0
    for i in range(0, len(x), cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        t = None if trial.targets is None else trial.targets[idx]
        terms = objective(trial.model, as_unit(x[idx]), t, trial.lam, trial.step, trial.generator, trial.vae_weight)
        trial.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        trial.optimizer.step()
        trial.step += 1
        n_batches += 1
        sums += torch.stack([terms.total, terms.recon, terms.kl, terms.align, terms.balance]).detach().double()
    means = (sums / n_batches).tolist()
    if not all(np.isfinite(means)):
        raise NonFiniteLossError(f"{trial.stage} seed {trial.seed}: training loss became "
                                 f"{means[0]} by step {trial.step} (epoch {trial.epoch + 1})")
    return dict(zip(("train_total", "train_recon", "train_kl", "train_align", "train_balance"), means))


def margins(metrics: dict[str, Any], cfg: RunConfig, taus: list[float]) -> dict[str, float]:
    """`margin` (`sweep.schema.margin_name` of the target: what the scheduler reads) and G - tau' for
    every extra tau' (docs/method.md: tau only shifts the reported number)."""
    if "G" not in metrics:
        return {}
    out = {"margin": metrics[margin_name(cfg.teacher.target)]}
    out.update({f"G_tau@{t:g}": cert.at_tau(metrics["G"], t) for t in taus if t != cfg.eval.tau})
    return out


def report_point(trial: Trial, train_means: dict[str, float], n_reports: int, endpoint: bool) -> dict[str, Any]:
    """The metrics of one report point; at an endpoint (the last epoch, or where the engine ends
    the trial) with the probe and the post-hoc certificate, whatever eval.probe_every says."""
    cfg = trial.cfg
    probe = endpoint or (cfg.eval.probe_every and n_reports % cfg.eval.probe_every == 0)
    metrics = evaluate(trial.model, trial.data, trial.teacher, cfg.eval, cfg.teacher.target == FIXED, bool(probe),
                       posthoc=endpoint, look=n_reports)
    metrics.update(train_means, epoch=trial.epoch, step=trial.step, lam=trial.lam)
    metrics.update(margins(metrics, cfg, reported_taus(cfg)))
    return metrics


def run_trial(trial: Trial, trial_dir: Path, reporter: Reporter | None = None,
              ends: Ends | None = None) -> dict[str, Any]:
    """Train the stage to its last epoch; evaluate, checkpoint and report at every report point
    (every sweep.keep_checkpoints-th checkpoint is kept for forks, warm-ups aside). `ends` says
    whether the engine ends the trial at a report (the Ray scheduler: `sweep.rules.ends_here`):
    that report gets the endpoint numbers too.
    After each report the guarded schedule (sweep/rules.py) may raise lambda for the epochs after
    it: the report records the lambda it trained with, the checkpoint the one that follows."""
    cfg = trial.cfg
    objective = trial.objective()
    trial.model.train()
    while trial.epoch < trial.n_epochs:
        train_means = train_epoch(trial, objective)
        trial.epoch += 1
        if trial.epoch % cfg.train.report_every and trial.epoch < trial.n_epochs:
            continue
        n_reports, last = len(trial.history) + 1, trial.epoch == trial.n_epochs
        metrics = report_point(trial, train_means, n_reports, endpoint=last)
        if not last and ends is not None and ends(trial.stage, [*trial.history, metrics], trial.lam):
            metrics = report_point(trial, train_means, n_reports, endpoint=True)  # the engine ends it here
        raised = guard_step(trial.stage, metrics.get("margin", np.nan), trial.lam, cfg.train)
        trial.lam = trial.lam if raised is None else raised
        trial.history.append(metrics)
        path = save_checkpoint(trial.state(), trial_dir / LATEST, keep_previous=True)
        every = cfg.sweep.keep_checkpoints
        if every and trial.stage != WARMUP and n_reports % every == 0:
            keep(trial_dir)
        if reporter is not None:
            reporter(metrics, path)
    return trial.history[-1] if trial.history else {}


