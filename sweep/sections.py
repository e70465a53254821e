"""The typed sections of a run config that belong to the sweep itself: the training schedule
(`train:`), what is measured (`eval:`), the Ray engine's layout (`sweep:`) and the scheduler's rules
(`scheduler:`). Each `problems()` lists every range, choice and consistency problem of its
section as a sentence naming the field; sweep/config.py assembles them into `RunConfig`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from models.vae import WARMUP_META
from sweep.variants import VARIANTS

EVIDENCE = ("bound", "estimate")
PRECISIONS = ("fp32", "bf16")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The devices a trial may ask for (torch refuses cuda:x, cuda:-1, ... only once a trial starts)."""
MAX_THREADS = 1024
"""More torch threads than any machine has cores: torch would start them and run out of memory."""



def has_duplicates(values: list) -> bool:
    """Whether two items are equal (items may be unhashable, e.g. a grid of lists)."""
    return any(a == b for i, a in enumerate(values) for b in values[i + 1:])



SHAPES_WARMUP = {WARMUP_META: True}
"""A train key the warm-up trains with (its epochs, batch size, learning rate)."""


@dataclass
class TrainConfig:
    """Optimisation schedule and objective weights shared by every variant of a run."""

    warmup_epochs: int = field(default=5, metadata=SHAPES_WARMUP)
    """Warm-up epochs (L_rec + alpha_KL * KL only; no teacher exists yet)."""
    epochs: int = 10
    """Epochs of full and noalign after the warm-up."""
    rescue_epochs: int = 10
    """Epochs of a rescue, counted from the noalign endpoint."""
    batch_size: int = field(default=256, metadata=SHAPES_WARMUP)
    lr: float = field(default=1e-3, metadata=SHAPES_WARMUP)
    """Adam learning rate (a fresh optimizer per stage)."""
    alpha_kl: float = 1.0
    """Weight of KL(q(z|x) || N(0, I))."""
    lam: float = 1.0
    """Alignment weight lambda of full and rescue (noalign uses 0)."""
    gamma: float = 0.1
    """Weight of the usage-balance term KL(sbar || uniform)."""
    report_every: int = 1
    """Epochs between report points (the last epoch always reports)."""
    student_first_steps: int = 0
    """Rescue only: optimizer steps of alignment alone before the full objective (0 = off)."""
    prefit_steps: int = 0
    """The prefit variant (companion paper's RST-prefit): steps of alignment alone from the warm-up
    checkpoint, then the full objective."""
    guard: bool = False
    """Full only: the guarded schedule, lambda *= guard_factor when G_tau < guard_value."""
    guard_value: float = 0.1
    guard_factor: float = 2.0
    lam_max: float = 100.0
    device: str = "auto"
    """auto (a GPU when the trial has one: under Ray the GPU Ray assigns it, in one process cuda when
    present; else the CPU), cpu, cuda or cuda:N (cuda:N only in one process: under Ray a trial sees
    its own GPU as cuda:0)."""
    deterministic: bool = False
    """PyTorch's deterministic algorithms, without TF32 matmuls and cudnn.benchmark (which are on
    for CUDA otherwise): bitwise reproducible runs on one GPU model, slower (README, "GPUs")."""
    precision: str = "fp32"
    """fp32, or bf16: the encoder and decoder run under bfloat16 autocast; the witness, the KL and
    every certificate number stay float32 / float64."""
    threads: int = 0
    """torch intra-op threads; 0 = torch's default."""

    def problems(self) -> list[str]:
        out = [f"train.{n}: must be >= 1, got {getattr(self, n)}"
               for n in ("batch_size", "report_every", "epochs", "rescue_epochs") if getattr(self, n) < 1]
        out += [f"train.{n}: must be >= 0, got {getattr(self, n)}"
                for n in ("warmup_epochs", "alpha_kl", "lam", "gamma", "student_first_steps", "prefit_steps", "threads")
                if getattr(self, n) < 0]
        if not self.lr > 0:
            out.append(f"train.lr: must be > 0, got {self.lr}")
        out += [f"train.{n}: must be finite, got {getattr(self, n)}"
                for n in ("lr", "alpha_kl", "lam", "gamma", "guard_value", "guard_factor", "lam_max")
                if not math.isfinite(getattr(self, n))]
        if self.guard_factor < 1:
            out.append(f"train.guard_factor: must be >= 1, got {self.guard_factor}")
        if self.lam_max < self.lam:
            out.append(f"train.lam_max: must be >= train.lam ({self.lam}), got {self.lam_max}")
        if self.precision not in PRECISIONS:
            out.append(f"train.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not DEVICE.fullmatch(self.device):
            out.append(f"train.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.threads > MAX_THREADS:
            out.append(f"train.threads: must be at most {MAX_THREADS}, got {self.threads}")
        return out


@dataclass
class EvalConfig:
    """What is measured at each report point, on the evaluation split."""

    tau: float = 0.05
    """Safety margin: G_tau = I_T - L - tau (only shifts the number; no retraining for another tau)."""
    probe: bool = True
    """Linear-probe accuracy of mu(x) where the data set has labels."""
    probe_every: int = 1
    """Fit the probe every this many report points; 0 = at the endpoint only (always there)."""
    probe_samples: int = 2000
    """Training rows the probe is fitted on (the first rows of the training split, for speed)."""
    batch_size: int = 1024
    taus: list[float] = field(default_factory=list)
    """More tau values to report beside `tau`, each as G - tau from the logged bare margin G (no
    retraining); empty = `tau` alone. The analysis' tau-sensitivity table uses them by default."""
    alpha: float = 0.05
    """Error rate of the statistical certificate (teachers/bounds.py): G_lower and G_upper are
    one-sided confidence bounds on the population bare margin at this level, valid over every
    report point of a trial; certified = G_lower > 0. The analysis controls the false-discovery rate
    across the sweep's endpoint claims at the same level."""

    def problems(self) -> list[str]:
        out = [] if 0 <= self.tau < math.inf else [f"eval.tau: must be >= 0 and finite, got {self.tau}"]
        if not 0 < self.alpha < 1:
            out.append(f"eval.alpha: must be in (0, 1), got {self.alpha}")
        out += [f"eval.taus: every tau must be >= 0 and finite, got {t}" for t in self.taus if not 0 <= t < math.inf]
        if has_duplicates(self.taus):
            out.append(f"eval.taus: duplicate values in {self.taus}")
        out += [f"eval.{n}: must be >= 1, got {getattr(self, n)}"
                for n in ("probe_samples", "batch_size") if getattr(self, n) < 1]
        if self.probe_every < 0:
            out.append(f"eval.probe_every: must be >= 0, got {self.probe_every}")
        return out


@dataclass
class SweepConfig:
    """How the Ray engine lays trials out: the grid and the resources of one trial."""

    grid: dict[str, list] = field(default_factory=dict)
    """Dotted config key -> values; every seed runs every combination (e.g. train.lam: [1, 5]).
    Values of eval.tau are not a training axis: they are reported from the bare margin (eval.taus)."""
    cpus_per_trial: float = 1.0
    """CPUs Ray reserves per trial; torch uses that many threads (at least 1) unless train.threads is set."""
    gpus_per_trial: float = -1.0
    """GPUs per trial, at most 1; -1 = 1 when the cluster has GPUs and train.device is not cpu, else 0.
    Fractions pack trials (0.25: four per GPU, each kept to a quarter of its memory)."""
    max_concurrent: int = 0
    """Most trials running at once; 0 = as many as the resources allow."""
    max_failures: int = 5
    """Retries of a crashed trial, each from its last checkpoint (Ray Tune FailureConfig). A lost node
    can cost a trial on it two failures (Tune counts each of the trial's calls that fail before Ray
    declares the node dead), so 5 rides out two losses of the node a trial runs on."""
    console_every_s: float = 15.0
    """Seconds between two prints of the live trial table."""
    trials_per_segment: int = 500
    """Trials per Ray Tune experiment: a longer sweep runs as consecutive experiments ("segments",
    DIR/tune/segment-NNN) so the driver's memory stays bounded (Tune keeps every trial of an
    experiment in memory). A segment ends when its last trial does, so a larger value idles less
    at the boundaries; 0 = the whole sweep in one experiment."""
    keep_checkpoints: int = 5
    """Keep the checkpoint of every this many report points of each trial (warm-ups aside) as
    <trial>/checkpoint-step<N>.pt, for `python -m sweep fork DIR TRIAL --step N`; 0 = keep only the
    last one (a collapsed noalign's pinned checkpoint is always kept). Each kept checkpoint costs
    the bytes of one checkpoint once the trial has written the next."""
    share_trials: bool = True
    """Grid points that ask a variant for the same training (the keys it ignores aside, e.g. lambda
    for noalign and the baselines: sweep.variants.USED_BY) share one trial, which runs once; each
    rescue still forks at its own lambda from the one collapsed noalign. False: one trial per grid
    point and variant (a sweep begun by a certsweep without this setting resumes that way)."""
    sync_every_s: float = 10.0
    """With a cloud-URI --out: seconds between two uploads of results.csv and scheduler.jsonl (each
    trial uploads its own files at every report)."""

    def problems(self) -> list[str]:
        out = [f"sweep.grid.{k}: needs a non-empty list of values, got {v!r}"
               for k, v in self.grid.items() if not isinstance(v, list) or not v]
        out += [f"sweep.grid.{k}: duplicate values in {v!r} (each grid point would run twice)"
                for k, v in self.grid.items() if isinstance(v, list) and has_duplicates(v)]
        out += [f"sweep.{n}: must be > 0 and finite, got {getattr(self, n)}"
                for n in ("cpus_per_trial", "console_every_s", "sync_every_s") if not 0 < getattr(self, n) < math.inf]
        if not math.isfinite(self.gpus_per_trial):
            out.append(f"sweep.gpus_per_trial: must be finite, got {self.gpus_per_trial}")
        elif self.gpus_per_trial < 0 and self.gpus_per_trial != -1:
            out.append(f"sweep.gpus_per_trial: must be >= 0 or -1 (auto), got {self.gpus_per_trial}")
        elif self.gpus_per_trial > 1:
            out.append(f"sweep.gpus_per_trial: at most 1 (a trial uses one GPU; fractions such as 0.25 pack trials "
                       f"onto one), got {self.gpus_per_trial:g}")
        out += [f"sweep.{n}: must be >= 0, got {getattr(self, n)}"
                for n in ("max_concurrent", "max_failures", "trials_per_segment", "keep_checkpoints")
                if getattr(self, n) < 0]
        return out


@dataclass
class SchedulerConfig:
    """The certificate scheduler's rules (sweep/rules.py); each counts report points."""

    evidence: str = "bound"
    """What the collapse and plateau rules read. bound: the statistical certificate (eval.alpha): a
    report counts as collapsed when G_upper <= collapse_threshold (the data say the bare margin is at
    most the threshold), and only a trial with G_lower > 0 counts as certified for the plateau stop.
    estimate: the point estimate G_tau (G_fix for a fixed target) against the same threshold."""
    collapse_threshold: float = 0.0
    """A report whose margin (G_upper, or G_tau / G_fix with evidence: estimate) is at or under this
    counts as collapsed."""
    collapse_patience: int = 3
    """Stop a trial after this many consecutive collapsed reports; 0 = never stop for collapse."""
    collapse_variants: list[str] = field(default_factory=lambda: ["noalign"])
    """Variants the collapse stop applies to (baselines keep running to their post-hoc endpoint)."""
    fork_rescue: bool = True
    """Start a rescue from the latest checkpoint of every noalign trial stopped as collapsed."""
    plateau_patience: int = 0
    """Stop a certified trial whose margin gained less than plateau_delta over this many reports; 0 = off."""
    plateau_delta: float = 0.01
    plateau_variants: list[str] = field(default_factory=lambda: ["full", "rescue", "prefit"])

    def problems(self) -> list[str]:
        out = [f"scheduler.{n}: must be >= 0, got {getattr(self, n)}"
               for n in ("collapse_patience", "plateau_patience", "plateau_delta") if getattr(self, n) < 0]
        out += [f"scheduler.{n}: must be finite, got {getattr(self, n)}"
                for n in ("collapse_threshold", "plateau_delta") if not math.isfinite(getattr(self, n))]
        if self.evidence not in EVIDENCE:
            out.append(f"scheduler.evidence: {self.evidence!r} is not one of {', '.join(EVIDENCE)}")
        for n in ("collapse_variants", "plateau_variants"):
            values = getattr(self, n)
            if bad := [v for v in values if v not in VARIANTS]:
                out.append(f"scheduler.{n}: {bad} not among {', '.join(VARIANTS)}")
            if has_duplicates(values):
                out.append(f"scheduler.{n}: duplicate values in {values}")
        return out
