"""The official on-disk formats of the image data sets, each read into an `ImageData` (sweep/data.py):
scikit-learn's bundled digits, IDX files (MNIST, Fashion-MNIST), torchvision's CIFAR-10/100 pickles
and the Tiny-ImageNet-200 folder tree. Nothing is downloaded unless `data.download` is set for CIFAR;
a missing data set is a DataNotFoundError naming the folder and the files expected there.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweep.data import (
    DEFAULT_ROOT,
    FASHION_MNIST_ROOT,
    MNIST_ROOT,
    DataConfig,
    DataNotFoundError,
    ImageData,
    _images_to_tensor,
    _labels,
)

_IDX_IMAGES = 0x00000803
_IDX_LABELS = 0x00000801
_TINY_SIZE = 64


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `load_digits` gives them: images (1797, 8, 8), float64 in 0..16, and
    their labels. Read from the file in scikit-learn's wheel that `load_digits` reads, without
    importing scikit-learn: about 0.7 s of a driver's start, and the Ray engine's driver trains
    nothing that needs it. A scikit-learn that keeps the file elsewhere is asked through its API."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _load_digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 8x8 digits; no official split, so a fixed permutation makes one (1437 / 360)."""
    pixels, target = digits_arrays()
    images = torch.from_numpy(pixels / 16.0).to(torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = _labels(target, 10, "digits")
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(images)))
    train, test = order[:1437], order[1437:]
    return ImageData("digits", images[train], labels[train], images[test], labels[test], 10)


# --- MNIST and Fashion-MNIST (IDX) ---------------------------------------------------------------

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_eval": "t10k-images-idx3-ubyte",
    "y_eval": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class _IdxSet:
    """A data set in MNIST's format: the four `_IDX_FILES`, 28x28 grey images, 10 classes."""

    title: str
    default_root: str
    install: str
    """How to install the files, ending in a conjunction; "" when there is no package."""


_IDX_SETS = {
    "mnist": _IdxSet("MNIST", MNIST_ROOT, ""),
    "fashion_mnist": _IdxSet(
        "Fashion-MNIST", FASHION_MNIST_ROOT,
        f"Install it with `apt-get install dataset-fashion-mnist` (files land in {FASHION_MNIST_ROOT}) or"),
}


def _load_idx_set(cfg: DataConfig) -> ImageData:
    """MNIST or Fashion-MNIST from the four IDX files (gzipped or not); eval split = t10k."""
    spec = _IDX_SETS[cfg.name]
    root = Path(cfg.root or spec.default_root)
    paths = {key: _find_idx(root, stem) for key, stem in _IDX_FILES.items()}
    missing = [stem for key, stem in _IDX_FILES.items() if paths[key] is None]
    if missing:
        how = f"{spec.install} put" if spec.install else "Put"
        raise DataNotFoundError(
            f"{spec.title} not found: expected {', '.join(missing)} (.gz or uncompressed) in {root}. "
            f"{how} the four official IDX files {', '.join(_IDX_FILES.values())} in {root} (data.root).")
    split = {}
    for prefix in ("train", "eval"):
        images = _read_idx(paths[f"x_{prefix}"], _IDX_IMAGES)
        labels = _read_idx(paths[f"y_{prefix}"], _IDX_LABELS)
        if len(images) != len(labels):
            raise ValueError(f"{paths[f'x_{prefix}']} holds {len(images)} images but "
                             f"{paths[f'y_{prefix}']} holds {len(labels)} labels")
        split[f"x_{prefix}"] = _images_to_tensor(images[..., None])  # (N, 28, 28, 1) in
        split[f"y_{prefix}"] = _labels(labels, 10, str(paths[f"y_{prefix}"]))
    return ImageData(cfg.name, n_classes=10, **split)


def _decompressed(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; a cut stream is an EOFError
        raise ValueError(f"{path}: not a complete gzip file ({err})") from err


def _find_idx(root: Path, stem: str) -> Path | None:
    """The gzipped file if present, else the uncompressed one, else None."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped when the name ends in .gz).

    Args:
        path: The file.
        magic: Expected magic number (0x00000803 for images, 0x00000801 for labels); its last
            byte is the number of dimensions.

    Returns:
        uint8 array shaped as the header says, e.g. (N, rows, cols) for images.

    Raises:
        ValueError: Wrong magic number, a truncated or overlong file, or broken gzip data.
    """
    raw = _decompressed(path)
    found = int.from_bytes(raw[:4], "big")  # 0 for an empty file
    if found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} "
                         f"(not an IDX file of this kind)")
    ndim = magic & 0xFF  # the magic's last byte counts the dimensions
    header = 4 * (1 + ndim)
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else None
    if dims is None or len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw)} bytes do not match the header's dimensions {dims} "
                         f"(truncated or wrong file)")
    # copy(): frombuffer views immutable bytes, and torch warns on (and must not write to) those.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


# --- CIFAR (through torchvision) ------------------------------------------------------------------

def _unverified(files: list[list[str]]) -> list[list[str | None]]:
    """torchvision's [filename, md5] list with md5 None, which check_integrity reads as 'exists'."""
    return [[name, None] for name, _md5 in files]


@functools.cache
def cifar_class(name: str, verify: bool) -> type:
    """torchvision's CIFAR10 / CIFAR100 class, md5-checking unless `verify` is off (then a subclass
    that checks only that the official files exist). torchvision is imported here, for CIFAR only:
    importing it costs about 2.5 s of CPU (its models and ops load torch._dynamo), which every
    other data set's driver and test process would pay for nothing."""
    from torchvision.datasets import CIFAR10, CIFAR100

    official = CIFAR10 if name == "cifar10" else CIFAR100
    if verify:
        return official
    return type(f"_Unverified{official.__name__}", (official,), {
        "__doc__": f"{official.__name__} that checks only that the official files exist, not their md5 sums.",
        "train_list": _unverified(official.train_list), "test_list": _unverified(official.test_list),
        "meta": {**official.meta, "md5": None}})


def _load_cifar(cfg: DataConfig) -> ImageData:
    """CIFAR-10 / CIFAR-100 (fine labels) via torchvision's dataset classes; eval split = test."""
    n_classes = 10 if cfg.name == "cifar10" else 100
    cls = cifar_class(cfg.name, cfg.verify)
    root = Path(cfg.root or DEFAULT_ROOT)
    split = {}
    for prefix, train in (("train", True), ("eval", False)):
        ds = _open_cifar(cls, root, train, cfg)
        split[f"x_{prefix}"] = _images_to_tensor(ds.data)  # ds.data is (N, 32, 32, 3) uint8
        split[f"y_{prefix}"] = _labels(ds.targets, n_classes, f"{root / cls.base_folder}")
    return ImageData(cfg.name, n_classes=n_classes, **split)


def _open_cifar(cls: type, root: Path, train: bool, cfg: DataConfig) -> Any:
    """One split through torchvision, its errors turned into ours."""
    try:
        return cls(str(root), train=train, download=cfg.download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataNotFoundError(_cifar_missing(cls, root, cfg.verify, err)) from err
    except (KeyError, EOFError, pickle.UnpicklingError, ValueError) as err:
        # Only reachable with verify=False: files exist but are not the official pickles.
        raise ValueError(f"{root / cls.base_folder}: files are not in the official CIFAR pickle "
                         f"layout ({type(err).__name__}: {err})") from err


def _cifar_missing(cls: type, root: Path, verify: bool, err: RuntimeError) -> str:
    """DataNotFoundError message: which folder and files, and how to get them."""
    folder = (root / cls.base_folder).resolve()
    files = [name for name, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    checked = "present with the official md5 sums" if verify else "present"
    return (f"{cls.__name__.removeprefix('_Unverified')} missing or corrupted: expected "
            f"{', '.join(files)} {checked} in {folder}. Extract the official archive {cls.filename} "
            f"into {root.resolve()} (it creates {cls.base_folder}/), or set data.download=true "
            f"(works only with network access); data.verify=false skips the md5 check. "
            f"torchvision said: {err}")


# --- Tiny-ImageNet --------------------------------------------------------------------------------

def _load_tiny_imagenet(cfg: DataConfig) -> ImageData:
    """Tiny-ImageNet-200 from its official folder tree; eval split = val; class = sorted wnid index."""
    base = Path(cfg.root or DEFAULT_ROOT) / "tiny-imagenet-200"
    wnids = _read_wnids(base)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_labels = _tiny_train_files(base, wnids)
    val_files, val_labels = _tiny_val_files(base, index)
    return ImageData(
        "tiny_imagenet",
        _images_to_tensor(_read_images(train_files)), _labels(train_labels, len(wnids), str(base / "train")),
        _images_to_tensor(_read_images(val_files)), _labels(val_labels, len(wnids), str(base / "val")),
        len(wnids))


def _require(path: Path, what: str) -> None:
    """DataNotFoundError naming `path` unless it exists."""
    if not path.exists():
        raise DataNotFoundError(
            f"Tiny-ImageNet: {what} {path.resolve()} is missing. Unzip the official tiny-imagenet-200.zip "
            f"into the data root (data.root, default {DEFAULT_ROOT}/) so that {path.name} is there.")


def _read_wnids(base: Path) -> list[str]:
    """Sorted class ids from wnids.txt (their positions are the class indices)."""
    _require(base, "folder")
    _require(base / "wnids.txt", "class list")
    wnids = sorted({line.strip() for line in (base / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise ValueError(f"{base / 'wnids.txt'}: lists no class ids")
    return wnids


def _tiny_train_files(base: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Every train/<wnid>/images/*.JPEG with its class index, in a fixed (sorted) order."""
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        _require(folder, f"training folder of class {wnid}")
        found = sorted(folder.glob("*.JPEG"))
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataNotFoundError(f"Tiny-ImageNet: no *.JPEG under {(base / 'train').resolve()}/<wnid>/images")
    return files, labels


def _tiny_val_files(base: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Validation images and labels in val_annotations.txt order (filename, wnid, x, y, w, h)."""
    annotations = base / "val" / "val_annotations.txt"
    _require(base / "val" / "images", "validation image folder")
    _require(annotations, "validation annotation file")
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{annotations}, line {number}"
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{where}: expected 'filename<TAB>wnid<TAB>...' with a wnid from "
                             f"wnids.txt, got {line!r}")
        path = base / "val" / "images" / fields[0]
        if not path.is_file():
            raise ValueError(f"{where}: image {path} does not exist")
        files.append(path)
        labels.append(index[fields[1]])
    return files, labels


def _read_images(files: list[Path]) -> np.ndarray:
    """(N, 64, 64, 3) uint8 RGB array; files are decoded in parallel threads (PIL releases the GIL)."""
    out = np.empty((len(files), _TINY_SIZE, _TINY_SIZE, 3), dtype=np.uint8)

    def read_one(i: int) -> None:
        out[i] = _read_rgb(files[i])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(read_one, range(len(files))))  # list() re-raises any worker's exception
    return out


def _read_rgb(path: Path) -> np.ndarray:
    """One image as (64, 64, 3) uint8 RGB; resized only when it is not 64x64 already."""
    from PIL import Image  # ships with torchvision; only Tiny-ImageNet decodes image files

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (_TINY_SIZE, _TINY_SIZE):
        rgb = rgb.resize((_TINY_SIZE, _TINY_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


LOADERS: dict[str, Callable[[DataConfig], ImageData]] = {
    "digits": _load_digits,
    "mnist": _load_idx_set,
    "fashion_mnist": _load_idx_set,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tiny_imagenet": _load_tiny_imagenet,
}
