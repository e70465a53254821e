"""Typed run configuration: YAML -> dataclasses, with every problem reported at once.

Config flows one way (STYLE.md): YAML (safe_load) -> `RunConfig` (unknown keys, wrong types and
out-of-range values are errors, all listed together) -> a flat dict of dotted keys (`to_flat`, what a
sweep grid varies) -> `from_flat` rebuilds the typed config inside a trial.
"""

from __future__ import annotations

import copy
import math
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.baselines import BaselineConfig
from models.vae import ModelConfig
from sweep.data import MAX_SEED, SPLITS, DataConfig
from sweep.variants import VARIANTS
from teachers.search import TeacherConfig


EVIDENCE = ("bound", "estimate")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The devices a trial may ask for (torch refuses cuda:x, cuda:-1, ... only once a trial starts)."""
MAX_THREADS = 1024
"""More torch threads than any machine has cores: torch would start them and run out of memory."""


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
        if _has_duplicates(self.taus):
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
        out += [f"sweep.grid.{k}: duplicate values in {v!r} (each grid point would run twice)"
                for k, v in self.grid.items() if isinstance(v, list) and _has_duplicates(v)]
        out += [f"sweep.{n}: must be > 0 and finite, got {getattr(self, n)}"
                for n in ("cpus_per_trial", "console_every_s", "sync_every_s") if not 0 < getattr(self, n) < math.inf]
        if not math.isfinite(self.gpus_per_trial):
            out.append(f"sweep.gpus_per_trial: must be finite, got {self.gpus_per_trial}")
        elif self.gpus_per_trial < 0 and self.gpus_per_trial != -1:
            out.append(f"sweep.gpus_per_trial: must be >= 0 or -1 (auto), got {self.gpus_per_trial}")
        elif self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            out.append(f"sweep.gpus_per_trial: above 1 it must be whole, got {self.gpus_per_trial}")
        out += [f"sweep.{n}: must be >= 0, got {getattr(self, n)}"
                for n in ("max_concurrent", "max_failures", "trials_per_segment") if getattr(self, n) < 0]
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
            if _has_duplicates(values):
                out.append(f"scheduler.{n}: duplicate values in {values}")
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
        if not self.name.strip():
            out.append(f"name: must not be empty (it names the run and its default folder), got {self.name!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            out.append(f"seeds: need at least one seed and no repeats, got {self.seeds}")
        out += [f"seeds: every seed must be in [0, 2**32), got {s}" for s in self.seeds if not 0 <= s < MAX_SEED]
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            out.append(f"variants: {bad or '[]'} not among {', '.join(VARIANTS)}")
        if _has_duplicates(self.variants):
            out.append(f"variants: duplicate values in {self.variants} (each would run twice)")
        if "prefit" in self.variants and self.train.prefit_steps < 1:
            out.append("train.prefit_steps: the prefit variant needs prefit_steps >= 1")
        if "rescue" in self.variants and "noalign" not in self.variants:
            out.append("variants: rescue starts from the noalign endpoint, so noalign must be listed too")
        if self.model.witness == "simplex" and self.teacher.ks and max(self.teacher.ks) - 1 > self.model.latent_dim:
            out.append(f"model.latent_dim: the simplex witness needs latent_dim >= K - 1 "
                       f"(largest K is {max(self.teacher.ks)}), got {self.model.latent_dim}")
        if not (self.data.problems() or self.model.problems() or self.teacher.problems() or self.eval.problems()):
            out += self._fit_problems()
        return out

    def _fit_problems(self) -> list[str]:
        """What scikit-learn would refuse inside a trial, from the data set's known split sizes
        (sweep.data.SPLITS): more GMM components than rows, more PCA dims than features, a linear
        probe on fewer rows than classes. Checked only once the parts themselves are valid."""
        out, rows, classes = [], self.data.train_rows(), SPLITS[self.data.name][1]
        where = "data.n_train" if self.data.n_train else f"all of the {self.data.name} training split"
        fit = min(self.teacher.fit_samples or rows, rows)
        searched = not (self.teacher.target == "fixed" and self.teacher.cache)  # a cache brings its teacher
        if searched and max(self.teacher.ks) > fit:
            limit = "teacher.fit_samples" if fit < rows else where
            out.append(f"teacher.ks: K = {max(self.teacher.ks)} exceeds the {fit} rows the GMMs are fitted on ({limit})")
        features = min(self.model.latent_dim, rows)
        if searched and max(self.teacher.pca_dims) > features:
            limit = "model.latent_dim" if features == self.model.latent_dim else where
            out.append(f"teacher.pca_dims: PCA dim {max(self.teacher.pca_dims)} exceeds the {features} "
                       f"dims of the warm-up features mu(x) ({limit})")
        probe_rows = min(self.eval.probe_samples, rows)
        if self.eval.probe and probe_rows < classes:
            out.append(f"eval.probe_samples: the linear probe would be fitted on {probe_rows} rows (eval.probe_samples "
                       f"{self.eval.probe_samples}, data.n_train {self.data.n_train}), fewer than the {classes} "
                       f"classes of {self.data.name}; give it at least {classes} rows or set eval.probe: false")
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
        elif (big := _beyond_int64(value)) is not None:
            problems.append(f"{path}: {big} does not fit in a 64-bit integer")
        else:
            kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


def _beyond_int64(value: Any) -> int | None:
    """The first int of a scalar or list value that no 64-bit integer holds (torch, numpy and
    scikit-learn refuse those, or float() overflows), else None."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
            return v
    return None


def _has_duplicates(values: list) -> bool:
    """Whether two items are equal (items may be unhashable, e.g. a grid of lists)."""
    return any(a == b for i, a in enumerate(values) for b in values[i + 1:])


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
    """Read a YAML config, apply dotted overrides, validate, and check that this machine has the
    device it names. A file that holds no settings is refused: it would run the whole default sweep."""
    path = Path(path)
    text = _read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: holds no settings (empty, only comments, or null); an empty config would "
                          "run the whole default sweep: write the settings to run (see configs/)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if duplicates := _duplicate_keys(node):
        raise ConfigError(f"{path}: " + "; ".join(duplicates))
    for item in overrides:
        set_dotted(raw, *parse_override(item))
    cfg = from_dict(raw, str(path))
    if problems := machine_problems(cfg):
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def _read_text(path: Path) -> str:
    """The config file's text; ConfigError naming the path when it is not a readable text file."""
    try:
        if path.is_dir():
            raise ConfigError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {err.start})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from err


def _duplicate_keys(node: yaml.Node | None, where: str = "") -> list[str]:
    """Keys given twice in one mapping (YAML keeps the last one silently), by dotted key."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, list[int]] = {}
        for key_node, value_node in node.value:
            key = f"{where}.{key_node.value}" if where else str(key_node.value)
            lines.setdefault(key, []).append(key_node.start_mark.line + 1)
            out += _duplicate_keys(value_node, key)
        out += [f"{key}: given {len(at)} times (lines {', '.join(map(str, at))}); keep one"
                for key, at in lines.items() if len(at) > 1]
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            out += _duplicate_keys(item, where)
    return out


def machine_problems(cfg: RunConfig) -> list[str]:
    """What this machine lacks for `cfg`: a CUDA device that train.device (or a grid of it) names.

    Not part of `problems()`: a config stays valid on a machine without that GPU (a trial or the
    analysis reads it back anywhere); only running it here needs the device.
    """
    import torch

    devices = [cfg.train.device, *cfg.sweep.grid.get("train.device", [])]
    n = torch.cuda.device_count() if any(str(d).startswith("cuda") for d in devices) and torch.cuda.is_available() else 0
    out = []
    for device in dict.fromkeys(d for d in devices if isinstance(d, str) and DEVICE.fullmatch(d)):
        if device.startswith("cuda") and int(device.partition(":")[2] or 0) >= n:
            have = "no CUDA device" if n == 0 else f"only cuda:0..cuda:{n - 1}"
            out.append(f"train.device: {device!r} but this machine has {have}; use auto (each trial takes "
                       "the GPU it is given, else the CPU) or cpu")
    return out


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
