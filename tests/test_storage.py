"""Storage: a directory as it is, a URI through pyarrow with a local staging copy (no Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweep.config import ConfigError
from sweep.storage import STAGING_ENV, Storage, is_uri


@pytest.fixture()
def staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Storage, Path]:
    """A file:// URI storage (pyarrow's local filesystem, the code path of s3:// or gs://) whose
    staging folder is elsewhere, so every byte at the URI went through push."""
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    root = tmp_path / "bucket" / "sweep"
    return Storage(f"file://{root}"), root


def test_a_directory_is_used_in_place(tmp_path: Path) -> None:
    s = Storage(tmp_path / "run")
    assert not s.remote and not is_uri(tmp_path) and s.local == (tmp_path / "run").resolve()
    assert s.is_empty()
    s.path("a").parent.mkdir(parents=True)
    s.path("a").write_text("x")
    s.push("a")  # nothing to do
    assert s.pull("a") == s.path("a") and s.exists("a") and not s.is_empty()


def test_uri_push_uploads_files_and_folders_and_pull_stages_them(staged: tuple[Storage, Path]) -> None:
    s, root = staged
    assert s.remote and s.is_empty() and not str(s.local).startswith(str(root))
    s.reset_staging()
    (s.path("seed_0/full")).mkdir(parents=True)
    s.path("seed_0/full/metrics.jsonl").write_text('{"step": 1}\n')
    s.path("seed_0/full/checkpoint.pt").write_bytes(b"\0" * 5000)
    s.path("results.csv").write_text("trial_id\n")
    assert not (root / "results.csv").exists()  # nothing reaches the URI until pushed
    s.push("results.csv")
    s.push("seed_0/full")
    assert (root / "results.csv").read_text() == "trial_id\n"
    assert (root / "seed_0/full/checkpoint.pt").read_bytes() == b"\0" * 5000
    assert s.exists("seed_0/full/metrics.jsonl") and not s.exists("seed_0/noalign") and not s.is_empty()

    other = Storage(s.uri)  # another process (or node) starts with an empty staging copy
    other.reset_staging()
    assert not other.path("seed_0/full/metrics.jsonl").exists()
    assert other.pull("seed_0/full").is_dir()
    assert other.path("seed_0/full/metrics.jsonl").read_text() == '{"step": 1}\n'
    assert other.path("seed_0/full/checkpoint.pt").stat().st_size == 5000
    assert not other.pull("seed_0/missing.txt").exists()  # absent stays absent


def test_push_sends_only_what_changed(staged: tuple[Storage, Path]) -> None:
    s, root = staged
    s.reset_staging()
    s.path("t").mkdir()
    s.path("t/a").write_text("1")
    s.path("t/b").write_text("2")
    s.push("t")
    (root / "t/b").write_text("sentinel")  # if b were uploaded again this would be overwritten
    with open(s.path("t/a"), "a") as f:
        f.write("1")
    s.push("t")
    assert (root / "t/a").read_text() == "11" and (root / "t/b").read_text() == "sentinel"


def test_copy_pins_a_file_at_the_uri(staged: tuple[Storage, Path]) -> None:
    s, root = staged
    s.reset_staging()
    s.path("n").mkdir()
    s.path("n/checkpoint.pt").write_bytes(b"weights")
    s.push("n")
    s.copy("n/checkpoint.pt", "n/checkpoint-step7.pt")
    s.path("n/checkpoint.pt").write_bytes(b"later")
    s.push("n")
    assert (root / "n/checkpoint-step7.pt").read_bytes() == b"weights"
    assert (root / "n/checkpoint.pt").read_bytes() == b"later"


def test_reset_staging_drops_only_the_staging_copy(staged: tuple[Storage, Path]) -> None:
    s, root = staged
    s.reset_staging()
    s.path("f").write_text("kept")
    s.push("f")
    s.reset_staging()
    assert not s.path("f").exists() and (root / "f").read_text() == "kept"
    assert os.listdir(s.local) == []


def test_unknown_scheme_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="nosuchfs://x/y: pyarrow cannot open it"):
        Storage("nosuchfs://x/y")
