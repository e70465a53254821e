"""Generated bad inputs: the pre-run checks are complete.

Every field of every config dataclass (walked from RunConfig with dataclasses.fields and
typing.get_type_hints) and every path argument of the command line gets the values a new user might
write: the wrong type, out of range, NaN / inf, huge, empty, duplicated, not among the choices, and
values a library refuses although the type fits. Each case runs `python -m sweep run` in-process and
must end in exit status 2 with one `error:` message naming the field or path, no traceback, empty
stdout, and nothing on disk created or changed. `ray.init` and the training epoch raise, so a case that
slips past the checks fails as "reached Ray / training" instead of starting a sweep.

Wrong types, NaN, int64 overflow, empty lists and duplicates come from each field's type alone. The
rest comes from the field's role (ROLES: its documented domain, e.g. "count" = an int >= 1); a field
with neither a role nor an exemption (EXEMPT, with a reason) fails `test_every_field_is_covered`, so a
field added later needs its validation, or a reason why every value of its type is fine.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml

import sweep.protocol
from sweep.__main__ import main
from sweep.config import RunConfig, set_dotted, to_flat
from tests.conftest import tiny_raw

NAN, INF = float("nan"), float("inf")
INT64_OVER = 2**63
DIGITS_TRAIN_ROWS, DIGITS_EVAL_ROWS = 1437, 360  # sweep/data.py splits scikit-learn's 1797 digits so


def base_raw() -> dict:
    """The tiny valid digits config every case starts from (one variable changed per case)."""
    return tiny_raw()


# --- the fields and their roles --------------------------------------------------------------------


def walk(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type hint of every leaf field under dataclass `cls`."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= walk(hints[f.name], f"{prefix}{f.name}.")
        else:
            out[prefix + f.name] = hints[f.name]
    return out


def sections(cls: type, prefix: str = "") -> dict[str, type]:
    """Dotted prefix ('' for the top level) -> dataclass, for every (nested) config section."""
    out, hints = {prefix.rstrip("."): cls}, typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= sections(hints[f.name], f"{prefix}{f.name}.")
    return out


FIELDS = walk(RunConfig)
DEFAULTS = to_flat(RunConfig())


# A role is a field's documented domain; ROLE_VALUES holds values outside it (beside what the type
# gives every field). A field's role is what its docstring / the README promise, not what problems()
# happens to check: that is what the test holds the checks to.
ROLES: dict[str, str] = {key: role for role, keys in {
    "count": "train.epochs train.rescue_epochs train.batch_size train.report_every eval.probe_samples "
             "eval.batch_size model.latent_dim model.hidden model.channels teacher.restarts teacher.max_iter "
             "baselines.anneal_steps baselines.vq_codes",
    "count0": "data.n_train data.n_eval model.head_hidden teacher.fit_samples train.warmup_epochs "
              "train.student_first_steps train.prefit_steps eval.probe_every sweep.max_concurrent "
              "sweep.max_failures sweep.trials_per_segment sweep.keep_checkpoints scheduler.collapse_patience "
              "scheduler.plateau_patience",
    "seed": "data.subset_seed",
    "minus_one": "teacher.cache_seed",
    "threads": "train.threads",
    "n_components": "baselines.gmm_components",
    "positive": "train.lr model.simplex_beta baselines.beta_a baselines.beta_b baselines.vq_commitment "
                "sweep.cpus_per_trial sweep.console_every_s sweep.sync_every_s",
    "nonneg": "train.alpha_kl train.lam train.gamma eval.tau baselines.free_bits scheduler.plateau_delta "
              "teacher.min_teacher_mi teacher.max_hard_balance_kl teacher.max_soft_usage_kl",
    "unit": "teacher.high_margin_level teacher.min_top1_margin teacher.min_high_margin_frac teacher.min_mass_ratio",
    "open_unit": "baselines.vq_decay eval.alpha",
    "finite": "train.guard_value train.lam_max scheduler.collapse_threshold",
    "factor": "train.guard_factor",
    "gpus": "sweep.gpus_per_trial",
    "choice": "data.name model.arch model.witness model.recon teacher.target scheduler.evidence train.precision",
    "device": "train.device",
    "name": "name",
    "path": "data.root teacher.cache",
    "seeds": "seeds",
    "variants": "variants",
    "ks": "teacher.ks",
    "pca_dims": "teacher.pca_dims",
    "choices": "teacher.covariance_types",
    "variant_subset": "scheduler.collapse_variants scheduler.plateau_variants",
    "taus": "eval.taus",
    "grid": "sweep.grid",
}.items() for key in keys.split()}

ROLE_VALUES: dict[str, list[Any]] = {
    "count": [0, -1],                        # an int >= 1
    "count0": [-1],                          # an int >= 0 (0 = off / everything / the default)
    "seed": [-1, 2**32],                     # a seed: 0 <= s < 2**32
    "minus_one": [-2],                       # -1 (each seed its own) or >= 0
    "threads": [-1, 2**31],                  # torch.set_num_threads takes a C int
    "n_components": [-1, 1],                 # 0 (the teacher's K) or >= 2
    "positive": [0.0, -1.0, INF],
    "nonneg": [-0.5, INF],
    "unit": [-0.1, 1.5, INF],                # in [0, 1]
    "open_unit": [0.0, 1.0, -INF],           # in (0, 1)
    "finite": [INF, -INF],
    "factor": [0.5, INF],                    # >= 1
    "gpus": [-2.0, -0.5, 1.5, 2.0, INF],     # -1 (auto), or at most one GPU (a fraction packs trials)
    "device": ["", "gpu", "CPU", " cpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1.5"],
    "name": ["", "   "],
    "seeds": [[-1], [2**32]],
    "variants": [["bogus"], ["FULL"]],
    "ks": [[1], [0], [-3]],
    "pca_dims": [[-1]],
    "choices": [["bogus"], [""]],
    "variant_subset": [["bogus"]],
    "taus": [[-0.1], [NAN], [INF]],
    "grid": [{"no.such_key": [1]}, {"train.lam": []}, {"train.lam": 5.0}, {"train.lam": [1.0, 1.0]},
             {"seeds": [[1], [2]]}, {"train.lam": [-1.0]}, {"train.epochs": ["two"]}, {"data.name": ["bogus"]}],
}
EMPTY_OK = {"scheduler.collapse_variants", "scheduler.plateau_variants", "eval.taus", "sweep.grid"}
"""List fields whose empty list is a documented value (no collapse stop, no plateau stop, tau alone)."""
LIST_EXAMPLE = {"eval.taus": 0.1}
"""An item to duplicate where the base config's list is empty."""

EXEMPT: dict[str, str] = {
    "data.download": "a bool; both values are valid (only CIFAR downloads; other sets ignore it)",
    "data.verify": "a bool; both values are valid (only CIFAR has md5 sums to check)",
    "model.decoder_uses_teacher": "a bool; both values are valid model variants",
    "model.used_head": "a bool; both values are valid model variants",
    "train.guard": "a bool; the guarded schedule is on or off",
    "eval.probe": "a bool; the linear probe is on or off",
    "baselines.vq_ema": "a bool; EMA or loss-driven codebook, both valid",
    "scheduler.fork_rescue": "a bool; forking a rescue is on or off",
    "train.deterministic": "a bool; deterministic algorithms are on or off",
    "sweep.share_trials": "a bool; identical trials are shared or run per grid point, both valid",
}
"""Fields for which every value of the right type is valid: only wrong types are generated."""


def library_refused(raw: dict) -> list[tuple[str, dict[str, Any], str]]:
    """Values whose type and sign fit but that a library (or the protocol) refuses inside a trial, or
    that contradict another field; found by running them. (field named in the message, overrides, why)."""
    k, latent = max(raw["teacher"]["ks"]), raw["model"]["latent_dim"]
    machine_device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    return [
        ("teacher.pca_dims", {"teacher.pca_dims": [latent + 1]}, "sklearn PCA: more components than features"),
        ("teacher.ks", {"teacher.ks": [DIGITS_TRAIN_ROWS + 1]}, "GaussianMixture: more components than rows"),
        ("teacher.fit_samples", {"teacher.fit_samples": k - 1}, "GMMs fitted on fewer rows than K"),
        ("data.n_train", {"data.n_train": k - 1}, "fewer training rows than K"),
        ("data.n_train", {"data.n_train": DIGITS_TRAIN_ROWS + 1}, "a subset larger than the split"),
        ("data.n_eval", {"data.n_eval": DIGITS_EVAL_ROWS + 1}, "a subset larger than the split"),
        ("eval.probe_samples", {"eval.probe_samples": 1}, "LogisticRegression needs two classes"),
        ("data.n_train", {"data.n_train": k + 1}, "a probe on fewer rows than classes"),
        ("seeds", {"seeds": [3, 2**62]}, "torch: seed * 1009 overflows a 64-bit generator seed"),
        ("train.device", {"train.device": machine_device}, "torch: a device this machine lacks"),
        ("train.threads", {"train.threads": 100_000}, "100000 torch threads exhaust the process"),
        ("model.hidden", {"model.hidden": 10**6}, "torch cannot allocate a 4 TB layer"),
        ("model.latent_dim", {"model.latent_dim": 10**9}, "torch cannot allocate the encoder"),
        ("model.latent_dim", {"model.witness": "simplex", "model.latent_dim": k - 2},
         "the simplex witness needs latent_dim >= K - 1"),
        ("train.lam_max", {"train.lam_max": raw["train"]["lam"] - 1}, "lam_max below lam"),
        ("train.prefit_steps", {"variants": ["prefit"]}, "the prefit variant needs prefit_steps >= 1"),
        ("variants", {"variants": ["full", "rescue"]}, "rescue starts from noalign's endpoint"),
        ("teacher.cache_seed", {"teacher.cache_seed": 0}, "cache_seed without a cache"),
        ("teacher.cache", {"teacher.cache": "runs/x"}, "a cache without the fixed target"),
        ("data.root", {"data.root": "data/digits"}, "digits ships with scikit-learn and reads no folder"),
    ]


# --- generated cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: the overrides of the base config, and what the message must name."""

    id: str
    overrides: dict[str, Any]
    names: str
    kind: str  # "type" (wrong type) | "range" (from the type) | "role" (from ROLES) | "library"

    def raw(self) -> dict:
        raw = base_raw()
        for key, value in self.overrides.items():
            set_dotted(raw, key, copy.deepcopy(value))
        return raw


def wrong_types(hint: Any, example: Any) -> list[Any]:
    """Values of another type than `hint`: a string for a number, a list for a scalar, a mapping for
    a list, a bool for an int, a float for an int, None."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        scalars = wrong_types(item, example[0] if example else _example(item))
        return [example[0] if example else _example(item), {"a": example}, None] + [[v] for v in scalars[:3]]
    if origin is dict:
        return [[1], "train.lam", 5, None, {1: [1.0]}]
    by_type = {int: [str(example), 1.5, True], float: [str(example), True], str: [5, True, 1.5],
               bool: ["yes", 1, "true"]}
    return by_type[hint] + [[example], {"value": example}, None]


def _example(hint: Any) -> Any:
    return {int: 1, float: 0.5, str: "x", bool: True}[hint]


def role_values(key: str, base_value: Any) -> list[Any]:
    """Bad values from the field's role: outside its documented domain."""
    values = list(ROLE_VALUES.get(ROLES.get(key, ""), []))
    if ROLES.get(key) == "choice":
        values += ["", "bogus", str(base_value).upper()]
    return values


def type_values(key: str, hint: Any, base_value: Any) -> list[Any]:
    """Bad values of the right type that its type alone says are bad: NaN, beyond int64, an empty
    list (unless EMPTY_OK), a list with a duplicate."""
    values = []
    if hint is float:
        values.append(NAN)
    if hint is int:
        values.append(INT64_OVER)
    if typing.get_origin(hint) is list:
        if key not in EMPTY_OK:
            values.append([])
        items = base_value or [LIST_EXAMPLE.get(key, _example(typing.get_args(hint)[0]))]
        values.append([*items, items[0]])  # a duplicate
        if typing.get_args(hint)[0] is int:
            values.append([INT64_OVER])
    return values


def _lookup(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return DEFAULTS[key]
        node = node[part]
    return node


def config_cases() -> list[Case]:
    raw, cases = base_raw(), []
    for key, hint in FIELDS.items():
        current = _lookup(raw, key)
        for i, value in enumerate(wrong_types(hint, current)):
            cases.append(Case(f"{key}-type{i}-{value!r:.20}", {key: value}, key, "type"))
        if ROLES.get(key) == "path":
            continue  # its bad values are places on disk: test_bad_path
        for i, value in enumerate(type_values(key, hint, current)):
            cases.append(Case(f"{key}-range{i}-{value!r:.20}", {key: value}, key, "range"))
        for i, value in enumerate(role_values(key, current)):
            cases.append(Case(f"{key}-role{i}-{value!r:.20}", {key: value}, key, "role"))
    for i, (names, overrides, _why) in enumerate(library_refused(raw)):
        cases.append(Case(f"{names}-library{i}", overrides, names, "library"))
    return cases


CONFIG_CASES = config_cases()


# --- running the command line ------------------------------------------------------------------------


class ReachedRay(Exception):
    """A case got past every check: Ray would have started, or training would have run."""


def _reached(*_args: Any, **_kwargs: Any) -> None:
    raise ReachedRay("reached Ray/training: this bad input slipped past the pre-run checks")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` -> 'dir' or the sha256 of its bytes ('?' where unreadable)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            try:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                out[rel] = "?"
    return out


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable:
    """cli(argv, names) runs main(argv) in tmp_path and asserts the contract of a refused input."""
    monkeypatch.chdir(tmp_path)  # the default runs/<name>-<time> would land here, and be seen
    monkeypatch.setattr(ray, "init", _reached)
    monkeypatch.setattr(sweep.protocol, "train_epoch", _reached)

    def run(argv: list[str], names: str, watch: Path = tmp_path) -> str:
        before = snapshot(watch)
        capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's own refusals
            status = exit_.code
        except ReachedRay as err:
            pytest.fail(f"{err}: {argv}")
        captured = capsys.readouterr()
        err = captured.err
        assert status == 2, f"exit status {status}, stderr {err!r}"
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and re.match(r"(python -m sweep( \w+)?: )?error: ", lines[0]), err  # argparse: prog first
        assert names in err, f"the message does not name {names!r}: {err!r}"
        assert captured.out == "", captured.out
        assert snapshot(watch) == before, "the refused run created or changed files"
        return err

    return run


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


ENGINES = {"ray": [], "sequential": ["--sequential"]}
# Wrong types and ranges are refused by load_config, before the command picks an engine; what a
# library refuses is checked on the way into each engine (data, backbone, caches), so both run it.
CONFIG_RUNS = [(case, engine) for case in CONFIG_CASES
               for engine in (ENGINES if case.kind == "library" else ["ray"])]


@pytest.mark.parametrize(("case", "engine"), CONFIG_RUNS, ids=[f"{c.id}-{e}" for c, e in CONFIG_RUNS])
def test_bad_config_value(case: Case, engine: str, cli: Callable, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", case.raw())
    cli(["run", str(config), "--out", str(tmp_path / "out"), *ENGINES[engine]], case.names)


def test_every_field_is_covered() -> None:
    """Every field has bad values from its role or a library (so its range / choices are checked),
    or an exemption with a reason; every field gets wrong types; no role or exemption names a field
    that is gone. (NaN and int64 overflow alone do not count: _build refuses the latter for any int.)"""
    by_value = {key for c in CONFIG_CASES if c.kind in ("role", "library") for key in c.overrides}
    by_value |= {argument for argument, _place, _engine in PATH_CASES if argument in FIELDS}
    assert {key for key, role in ROLES.items() if role == "path"} <= by_value
    by_type = {key for c in CONFIG_CASES if c.kind == "type" for key in c.overrides}
    missing = sorted(set(FIELDS) - by_value - set(EXEMPT))
    assert not missing, f"fields with no generated bad value: give each a role (and a check) or an exemption: {missing}"
    assert not set(EXEMPT) & by_value, "an exempt field has value cases: drop the exemption"
    assert sorted(set(FIELDS) - by_type) == []
    assert not (set(ROLES) | set(EXEMPT)) - set(FIELDS), "a role or exemption names no field"
    assert all(EXEMPT.values())
    assert {c.names for c in CONFIG_CASES if c.kind == "library"} <= set(FIELDS)


# --- path arguments ----------------------------------------------------------------------------------
# Every path argument gets the same generated places; each argument names the places that are right for
# it, and every other place must be refused.


def _file(tmp: Path) -> str:
    (tmp / "a_file").write_text("precious\n")
    return str(tmp / "a_file")


def _folder(tmp: Path, *files: str) -> str:
    folder = tmp / ("folder_of_files" if files else "empty_folder")
    folder.mkdir()
    for name in files:
        (folder / name).write_text("precious\n")
    return str(folder)


def _dangling(tmp: Path) -> str:
    (tmp / "dangling").symlink_to(tmp / "gone")
    return str(tmp / "dangling")


def _unwritable(tmp: Path) -> str:
    """A place nothing can be created in (root writes wherever permissions say no: then /sys)."""
    if os.geteuid() == 0:
        return "/sys/certsweep-bad-input"
    locked = tmp / "locked"
    locked.mkdir(mode=0o555)
    return str(locked / "inside")


def _unreadable(tmp: Path) -> str:
    """A file that cannot be read (root reads every file whatever its mode: then a /proc file)."""
    if os.geteuid() == 0:
        return "/proc/self/clear_refs"
    path = Path(_file(tmp))
    path.chmod(0)
    return str(path)


PLACES: dict[str, Callable[[Path], str]] = {
    "missing": lambda tmp: str(tmp / "missing"),
    "a file": _file,
    "an empty folder": lambda tmp: _folder(tmp),
    "a folder of other files": lambda tmp: _folder(tmp, "notes.txt"),
    "under a file": lambda tmp: str(Path(_file(tmp)) / "below"),
    "a broken symlink": _dangling,
    "an unwritable place": _unwritable,
    "an unreadable file": _unreadable,
}
RIGHT_PLACES = {  # the places each argument accepts (a real data set / run / config is made elsewhere)
    "CONFIG": set(),
    "--out": {"missing", "an empty folder"},
    "resume DIR": set(),
    "data.root": set(),
    "teacher.cache": set(),
}


def _path_argv(argument: str, place: str, tmp: Path) -> list[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    where = PLACES[place](tmp)
    config = tmp / "config.yaml"
    raw = base_raw()
    if argument == "CONFIG":
        return ["run", where, "--out", str(tmp / "out")]
    if argument == "--out":
        return ["run", str(write_config(config, raw)), "--out", where]
    if argument == "resume DIR":
        return ["resume", where]
    if argument == "data.root":  # digits reads no folder: MNIST does
        raw["data"] = {"name": "mnist", "root": where, "n_train": 500, "n_eval": 100}
    else:
        raw["teacher"] |= {"target": "fixed", "cache": where}
    return ["run", str(write_config(config, raw)), "--out", str(tmp / "out")]


PATH_CASES = [(argument, place, engine) for argument, right in RIGHT_PLACES.items() for place in PLACES
              if place not in right for engine in ENGINES]


@pytest.mark.parametrize(("argument", "place", "engine"), PATH_CASES, ids=["-".join(c) for c in PATH_CASES])
def test_bad_path(argument: str, place: str, engine: str, cli: Callable, tmp_path: Path) -> None:
    argv = _path_argv(argument, place, tmp_path) + ENGINES[engine]
    named = argv[1] if argument in ("CONFIG", "resume DIR") else argv[3] if argument == "--out" else \
        yaml.safe_load(Path(argv[1]).read_text())["data" if argument == "data.root" else "teacher"][
            "root" if argument == "data.root" else "cache"]
    err = cli(argv, "")
    assert named in err or str(Path(named).resolve()) in err, f"the message names neither {named!r} nor its target: {err!r}"


def _dup_key_text(section: str, cls: type) -> tuple[str, str]:
    """The base config's YAML with the first field of `section` written twice, and that dotted key."""
    first = dataclasses.fields(cls)[0].name
    key = f"{section}.{first}" if section else first
    value = yaml.safe_dump(_lookup(base_raw(), key), default_flow_style=True).strip().removesuffix("...").strip()
    text = yaml.safe_dump(base_raw(), sort_keys=False)
    line = f"  {first}: {value}\n" if section else f"{first}: {value}\n"
    if not section:
        return text + line, key
    if f"\n{section}:\n" in text:
        return text.replace(f"\n{section}:\n", f"\n{section}:\n{line}{line}", 1), key
    return text + f"{section}:\n{line}{line}", key


CONTENTS: dict[str, tuple[str | bytes, str]] = {  # what a CONFIG file holds -> what the message names
    "empty": ("", "no settings"),
    "only comments": ("# to do\n", "no settings"),
    "null": ("null\n", "no settings"),
    "tilde": ("~\n", "no settings"),
    "an empty mapping": ("{}\n", "no settings"),
    "a list": ("- full\n- noalign\n", "mapping"),
    "a scalar": ("just some text\n", "mapping"),
    "a number": ("42\n", "mapping"),
    "invalid YAML": ("train: [1,\n", "not valid YAML"),
    "two documents": ("name: a\n---\nname: b\n", "not valid YAML"),
    "a tab indent": ("train:\n\tlam: 1\n", "not valid YAML"),
    "binary": (b"\xff\xfe\x00\x01", "not a text file"),
    **{f"{section or 'top level'} key twice": _dup_key_text(section, cls)
       for section, cls in sections(RunConfig).items()},
}


@pytest.mark.parametrize("content", CONTENTS)
def test_bad_config_file(content: str, cli: Callable, tmp_path: Path) -> None:
    text, names = CONTENTS[content]
    config = tmp_path / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = cli(["run", str(config), "--out", str(tmp_path / "out")], names)
    assert str(config) in err


SETS = {  # a --set argument -> what the message names
    "train.lam": "train.lam",                      # no '='
    "=1": "=1",                                    # no key
    "train.nope=1": "train.nope",                  # unknown key
    "train.lam=[1,": "train.lam",                  # the value is not YAML
    "train.lam.x=1": "train.lam.x",                # a key below a number
    "seeds.first=1": "seeds.first",                # a key below a list
    "train=5": "train",                            # a section replaced by a number
    "sweep.grid.train.lam=[1.0, 1.0]": "sweep.grid.train.lam",
    "sweep.grid=[1]": "sweep.grid",
}


@pytest.mark.parametrize("item", SETS)
def test_bad_set(item: str, cli: Callable, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_raw())
    cli(["run", str(config), "--set", item, "--out", str(tmp_path / "out")], SETS[item])


ARGV = {  # the command line itself (argparse answers these, status 2, one "error:" line after usage)
    "run without CONFIG": (["run"], "config"),
    "an unknown option": (["run", "{config}", "--outt", "x"], "--outt"),
    "--out without a value": (["run", "{config}", "--out"], "--out"),
    "an unknown command": (["walk", "{config}"], "walk"),
    "resume without DIR": (["resume"], "dir"),
}


@pytest.mark.parametrize("case", ARGV)
def test_bad_command_line(case: str, cli: Callable, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", base_raw())
    argv, names = ARGV[case]
    cli([a.replace("{config}", str(config)) for a in argv], names)


def test_a_sweep_folder_with_a_broken_config_is_refused_on_resume(cli: Callable, tmp_path: Path) -> None:
    from sweep.schema import CONFIG_FILE, PLAN_FILE  # what marks a sweep directory

    run = tmp_path / "run"
    run.mkdir()
    (run / PLAN_FILE).write_text("")
    (run / CONFIG_FILE).write_text("")
    cli(["resume", str(run)], str(run / CONFIG_FILE))


def test_the_valid_places_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above would pass if every place were refused: the right ones reach Ray."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray, "init", _reached)
    for place in sorted(RIGHT_PLACES["--out"]):
        argv = _path_argv("--out", place, tmp_path / place.replace(" ", "_"))
        with pytest.raises(ReachedRay):
            main(argv)
    with pytest.raises(ReachedRay):  # and the base config every case varies is itself valid
        main(["run", str(write_config(tmp_path / "base.yaml", base_raw())), "--out", str(tmp_path / "base")])
