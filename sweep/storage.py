"""Where a sweep's files live: a local (or shared-filesystem) directory, or a URI on any pyarrow
filesystem Ray supports (s3://, gs://, hdfs://, abfs://, file://).

The run layout (config.yaml, results.csv, scheduler.jsonl, seed_<s>/<trial>/...) is the same either
way. Code writes and reads files under `Storage.local` with plain file I/O:

  a directory   `local` is the directory itself; push and pull do nothing
  a URI         `local` is a staging copy on this machine; `push` uploads a file or a folder's
                changed files to the URI, `pull` downloads them. The URI is the truth: every
                process (the driver, each trial on any node) stages what it needs and pushes what
                it writes, so no two machines need a common filesystem.

Imports no Ray: pyarrow comes with ray[tune], and this module is usable without Ray.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from sweep.config import ConfigError
from sweep.files import named_fault, write_atomic
from sweep.schema import CONFIG_FILE, LOCK_FILE, PLAN_FILE

STAGING_ENV = "CERTSWEEP_STAGING"
"""Folder under which URI sweeps are staged on each machine (default: the system temp folder)."""


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


def link(src: Path, dst: Path) -> None:
    """Hard link (no copy) where the filesystem allows it, else a copy made aside and renamed. Files
    of a sweep are replaced (written aside, then renamed), never rewritten in place, so a link keeps
    its content."""
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:
        tmp = dst.with_name(dst.name + ".part")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)


class Storage:
    """A sweep directory, local or at a URI (see the module docstring)."""

    def __init__(self, where: str | Path) -> None:
        where = str(where)
        if not is_uri(where):
            self.uri, self.fs, self.root = str(Path(where).resolve()), None, ""
            self.local = Path(self.uri)
            return
        import pyarrow
        import pyarrow.fs

        try:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(where)
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as err:
            raise ConfigError(f"storage {where}: pyarrow cannot open it ({err})") from err
        self.uri, self.root = where.rstrip("/"), root.rstrip("/")
        base = Path(os.environ.get(STAGING_ENV) or Path(tempfile.gettempdir()) / "certsweep-staging")
        self.local = base / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self._pushed: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) of what this process uploaded

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def __str__(self) -> str:
        return self.uri

    def path(self, rel: str) -> Path:
        """The local file of `rel` (the directory itself, or the staging copy)."""
        return self.local / rel

    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _info(self, rel: str):  # -> pyarrow.fs.FileInfo
        return self.fs.get_file_info(self._remote(rel))

    def exists(self, rel: str) -> bool:
        if not self.remote:
            return self.path(rel).exists()
        import pyarrow.fs

        return self._info(rel).type != pyarrow.fs.FileType.NotFound

    def is_empty(self) -> bool:
        """True when there is nothing at the location but the lock of the driver that starts a new
        sweep there (sweep/lock.py)."""
        if not self.remote:
            return not self.local.exists() or all(p.name == LOCK_FILE for p in self.local.iterdir())
        import pyarrow.fs

        if self._info("").type == pyarrow.fs.FileType.NotFound:
            return True
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return all(i.base_name == LOCK_FILE for i in infos)

    def reset_staging(self) -> None:
        """Start this machine's staging copy empty (a URI sweep; the URI holds everything)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True, exist_ok=True)
            self._pushed.clear()

    def push(self, rel: str) -> None:
        """Upload `rel` (a file, or a folder's new and changed files) to the URI."""
        if not self.remote:
            return
        src = self.path(rel)
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for f in files:
            key = str(f.relative_to(self.local))
            stat = f.stat()
            if self._pushed.get(key) == (stat.st_size, stat.st_mtime_ns):
                continue
            self._upload(f, self._remote(key))
            self._pushed[key] = (stat.st_size, stat.st_mtime_ns)

    def _upload(self, src: Path, dst: str) -> None:
        """Upload one file whole: written aside under a .part name, then moved to its name, so a node
        lost mid-upload leaves no partial file under the real name (on object stores each object is
        whole anyway; the move is a server-side copy)."""
        part = f"{dst}.part"
        try:
            self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
            with open(src, "rb") as source, self.fs.open_output_stream(part) as sink:
                shutil.copyfileobj(source, sink, length=1 << 22)
            self.fs.move(part, dst)
        except OSError as err:
            raise named_fault(err, self.uri + dst[len(self.root):]) from err

    def pull(self, rel: str, skip: tuple[str, ...] = ()) -> Path:
        """Download `rel` (a file or a folder, "" for everything but the top-level names in `skip`)
        from the URI into the staging copy; returns its local path. What is not at the URI is not
        created (the caller's read then names it)."""
        if not self.remote:
            return self.path(rel)
        import pyarrow.fs

        info = self._info(rel)
        if info.type == pyarrow.fs.FileType.Directory:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._remote(rel), recursive=True))
            keys = [i.path[len(self.root) + 1:] for i in infos if i.type == pyarrow.fs.FileType.File]
            keys = [k for k in keys if k.split("/", 1)[0] not in skip and not k.endswith(".part")]
        else:
            keys = [rel] if info.type == pyarrow.fs.FileType.File else []
        for key in keys:
            dst = self.path(key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".part")
            with self.fs.open_input_stream(self._remote(key)) as source, open(tmp, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 22)
            os.replace(tmp, dst)
            stat = dst.stat()
            self._pushed[key] = (stat.st_size, stat.st_mtime_ns)  # identical to the URI's copy
        return self.path(rel)

    def read_bytes(self, rel: str) -> bytes | None:
        """The bytes of file `rel`, read where it lives (the URI itself); None when there is none."""
        if not self.remote:
            try:
                return self.path(rel).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
        if not self.exists(rel):
            return None
        with self.fs.open_input_stream(self._remote(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write file `rel` whole, where it lives (a directory: aside and renamed; a URI: uploaded
        under a .part name and moved)."""
        if not self.remote:
            write_atomic(self.path(rel), data)
            return
        part = self._remote(f"{rel}.part")
        try:
            self.fs.create_dir(part.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(part) as sink:
                sink.write(data)
            self.fs.move(part, self._remote(rel))
        except OSError as err:
            raise named_fault(err, f"{self.uri}/{rel}") from err

    def delete(self, rel: str) -> None:
        """Remove file `rel` where it lives (nothing when there is none)."""
        if not self.remote:
            self.path(rel).unlink(missing_ok=True)
        elif self.exists(rel):
            self.fs.delete_file(self._remote(rel))

    def children(self, rel: str) -> list[str]:
        """Names directly inside the folder `rel` ([] when there is none)."""
        if not self.remote:
            return sorted(p.name for p in self.path(rel).iterdir()) if self.path(rel).is_dir() else []
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._remote(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def copy(self, src: str, dst: str) -> None:
        """Copy a file within the storage: a hard link in a directory, a server-side copy on
        object stores."""
        if not self.remote:
            link(self.path(src), self.path(dst))
            return
        self.fs.copy_file(self._remote(src), self._remote(dst))


def new_sweep(storage: Storage, config_yaml: str) -> None:
    """Start a sweep at `storage`: refuse a place that already holds files (nothing there is
    touched), else create it and write config.yaml and an empty plan.jsonl, the two files that
    make it a sweep `resume` continues (uploaded at once to a URI)."""
    if not storage.is_empty():
        raise FileExistsError(f"output {storage} already exists and is not empty: "
                              "choose another --out (nothing there was touched)")
    storage.reset_staging()
    storage.local.mkdir(parents=True, exist_ok=True)
    write_atomic(storage.path(CONFIG_FILE), config_yaml)
    write_atomic(storage.path(PLAN_FILE), "")
    for name in (CONFIG_FILE, PLAN_FILE):
        storage.push(name)
