"""Shared fixtures: a tiny digits config and its data, small enough for CPU tests."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pytest

from sweep.config import from_dict
from sweep.data import DataConfig, ImageData, load_data
from sweep.engine.security import TOKEN_ENV

# The tests' local Rays use a token of their own, not the user's ~/.certsweep/ray_auth_token
# (set at import, so that the drivers the tests start as subprocesses inherit it too).
os.environ.setdefault(TOKEN_ENV, str(Path(tempfile.gettempdir()) / f"certsweep-tests-{os.getuid()}" / "ray_auth_token"))


def tiny_raw(**train) -> dict:
    """A digits config dict: 8x8 images, K=4, a couple of epochs per stage."""
    return {
        "name": "tiny", "seeds": [3], "variants": ["full", "noalign", "rescue"],
        "data": {"name": "digits"},
        "model": {"arch": "mlp", "latent_dim": 6, "hidden": 32},
        "teacher": {"ks": [4], "restarts": 1, "min_teacher_mi": 0.0, "min_top1_margin": 0.0,
                    "min_high_margin_frac": 0.0},
        "train": {"warmup_epochs": 2, "epochs": 3, "rescue_epochs": 2, "batch_size": 128,
                  "lam": 5.0, "device": "cpu", **train},
        "eval": {"probe_samples": 500},
    }


def rows(out: Path) -> list[dict[str, str]]:
    """The rows of a sweep's results.csv ([] before its first)."""
    if not (out / "results.csv").exists():
        return []
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def digits() -> ImageData:
    return load_data(DataConfig(name="digits"))


@pytest.fixture
def tiny_cfg():
    return from_dict(tiny_raw())
