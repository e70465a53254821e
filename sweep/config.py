"""Typed run configuration: YAML -> dataclasses, with every problem reported at once.

Config flows one way (STYLE.md): YAML (safe_load) -> `RunConfig` (unknown keys, wrong types and
out-of-range values are errors, all listed together) -> a flat dict of dotted keys (`to_flat`, what a
sweep grid varies) -> `from_flat` rebuilds the typed config inside a trial.
"""

from __future__ import annotations

import copy
import math
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.baselines import BaselineConfig
from models.vae import ModelConfig
from sweep.data import DataConfig
from sweep.variants import VARIANTS
from teachers.search import TeacherConfig


EVIDENCE = ("bound", "estimate")


class ConfigError(ValueError):
    """A config with problems; the message lists every one of them."""


@dataclass
class TrainConfig:
    """Optimisation schedule and objective weights shared by every variant of a run."""

    warmup_epochs: int = 5
    """Warm-up epochs (L_rec + alpha_KL * KL only; no teacher exists yet)."""
    epochs: int = 10
    """Epochs of full and noalign after the warm-up."""
    rescue_epochs: int = 10
    """Epochs of a rescue, counted from the noalign endpoint."""
    batch_size: int = 256
    lr: float = 1e-3
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
    """auto (cuda when present), cpu, cuda or cuda:N."""
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
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            out.append(f"train.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
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
        out = [] if self.tau >= 0 else [f"eval.tau: must be >= 0, got {self.tau}"]
        if not 0 < self.alpha < 1:
            out.append(f"eval.alpha: must be in (0, 1), got {self.alpha}")
        out += [f"eval.taus: every tau must be >= 0, got {t}" for t in self.taus if t < 0]
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
    """GPUs per trial; -1 = 1 when the cluster has GPUs, else 0. Fractions pack trials (0.25: four per GPU)."""
    max_concurrent: int = 0
    """Most trials running at once; 0 = as many as the resources allow."""
    max_failures: int = 2
    """Retries of a crashed trial, each from its last checkpoint (Ray Tune FailureConfig)."""
    console_every_s: float = 15.0
    """Seconds between two prints of the live trial table."""
    trials_per_segment: int = 500
    """Trials per Ray Tune experiment: a longer sweep runs as consecutive experiments ("segments",
    DIR/tune/segment-NNN) so the driver's memory stays bounded (Tune keeps every trial of an
    experiment in memory). A segment ends when its last trial does, so a larger value idles less
    at the boundaries; 0 = the whole sweep in one experiment."""
    sync_every_s: float = 10.0
    """With a cloud-URI --out: seconds between two uploads of results.csv and scheduler.jsonl (each
    trial uploads its own files at every report)."""

    def problems(self) -> list[str]:
        out = [f"sweep.grid.{k}: needs a non-empty list of values, got {v!r}"
               for k, v in self.grid.items() if not isinstance(v, list) or not v]
        if self.cpus_per_trial <= 0:
            out.append(f"sweep.cpus_per_trial: must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0 and self.gpus_per_trial != -1:
            out.append(f"sweep.gpus_per_trial: must be >= 0 or -1 (auto), got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            out.append(f"sweep.gpus_per_trial: above 1 it must be whole, got {self.gpus_per_trial}")
        out += [f"sweep.{n}: must be >= 0, got {getattr(self, n)}"
                for n in ("max_concurrent", "max_failures", "trials_per_segment") if getattr(self, n) < 0]
        if not self.sync_every_s > 0:
            out.append(f"sweep.sync_every_s: must be > 0, got {self.sync_every_s}")
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
        if self.evidence not in EVIDENCE:
            out.append(f"scheduler.evidence: {self.evidence!r} is not one of {', '.join(EVIDENCE)}")
        out += [f"scheduler.{n}: {bad} not among {', '.join(VARIANTS)}"
                for n in ("collapse_variants", "plateau_variants")
                if (bad := [v for v in getattr(self, n) if v not in VARIANTS])]
        return out


@dataclass
class RunConfig:
    """One experiment: every seed x variant shares data, model, teacher search and schedule."""

    name: str = "run"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    variants: list[str] = field(default_factory=lambda: ["full", "noalign", "rescue"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def problems(self) -> list[str]:
        out: list[str] = []
        for part in (self.data, self.model, self.teacher, self.train, self.eval, self.baselines, self.sweep,
                     self.scheduler):
            out += part.problems()
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            out.append(f"seeds: need at least one seed and no repeats, got {self.seeds}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            out.append(f"variants: {bad or '[]'} not among {', '.join(VARIANTS)}")
        if "prefit" in self.variants and self.train.prefit_steps < 1:
            out.append("train.prefit_steps: the prefit variant needs prefit_steps >= 1")
        if "rescue" in self.variants and "noalign" not in self.variants:
            out.append("variants: rescue starts from the noalign endpoint, so noalign must be listed too")
        if self.model.witness == "simplex" and self.teacher.ks and max(self.teacher.ks) - 1 > self.model.latent_dim:
            out.append(f"model.latent_dim: the simplex witness needs latent_dim >= K - 1 "
                       f"(largest K is {max(self.teacher.ks)}), got {self.model.latent_dim}")
        return out


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (bool is never an int here)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is list:
        return isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from a mapping, appending every problem found."""
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            problems.append(f"{path}: unknown key (known: {', '.join(hints)})")
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, path, problems)
        elif not _type_ok(value, hints[key]):
            problems.append(f"{path}: expected {_type_name(hints[key])}, got {value!r}")
        else:
            kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(raw: dict, source: str = "config") -> RunConfig:
    """Typed, validated config; ConfigError listing every problem otherwise."""
    problems: list[str] = []
    cfg = _build(RunConfig, raw, "", problems)
    problems += cfg.problems()  # fields with bad types kept their defaults, so this is safe
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n{listing}")
    return cfg


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """raw['a']['b'] = value for key 'a.b', creating mappings on the way; the grid's own keys are
    dotted keys: 'sweep.grid.train.lam' sets raw['sweep']['grid']['train.lam']."""
    if key.startswith("sweep.grid."):
        grid = raw.setdefault("sweep", {}).setdefault("grid", {})
        if not isinstance(grid, dict):
            raise ConfigError(f"--set {key}: sweep.grid is not a mapping")
        grid[key[len("sweep.grid."):]] = value
        return
    *parents, last = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a mapping")
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lam=2.0' -> ('train.lam', 2.0); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from err


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply dotted overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    return from_dict(raw, str(path))


def reported_taus(cfg: RunConfig) -> list[float]:
    """Every tau a report carries (eval.tau, eval.taus and a grid's eval.tau values), sorted."""
    return sorted({cfg.eval.tau, *cfg.eval.taus, *cfg.sweep.grid.get("eval.tau", [])})


def to_dict(cfg: RunConfig) -> dict:
    """Nested plain dict (JSON / YAML safe)."""
    return dataclasses.asdict(cfg)


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """Flat dict of dotted keys, e.g. {'train.lam': 1.0, 'seeds': [0, 1, 2]}; a dict-valued field
    (sweep.grid) stays one value."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat[prefix + f.name] = copy.deepcopy(value)

    walk(cfg, "")
    return flat


def from_flat(flat: dict[str, Any]) -> RunConfig:
    """Inverse of `to_flat` (validated)."""
    raw: dict = {}
    for key, value in flat.items():
        set_dotted(raw, key, value)
    return from_dict(raw, "flat config")
