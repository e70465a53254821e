"""Typed run configuration: YAML -> dataclasses, with every problem reported at once.

Config flows one way (STYLE.md): YAML (safe_load) -> `RunConfig` (unknown keys, wrong types and
out-of-range values are errors, all listed together) -> a flat dict of dotted keys (`to_flat`, what a
sweep grid varies) -> `from_flat` rebuilds the typed config inside a trial.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.baselines import BASELINES, BaselineConfig
from models.vae import ModelConfig
from sweep.data import DataConfig
from teachers.search import TeacherConfig

CERTIFICATE_VARIANTS = ("full", "noalign", "rescue", "prefit")
VARIANTS = CERTIFICATE_VARIANTS + BASELINES


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
        if self.lr <= 0:
            out.append(f"train.lr: must be > 0, got {self.lr}")
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

    def problems(self) -> list[str]:
        out = [] if self.tau >= 0 else [f"eval.tau: must be >= 0, got {self.tau}"]
        out += [f"eval.{n}: must be >= 1, got {getattr(self, n)}"
                for n in ("probe_samples", "batch_size") if getattr(self, n) < 1]
        if self.probe_every < 0:
            out.append(f"eval.probe_every: must be >= 0, got {self.probe_every}")
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

    def problems(self) -> list[str]:
        out: list[str] = []
        for part in (self.data, self.model, self.teacher, self.train, self.eval, self.baselines):
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
    """raw['a']['b'] = value for key 'a.b', creating mappings on the way."""
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


def to_dict(cfg: RunConfig) -> dict:
    """Nested plain dict (JSON / YAML safe)."""
    return dataclasses.asdict(cfg)


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """Flat dict of dotted keys, e.g. {'train.lam': 1.0, 'seeds': [0, 1, 2]}."""
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(to_dict(cfg), "")
    return flat


def from_flat(flat: dict[str, Any]) -> RunConfig:
    """Inverse of `to_flat` (validated)."""
    raw: dict = {}
    for key, value in flat.items():
        set_dotted(raw, key, value)
    return from_dict(raw, "flat config")
