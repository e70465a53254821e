"""Typed run configuration: YAML -> dataclasses, with every problem reported at once.

`RunConfig` joins the sections: data (sweep/data.py), model (models/vae.py), teacher
(teachers/search.py), baselines (models/baselines.py) and the sweep's own train / eval / sweep /
scheduler (sweep/sections.py, re-exported here).

Config flows one way: YAML (safe_load) -> `RunConfig` (unknown keys, wrong types and
out-of-range values are errors, all listed together) -> a flat dict of dotted keys (`to_flat`, what a
sweep grid varies) -> `from_flat` rebuilds the typed config inside a trial.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.baselines import BaselineConfig
from models.vae import ModelConfig
from sweep.data import MAX_SEED, SPLITS, DataConfig
from sweep.sections import DEVICE, EvalConfig, SchedulerConfig, SweepConfig, TrainConfig, has_duplicates
from sweep.variants import VARIANTS
from teachers.search import TeacherConfig


class ConfigError(ValueError):
    """A config with problems; the message lists every one of them."""


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
        if has_duplicates(self.variants):
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
    """Read a YAML config, apply dotted overrides and validate. A file that holds no settings is
    refused: it would run the whole default sweep. (Whether the devices it names exist is each
    engine's check: this machine's for --sequential, the cluster's for Ray, sweep/devices.py.)"""
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
    return from_dict(raw, str(path))


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
    """What this machine lacks for `cfg` run in one process (--sequential): a CUDA device that
    train.device (or a grid of it) names.

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
