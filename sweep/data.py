"""Image data sets loaded as whole tensors, one per split.

A trial moves an `ImageData` to its device once (`ImageData.to`) and slices batches out of it, so
training does no per-sample Python work. Every loader reads the data set's official on-disk format
(IDX for MNIST and Fashion-MNIST, torchvision's CIFAR pickles, the Tiny-ImageNet folder tree) and returns
float32 images in [0, 1] laid out (N, C, H, W) on the CPU, with int64 class labels.

Subsets (`DataConfig.n_train` / `n_eval`) are drawn from their own seed, so every trial of a sweep
sees exactly the same images whatever its training seed; `ImageData.fingerprint` lets a run record
(and later check) which data it saw.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package `dataset-fashion-mnist` installs the IDX files."""
DEFAULT_ROOT = "data"
"""Default root of the CIFAR and Tiny-ImageNet sets, relative to the working directory."""
MNIST_ROOT = f"{DEFAULT_ROOT}/mnist"
"""Default folder of the four MNIST IDX files (no Debian package ships MNIST here)."""

SPLITS = {"digits": (1437, 10), "mnist": (60000, 10), "fashion_mnist": (60000, 10), "cifar10": (50000, 10),
          "cifar100": (50000, 100), "tiny_imagenet": (100000, 200)}
"""(training rows, classes) of each set's official training split (digits: this module's fixed split),
so that a config can be checked against its data before anything is loaded (K vs rows, the probe)."""
MAX_SEED = 2**32
"""Seeds lie in [0, 2**32): numpy's and scikit-learn's range, and torch's with room to derive others."""

_IDX_IMAGES = 0x00000803
_IDX_LABELS = 0x00000801
_TINY_SIZE = 64


@dataclass
class DataConfig:
    """Which data set to load and how much of it."""

    name: str = "fashion_mnist"
    """One of digits, mnist, fashion_mnist, cifar10, cifar100, tiny_imagenet."""
    root: str = ""
    """Folder holding the data set; "" = the set's default location."""
    n_train: int = 0
    """0 = the whole training split, else a fixed random subset of that size."""
    n_eval: int = 0
    """0 = the whole evaluation split, else a fixed random subset of that size."""
    subset_seed: int = 0
    """Seed of the subset draw; independent of the training seed so every trial sees the same data."""
    download: bool = False
    """CIFAR only: let torchvision download the official archive (needs network access)."""
    verify: bool = True
    """CIFAR only: check torchvision's md5 sums of the official files (False = existence only)."""

    def problems(self) -> list[str]:
        """Range and choice problems, each a full sentence naming the field.

        Returns:
            One message per problem; an empty list means the config is valid.
        """
        out = []
        if self.name not in DATASETS:
            out.append(f"data.name: {self.name!r} is not one of {', '.join(DATASETS)}")
        out += [f"data.{n}: must be >= 0 (0 = the whole split), got {getattr(self, n)}"
                for n in ("n_train", "n_eval") if getattr(self, n) < 0]
        if not 0 <= self.subset_seed < MAX_SEED:
            out.append(f"data.subset_seed: must be in [0, 2**32), got {self.subset_seed}")
        if self.name == "digits" and self.root:
            out.append(f"data.root: digits ships with scikit-learn and reads no folder; drop data.root "
                       f"(got {self.root!r})")
        return out

    def train_rows(self) -> int:
        """Rows of the training split this config loads: n_train, else the whole official split."""
        return self.n_train or SPLITS[self.name][0]


# eq=False: field-wise == on tensors has no single truth value; compare fingerprints instead.
@dataclass(frozen=True, eq=False)
class ImageData:
    """Both splits of one image data set as whole tensors.

    Attributes:
        name: Data set name (one of `DATASETS`).
        x_train: (N, C, H, W) float32 images in [0, 1].
        y_train: (N,) int64 class labels, or None for an unlabelled set.
        x_eval: (M, C, H, W) float32 images in [0, 1].
        y_eval: (M,) int64 class labels, or None.
        n_classes: Number of classes; 0 when unlabelled.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_eval: torch.Tensor
    y_eval: torch.Tensor | None
    n_classes: int
    # Cache of fingerprint(); not a constructor argument, so dataclasses.replace() resets it.
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def fingerprint(self) -> str:
        """SHA-256 over the name and every tensor's shape, dtype and raw bytes.

        Computed once and cached; identical for copies on other devices.

        Returns:
            The hex digest.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            parts = (("x_train", self.x_train), ("y_train", self.y_train),
                     ("x_eval", self.x_eval), ("y_eval", self.y_eval))
            for label, tensor in parts:
                _hash_tensor(digest, label, tensor)
            object.__setattr__(self, "_fingerprint", digest.hexdigest())
        return self._fingerprint

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device` (the fingerprint, cached or not, is unchanged).

        Args:
            device: Target device, e.g. "cuda" or torch.device("cpu").

        Returns:
            A new ImageData whose tensors live on `device`.
        """
        moved = ImageData(self.name, self.x_train.to(device), _to(self.y_train, device),
                          self.x_eval.to(device), _to(self.y_eval, device), self.n_classes)
        object.__setattr__(moved, "_fingerprint", self._fingerprint)
        return moved


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not where they were looked for; the message says how to get them."""


def load_data(cfg: DataConfig) -> ImageData:
    """Load the data set named by `cfg` as CPU tensors, subsets applied.

    Args:
        cfg: Which data set, where, and how much of it.

    Returns:
        Both splits as float32 (N, C, H, W) images in [0, 1] with int64 labels.

    Raises:
        ValueError: `cfg` has problems (e.g. an unknown name), a file is malformed, or a subset is
            larger than its split.
        DataNotFoundError: The data set's files are missing (or, for CIFAR with verify, corrupted).
    """
    problems = cfg.problems()
    if problems:
        raise ValueError("; ".join(problems))
    if cfg.root and Path(cfg.root).exists() and not Path(cfg.root).is_dir():
        raise DataNotFoundError(f"data.root: {cfg.root} is a file, not the folder that holds the data set")
    data = _LOADERS[cfg.name](cfg)
    x_train, y_train = _subset(data.x_train, data.y_train, cfg.n_train, cfg.subset_seed, "n_train")
    x_eval, y_eval = _subset(data.x_eval, data.y_eval, cfg.n_eval, cfg.subset_seed, "n_eval")
    return ImageData(data.name, x_train, y_train, x_eval, y_eval, data.n_classes)


def _to(tensor: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _hash_tensor(digest: hashlib._Hash, label: str, tensor: torch.Tensor | None) -> None:
    """Feed one tensor's identity (shape, dtype) and raw bytes into `digest`."""
    if tensor is None:
        digest.update(f"|{label}:None".encode())
        return
    digest.update(f"|{label}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    # A contiguous CPU array exposes its bytes through the buffer protocol: no extra copy.
    digest.update(tensor.detach().cpu().contiguous().numpy())


def _subset(x: torch.Tensor, y: torch.Tensor | None, n: int, seed: int,
            field_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fixed random subset of n rows (sorted indices); n == 0 keeps everything."""
    if n == 0:
        return x, y
    if n > len(x):
        raise ValueError(f"data.{field_name}: asked for {n} images but the split has only {len(x)}")
    # A fresh generator per split: the draw depends on nothing but the seed and the split size.
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(x), generator=generator)[:n].sort().values
    return x[index], None if y is None else y[index]


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], one vectorised pass."""
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return nchw.to(torch.float32).div_(255)


def _labels(values: np.ndarray | list[int], n_classes: int, where: str) -> torch.Tensor:
    """int64 label tensor, checked to lie in [0, n_classes)."""
    labels = torch.as_tensor(np.asarray(values), dtype=torch.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{where}: labels must lie in 0..{n_classes - 1}, "
                         f"found {int(labels.min())}..{int(labels.max())}")
    return labels


# --- digits ---------------------------------------------------------------------------------------

def _load_digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 8x8 digits; no official split, so a fixed permutation makes one (1437 / 360)."""
    from sklearn.datasets import load_digits  # sklearn is slow to import; only this set needs it

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).to(torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = _labels(bunch.target, 10, "digits")
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


class _UnverifiedCIFAR10(CIFAR10):
    """CIFAR10 that checks only that the official files exist, not their md5 sums."""

    train_list = _unverified(CIFAR10.train_list)
    test_list = _unverified(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class _UnverifiedCIFAR100(CIFAR100):
    """CIFAR100 that checks only that the official files exist, not their md5 sums."""

    train_list = _unverified(CIFAR100.train_list)
    test_list = _unverified(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


def cifar_class(cfg: DataConfig) -> type[CIFAR10]:
    """torchvision's CIFAR10 / CIFAR100 class for `cfg`, md5-checking unless cfg.verify is off."""
    if cfg.name == "cifar10":
        return CIFAR10 if cfg.verify else _UnverifiedCIFAR10
    return CIFAR100 if cfg.verify else _UnverifiedCIFAR100


def _load_cifar(cfg: DataConfig) -> ImageData:
    """CIFAR-10 / CIFAR-100 (fine labels) via torchvision's dataset classes; eval split = test."""
    n_classes = 10 if cfg.name == "cifar10" else 100
    cls = cifar_class(cfg)
    root = Path(cfg.root or DEFAULT_ROOT)
    split = {}
    for prefix, train in (("train", True), ("eval", False)):
        ds = _open_cifar(cls, root, train, cfg)
        split[f"x_{prefix}"] = _images_to_tensor(ds.data)  # ds.data is (N, 32, 32, 3) uint8
        split[f"y_{prefix}"] = _labels(ds.targets, n_classes, f"{root / cls.base_folder}")
    return ImageData(cfg.name, n_classes=n_classes, **split)


def _open_cifar(cls: type[CIFAR10], root: Path, train: bool, cfg: DataConfig) -> CIFAR10:
    """One split through torchvision, its errors turned into ours."""
    try:
        return cls(str(root), train=train, download=cfg.download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataNotFoundError(_cifar_missing(cls, root, cfg.verify, err)) from err
    except (KeyError, EOFError, pickle.UnpicklingError, ValueError) as err:
        # Only reachable with verify=False: files exist but are not the official pickles.
        raise ValueError(f"{root / cls.base_folder}: files are not in the official CIFAR pickle "
                         f"layout ({type(err).__name__}: {err})") from err


def _cifar_missing(cls: type[CIFAR10], root: Path, verify: bool, err: RuntimeError) -> str:
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


_LOADERS: dict[str, Callable[[DataConfig], ImageData]] = {
    "digits": _load_digits,
    "mnist": _load_idx_set,
    "fashion_mnist": _load_idx_set,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tiny_imagenet": _load_tiny_imagenet,
}
