"""Writes that a lost node or a killed process cannot leave half done (no Ray): checkpoints with a
manifest and a previous copy to fall back to, uploads moved into place whole, a half-written
results.csv row cut on resume, and a trial restarted from a truncated checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sweep.schema import CHECKPOINT_FILE
from sweep.checkpoint import CheckpointError, load_checkpoint, load_latest, read_manifest
from sweep.files import cut_partial_line
from sweep.protocol import new_trial, run_trial
from sweep.spec import TrialSpec
from sweep.stage import train_warmup
from sweep.storage import Storage


def trained(tiny_cfg, digits, tmp_path: Path):
    warm = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    trial = new_trial(tiny_cfg, "full", 3, digits, warm.teacher, warm.state)
    run_trial(trial, tmp_path / "full")
    return warm, trial


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_says_so(tiny_cfg, digits, tmp_path) -> None:
    _, trial = trained(tiny_cfg, digits, tmp_path)
    folder = tmp_path / "full"
    assert read_manifest(folder / CHECKPOINT_FILE)["step"] == trial.step
    previous_step = read_manifest(folder / "checkpoint-prev.pt")["step"]
    assert previous_step < trial.step
    data = (folder / CHECKPOINT_FILE).read_bytes()
    (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(folder / CHECKPOINT_FILE)
    lines = []
    state = load_latest(folder, lines.append)
    assert state["step"] == previous_step
    (line,) = lines
    assert CHECKPOINT_FILE in line and "truncated" in line and f"falling back to checkpoint-prev.pt (step {previous_step})" in line
    assert load_checkpoint(folder / CHECKPOINT_FILE)["step"] == previous_step  # repaired: the next save keeps it


def test_a_corrupt_checkpoint_without_a_previous_one_is_an_error(tiny_cfg, digits, tmp_path) -> None:
    trained(tiny_cfg, digits, tmp_path)
    folder = tmp_path / "full"
    (folder / "checkpoint-prev.pt").unlink()
    data = bytearray((folder / CHECKPOINT_FILE).read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    (folder / CHECKPOINT_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_latest(folder, print)
    assert load_latest(tmp_path / "nothing_here", print) is None


def test_an_upload_cut_off_leaves_nothing_under_the_real_name(tmp_path, monkeypatch) -> None:
    storage = Storage(f"file://{tmp_path / 'bucket'}")
    storage.reset_staging()
    (storage.path("t")).mkdir()
    storage.path("t/result.json").write_text('{"status": "finished"}' * 1000)

    def cut(source, sink, length=0):
        sink.write(source.read(100))
        raise OSError("node lost")

    monkeypatch.setattr("sweep.storage.shutil.copyfileobj", cut)
    with pytest.raises(OSError, match="node lost"):
        storage.push("t")
    assert not (tmp_path / "bucket" / "t" / "result.json").exists()
    monkeypatch.undo()
    storage.push("t")
    assert (tmp_path / "bucket" / "t" / "result.json").read_text() == storage.path("t/result.json").read_text()
    shutil.rmtree(storage.local)
    storage.pull("t")  # a leftover .part at the URI is never staged as a file of the sweep
    assert sorted(p.name for p in storage.path("t").iterdir()) == ["result.json"]


def test_a_half_written_row_is_cut(tmp_path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("trial_id,status\nseed_0/full,finished\nseed_0/noal")
    assert cut_partial_line(path) and path.read_text() == "trial_id,status\nseed_0/full,finished\n"
    assert not cut_partial_line(path) and not cut_partial_line(tmp_path / "absent.csv")


def test_a_restarted_trial_continues_from_the_checkpoint_it_can_trust(tiny_cfg, digits, tmp_path) -> None:
    from sweep.stage import run_stage

    warm = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    spec = TrialSpec("seed_3/full", "full", 3, {}, warm.trial, "seed_3/teacher")
    storage = Storage(tmp_path)
    straight = run_stage(spec, tiny_cfg, digits, storage, warm, lambda t, m: None, {})
    folder = storage.path("seed_3/full")
    shutil.copytree(folder, tmp_path / "kept")
    (folder / "result.json").unlink()  # as if killed before its end, with its last checkpoint cut short
    data = (folder / CHECKPOINT_FILE).read_bytes()
    (folder / CHECKPOINT_FILE).write_bytes(data[:1000])
    lines = []
    again = run_stage(spec, tiny_cfg, digits, storage, warm, lambda t, m: None, {}, lines.append)
    assert any("falling back to checkpoint-prev.pt" in line for line in lines)
    assert again.metrics["G_tau"] == straight.metrics["G_tau"] and again.metrics["step"] == straight.metrics["step"]
    epochs = [line for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == tiny_cfg.train.epochs  # each report point once
