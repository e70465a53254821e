"""Checkpoints: weights, optimizer state, RNG state, resolved config, metrics and lineage.

A checkpoint is one `torch.save`d dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code. Writes are atomic (temp file + rename),
so a killed process never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "certsweep-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model", "optimizer", "rng", "config", "variant", "seed", "epoch",
            "step", "lam", "metrics", "n_components", "teacher_hash", "data_fingerprint", "parent")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` atomically to `path`."""
    path = Path(path)
    missing = [k for k in REQUIRED if k not in state and k not in ("format", "version")]
    if missing:
        raise CheckpointError(f"refusing to write {path}: state lacks {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU with weights_only=True and check its structure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a certsweep checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if state["version"] != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state['version']}, expected {VERSION}")
    return state


def fingerprint_weights(model_state: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, shapes and bytes: identifies a warm-up checkpoint."""
    h = hashlib.sha256()
    for name in sorted(model_state):
        t = model_state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
