"""Checkpoints: weights, optimizer state, RNG state, resolved config, metrics and lineage.

A checkpoint is one `torch.save`d dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code. Beside each `<name>.pt` a small
manifest `<name>.pt.json` records its step, epoch, variant, size and sha256, so that the engine
can read a checkpoint's step without loading its weights, and a reader can tell a whole file from
a truncated or corrupt one.

Writes never leave a partial file under a real name: the bytes are written aside and renamed, the
manifest after them. A trial's previous checkpoint is kept as `checkpoint-prev.pt` (a hard link,
no copy) when the next one is written, and `load_latest` falls back to it, with a line saying so,
when `checkpoint.pt` does not match its manifest (a node lost while a copy was being pushed, a
disk that filled up).

Kept checkpoints (`kept_name`, <trial>/checkpoint-step<N>.pt with its manifest) are more names of
a checkpoint the trial wrote at step N, which nothing overwrites: every sweep.keep_checkpoints-th
report of a trial (`keep`), and the one a fork starts from (sweep/reactions.py pins it). A fork
names one by its step (`kept_steps` lists them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from sweep.files import write_atomic
from sweep.schema import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT

FORMAT = "certsweep-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model", "optimizer", "rng", "config", "variant", "seed", "epoch",
            "step", "lam", "metrics", "n_components", "teacher_hash", "data_fingerprint", "parent")
LATEST, PREVIOUS = CHECKPOINT_FILE, PREVIOUS_CHECKPOINT
KEPT = re.compile(r"checkpoint-step(\d+)\.pt")


def kept_name(step: int) -> str:
    """The file name of a trial's checkpoint kept at optimizer step `step`."""
    return f"checkpoint-step{step}.pt"


def kept_steps(names: list[str]) -> list[int]:
    """The steps of the kept checkpoints among a trial folder's file names (whole ones: with their
    manifest), sorted."""
    present = set(names)
    return sorted(int(m.group(1)) for n in names if (m := KEPT.fullmatch(n)) and f"{n}.json" in present)


def keep(trial_dir: Path) -> Path:
    """Keep the trial's latest checkpoint (and manifest) under its step's name (`kept_name`): a
    hard link, so it costs no bytes until checkpoint.pt is written again."""
    step = int(read_manifest(trial_dir / LATEST)["step"])
    kept = trial_dir / kept_name(step)
    _replace_link(trial_dir / LATEST, kept)
    _replace_link(manifest_path(trial_dir / LATEST), manifest_path(kept))
    return kept


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours; the message names the file."""


def manifest_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write `state` to `path` (atomically) and its manifest beside it.

    Args:
        state: Everything REQUIRED but format and version.
        path: The checkpoint file.
        keep_previous: Keep the file `path` held so far as checkpoint-prev.pt in the same folder.
    """
    path = Path(path)
    missing = [k for k in REQUIRED if k not in state and k not in ("format", "version")]
    if missing:
        raise CheckpointError(f"refusing to write {path}: state lacks {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    data = buffer.getvalue()
    if keep_previous and path.exists() and manifest_path(path).exists():
        _replace_link(path, path.with_name(PREVIOUS))
        _replace_link(manifest_path(path), manifest_path(path.with_name(PREVIOUS)))
    write_atomic(path, data)
    manifest = {"step": int(state["step"]), "epoch": int(state["epoch"]), "variant": state["variant"],
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_atomic(manifest_path(path), json.dumps(manifest).encode())
    return path


def _replace_link(src: Path, dst: Path) -> None:
    """dst becomes another name of src's current content (a hard link; a copy where links fail)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint `path`: step, epoch, variant, bytes, sha256."""
    try:
        return json.loads(manifest_path(path).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable manifest {manifest_path(path).name} ({err})") from err


def verify(path: str | Path) -> None:
    """Raise CheckpointError unless `path` holds exactly the bytes its manifest names."""
    manifest = read_manifest(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint not readable: {path} ({err})") from err
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {len(data)} bytes, sha256 does not "
                              f"match its manifest ({manifest['bytes']} bytes, step {manifest['step']})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU with weights_only=True and check its structure (and its bytes
    against its manifest, where it has one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if manifest_path(path).exists():
        verify(path)
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


def load_latest(trial_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """A trial's own latest checkpoint: checkpoint.pt, else (truncated or corrupt) checkpoint-prev.pt,
    saying so; None when the trial has none yet."""
    latest, previous = trial_dir / LATEST, trial_dir / PREVIOUS
    if not latest.exists():
        return None
    try:
        return load_checkpoint(latest)
    except CheckpointError as err:
        if not previous.exists():
            raise
        state = load_checkpoint(previous)
        log(f"warning: {err}; falling back to {previous.name} (step {state['step']})")
        _replace_link(previous, latest)  # the next save keeps this one as the previous checkpoint
        _replace_link(manifest_path(previous), manifest_path(latest))
        return state


def fingerprint_weights(model_state: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, shapes and bytes: identifies a warm-up checkpoint."""
    h = hashlib.sha256()
    for name in sorted(model_state):
        t = model_state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
