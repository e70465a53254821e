"""The cached teacher artifact (docs/method.md, "Protocol" steps 2-3 and the fixed-target protocol).

After the teacher search the selected teacher's targets are cached and held fixed: every
downstream variant (full, noalign, rescue, fixed_target) of a seed reads the same artifact.
On disk a directory holds two files:

    targets.npz    targets_train (N_train, K) and targets_eval (N_eval, K), float64
    teacher.json   every other field, "content_hash" and "format_version"

Reuse is never silent: loading re-validates the rows, recomputes the content hash and (when the
caller passes them) checks the data and warm-up fingerprints; every failure is one
TeacherCacheError naming the directory and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from teachers.certificate import check_distributions, teacher_mi

FORMAT_VERSION = 1
TARGETS_FILE = "targets.npz"
META_FILE = "teacher.json"
_ARRAYS = ("targets_train", "targets_eval")
_META_FIELDS = ("selected", "candidates", "seed", "data_fingerprint", "warmup_fingerprint")


class TeacherCacheError(ValueError):
    """A teacher cache directory that cannot be (re)used or written; the message says why."""


@dataclass
class TeacherArtifact:
    """The selected teacher's targets and the search record that produced them."""

    targets_train: np.ndarray
    """(N_train, K) float64 row-stochastic targets on the train split."""
    targets_eval: np.ndarray
    """(N_eval, K) targets on the evaluation split (the certificate's means run over these)."""
    selected: dict
    """The selected candidate's table row (k, covariance_type, pca_dim, restart, diagnostics, ...)."""
    candidates: list[dict]
    """The whole candidate table as json-able rows."""
    seed: int
    data_fingerprint: str
    """Identifies the dataset the warm-up features came from."""
    warmup_fingerprint: str
    """Identifies the warm-up checkpoint the features came from."""

    def __post_init__(self) -> None:
        self.targets_train = check_distributions(self.targets_train, "targets_train")
        self.targets_eval = check_distributions(self.targets_eval, "targets_eval")
        k_train, k_eval = self.targets_train.shape[1], self.targets_eval.shape[1]
        k_selected = self.selected.get("k", k_eval)
        if not k_train == k_eval == k_selected:
            raise ValueError(f"K disagrees: targets_train has {k_train} columns, targets_eval {k_eval}, "
                             f"selected['k'] is {k_selected!r}")

    @property
    def k(self) -> int:
        return int(self.targets_eval.shape[1])

    @property
    def feasible(self) -> bool:
        return bool(self.selected.get("feasible", False))

    @property
    def tbar(self) -> np.ndarray:
        """Mean eval target Tbar, (K,)."""
        return self.targets_eval.mean(axis=0)

    @property
    def I_T(self) -> float:
        """Teacher MI of the eval targets."""
        return teacher_mi(self.targets_eval)

    def metadata(self) -> dict:
        """Every field except the arrays, as a json-able dict."""
        return {name: getattr(self, name) for name in _META_FIELDS}

    def content_hash(self) -> str:
        """sha256 over both arrays (name, shape, float64 C-order bytes) and the canonical metadata JSON."""
        digest = hashlib.sha256()
        for name in _ARRAYS:
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            digest.update(f"{name}{arr.shape}".encode())
            digest.update(arr.tobytes())
        digest.update(_canonical_json(self.metadata()).encode())
        return digest.hexdigest()


def _canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _write_atomic(path: Path, write) -> None:
    """Writes via `write(file)` to a temp file beside `path`, then renames it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_teacher(art: TeacherArtifact, directory: str | Path) -> Path:
    """Saves the artifact to `directory` (created if needed) and returns the directory.

    Re-saving an identical artifact is a no-op; an existing different (or unreadable) artifact is
    never overwritten.

    Raises:
        TeacherCacheError: if the directory already holds a different or unreadable artifact.
    """
    directory = Path(directory)
    if (directory / META_FILE).exists() or (directory / TARGETS_FILE).exists():
        _require_same(art, directory)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**art.metadata(), "content_hash": art.content_hash(), "format_version": FORMAT_VERSION}
    # targets first: teacher.json is written last, so a crash never leaves a loadable half artifact.
    _write_atomic(directory / TARGETS_FILE, lambda f: np.savez(f, **{n: getattr(art, n) for n in _ARRAYS}))
    meta_bytes = json.dumps(meta, sort_keys=True, indent=1).encode()
    _write_atomic(directory / META_FILE, lambda f: f.write(meta_bytes))
    return directory


def _require_same(art: TeacherArtifact, directory: Path) -> None:
    """Raises unless `directory` already holds exactly `art`."""
    try:
        existing = load_teacher(directory).content_hash()
    except TeacherCacheError as err:
        raise TeacherCacheError(f"teacher cache {directory} already holds an unreadable artifact, "
                                f"refusing to overwrite it ({err})") from err
    if existing != art.content_hash():
        raise TeacherCacheError(f"teacher cache {directory} already holds a different artifact "
                                f"(content hash {existing}, new {art.content_hash()}): "
                                "refusing to overwrite it; remove it or choose another directory")


def _read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TeacherCacheError(f"teacher cache {directory}: cannot read {META_FILE}: {err}") from err
    if not isinstance(meta, dict):
        raise TeacherCacheError(f"teacher cache {directory}: {META_FILE} is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TeacherCacheError(f"teacher cache {directory}: format_version {meta.get('format_version')!r}, "
                                f"expected {FORMAT_VERSION}")
    missing = [key for key in (*_META_FIELDS, "content_hash") if key not in meta]
    if missing:
        raise TeacherCacheError(f"teacher cache {directory}: {META_FILE} lacks {missing}")
    return meta


def _read_arrays(directory: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(directory / TARGETS_FILE, allow_pickle=False) as npz:
            return {name: npz[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise TeacherCacheError(f"teacher cache {directory}: cannot read {TARGETS_FILE}: {err!r}") from err


def load_teacher(directory: str | Path, data_fingerprint: str | None = None,
                 warmup_fingerprint: str | None = None) -> TeacherArtifact:
    """Loads and validates a saved artifact.

    Args:
        directory: the directory passed to `save_teacher`.
        data_fingerprint: when given, must equal the stored one.
        warmup_fingerprint: when given, must equal the stored one.

    Raises:
        TeacherCacheError: missing files, unparsable JSON, rows that are not distributions, K that
            disagrees, a content hash mismatch, or a fingerprint mismatch.
    """
    directory = Path(directory)
    for name in (META_FILE, TARGETS_FILE):
        if not (directory / name).is_file():
            raise TeacherCacheError(f"teacher cache {directory}: missing {name}")
    meta, arrays = _read_meta(directory), _read_arrays(directory)
    try:
        art = TeacherArtifact(**arrays, **{key: meta[key] for key in _META_FIELDS})
    except (ValueError, TypeError, AttributeError) as err:
        raise TeacherCacheError(f"teacher cache {directory}: invalid contents: {err}") from err
    computed = art.content_hash()
    if computed != meta["content_hash"]:
        raise TeacherCacheError(f"teacher cache {directory}: content hash mismatch "
                                f"(stored {meta['content_hash']}, computed {computed}): "
                                "the files were modified or are corrupt")
    for kind, wanted in (("data", data_fingerprint), ("warmup", warmup_fingerprint)):
        stored = meta[f"{kind}_fingerprint"]
        if wanted is not None and wanted != stored:
            raise TeacherCacheError(f"teacher cache {directory} was built from {kind} fingerprint {stored} "
                                    f"but this run's {kind} has {wanted}: refusing to reuse it")
    return art
