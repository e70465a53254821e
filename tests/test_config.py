"""Tests of sweep.config: every shipped YAML loads and round-trips, problems are listed together,
--set overrides, file errors, and the command line's answer to a bad config."""

from __future__ import annotations

import math

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from models.vae import build
from sweep.__main__ import main
from sweep.config import ConfigError, from_flat, load_config, to_flat
from sweep.data import DATASETS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER_CONFIGS = {"cifar100_teacher_search", "tiny_imagenet_fixed_target", "cifar10_sanity",
                 "cifar100_fixed_teacher_control", "simplex_mnist", "smoke_digits"}
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "tiny_imagenet": (3, 64, 64)}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _fields(err: ConfigError) -> Counter:
    """The field named by each listed problem ("  - train.lr: must be ..." -> "train.lr")."""
    return Counter(line[4:].split(":")[0] for line in str(err).splitlines() if line.startswith("  - "))


def _count(err: ConfigError) -> int:
    """N of the message's count line "<source> has N problem(s):"."""
    found = re.search(r"has (\d+) problem\(s\):", str(err))
    assert found, f"no count line in {err}"
    return int(found.group(1))


# --- the shipped configs --------------------------------------------------------------------------


def test_configs_folder_holds_the_paper_configs() -> None:
    assert PAPER_CONFIGS <= {p.stem for p in CONFIGS}
    assert set(IMAGE_SHAPES) == set(DATASETS)  # a new data set needs its shape here


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_round_trips(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem  # run directories are named after the config
    flat = to_flat(cfg)
    assert all(not isinstance(v, dict) for k, v in flat.items() if k != "sweep.grid")  # the grid is one value
    assert from_flat(flat) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_model_fits_its_data(path: Path) -> None:
    """The backbone suits the image size and PCA dims fit the latent: failures that the config
    validation cannot see and that would otherwise surface only after the warm-up."""
    cfg = load_config(path)
    shape, k = IMAGE_SHAPES[cfg.data.name], max(cfg.teacher.ks)
    assert max(cfg.teacher.pca_dims) <= cfg.model.latent_dim
    model = build(cfg.model, shape, k)
    x = torch.rand(2, *shape)
    t = torch.full((2, k), 1.0 / k) if cfg.model.decoder_uses_teacher else None
    with torch.no_grad():
        out = model(x, t)
        assert out.x_logits.shape == x.shape
        assert model.witness_logits(out.mu).shape == (2, k)


def test_from_flat_validates() -> None:
    flat = to_flat(load_config(CONFIG_DIR / "smoke_digits.yaml"))
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        from_flat({**flat, "train.nope": 1})


# --- every problem at once ------------------------------------------------------------------------

STRUCTURE = """
name: bad
bogus_top: 1
seeds: ["0", "1"]
model:
  bogus_nested: 2
train:
  batch_size: "256"
  epochs: true
"""

RANGES = """
name: bad
variants: [full, rescue, bogus]
model:
  witness: simplex
  latent_dim: 4
train:
  lr: -0.1
teacher:
  ks: [1, 10]
"""

MIXED = """
name: bad
bogus_top: 1
variants: [full, rescue, bogus]
model:
  bogus_nested: 2
  witness: simplex
  latent_dim: 4
train:
  batch_size: "256"
  epochs: true
  lr: -0.1
teacher:
  ks: [1, 10]
  pca_dims: ["0", "32"]
"""


def test_structure_problems_listed_together(tmp_path: Path) -> None:
    path = _write(tmp_path / "structure.yaml", STRUCTURE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} has 5 problem(s):") and _count(info.value) == 5
    assert _fields(info.value) == Counter(["bogus_top", "seeds", "model.bogus_nested", "train.batch_size",
                                           "train.epochs"])
    assert "expected int, got '256'" in str(info.value) and "expected int, got True" in str(info.value)


def test_range_problems_listed_together(tmp_path: Path) -> None:
    path = _write(tmp_path / "ranges.yaml", RANGES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert _count(info.value) == 5
    assert _fields(info.value) == Counter(["train.lr", "teacher.ks", "variants", "variants", "model.latent_dim"])
    message = str(info.value)
    assert "'bogus'" in message and "noalign must be listed" in message and "latent_dim >= K - 1" in message


def test_all_problems_of_one_file_listed_together(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.yaml", MIXED)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert _fields(info.value) == Counter(["bogus_top", "model.bogus_nested", "train.batch_size", "train.epochs",
                                           "teacher.pca_dims", "train.lr", "teacher.ks", "variants", "variants",
                                           "model.latent_dim"])
    assert _count(info.value) == 10


# --- overrides and file errors --------------------------------------------------------------------


def test_overrides_take_effect() -> None:
    path = CONFIG_DIR / "smoke_digits.yaml"
    base = load_config(path)
    assert base.seeds != [11, 12, 13] and base.train.lam != 2.0
    cfg = load_config(path, ["seeds=[11,12,13]", "train.lam=2.0"])
    assert cfg.seeds == [11, 12, 13] and cfg.train.lam == 2.0
    assert cfg.model == base.model and cfg.teacher == base.teacher  # nothing else moved


@pytest.mark.parametrize(("override", "expected"), [
    ("train.nope=1", "train.nope: unknown key"),
    ("train.lr=-1", "train.lr: must be > 0"),
    ("train.epochs=two", "train.epochs: expected int"),
    ("novalue", "'novalue': expected dotted.key=value"),
])
def test_bad_override_raises(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(CONFIG_DIR / "smoke_digits.yaml", [override])


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*mapping"):
        load_config(path)


# --- command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("train:\n  lr: -1\n", [], "train.lr: must be > 0"),
    ("data:\n  name: digits\n", ["--set", "model.nope=1"], "model.nope: unknown key"),
])
def test_cli_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture, text: str, overrides: list[str],
                        expected: str) -> None:
    config = _write(tmp_path / "bad.yaml", text)
    out = tmp_path / "out"
    assert main(["run", str(config), *overrides, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and expected in captured.err and str(config) in captured.err
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_grid_is_valid(path: Path) -> None:
    from sweep.grid import grid_points, grid_problems

    cfg = load_config(path)
    assert grid_problems(cfg) == []
    assert len(grid_points(cfg)) == max(1, math.prod(len(v) for k, v in cfg.sweep.grid.items() if k != "eval.tau"))


def test_grid_keys_can_be_set_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: c\nsweep:\n  grid:\n    train.alpha_kl: [1.0, 2.0]\n")
    cfg = load_config(path, ["sweep.grid.train.lam=[1.0, 5.0]", "sweep.cpus_per_trial=2"])
    assert cfg.sweep.grid == {"train.alpha_kl": [1.0, 2.0], "train.lam": [1.0, 5.0]}
    assert cfg.sweep.cpus_per_trial == 2.0
    assert from_flat(to_flat(cfg)) == cfg
