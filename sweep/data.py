"""Image data sets loaded as whole tensors, one per split.

A trial moves an `ImageData` to its device once (`ImageData.to`) and slices batches out of it, so
training does no per-sample Python work. Every loader reads the data set's official on-disk format
(IDX for MNIST and Fashion-MNIST, torchvision's CIFAR pickles, the Tiny-ImageNet folder tree) and returns
the images laid out (N, C, H, W) on the CPU, with int64 class labels. Images are kept at the size the
files hold them: uint8 pixels (digits, which scikit-learn ships as floats 0..16, as float32 in
[0, 1]); a uint8 tensor is 1/4 of float32's bytes in Ray's object store and on a trial's device.
Each batch becomes float32 in [0, 1] where it is used (`as_unit`): pixel / 255, the values a float
copy of the whole set held.

Subsets (`DataConfig.n_train` / `n_eval`) are drawn from their own seed, so every trial of a sweep
sees exactly the same images whatever its training seed; `ImageData.fingerprint` lets a run record
(and later check) which data it saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

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
PIXEL_MAX = 255
"""The uint8 pixel value of white: as_unit divides by it."""
MAX_SEED = 2**32
"""Seeds lie in [0, 2**32): numpy's and scikit-learn's range, and torch's with room to derive others."""



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
        x_train: (N, C, H, W) images: uint8 pixels, or float32 in [0, 1] (`as_unit` reads both).
        y_train: (N,) int64 class labels, or None for an unlabelled set.
        x_eval: (M, C, H, W) images, as x_train.
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
        """SHA-256 over the name and every tensor's shape, dtype and raw bytes, images as the
        float32 values training sees (`as_unit`): a uint8 copy has the fingerprint of a float one,
        so teacher caches keep matching.

        Computed once and cached; identical for copies on other devices.

        Returns:
            The hex digest.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            parts = (("x_train", self.x_train), ("y_train", self.y_train),
                     ("x_eval", self.x_eval), ("y_eval", self.y_eval))
            for label, tensor in parts:
                if label.startswith("x_"):
                    _hash_images(digest, label, tensor)
                else:
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
        Both splits as (N, C, H, W) images (uint8 pixels; digits float32 in [0, 1]) with int64 labels.

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
    from sweep.formats import LOADERS  # the readers of each format import this module

    data = LOADERS[cfg.name](cfg)
    x_train, y_train = _subset(data.x_train, data.y_train, cfg.n_train, cfg.subset_seed, "n_train")
    x_eval, y_eval = _subset(data.x_eval, data.y_eval, cfg.n_eval, cfg.subset_seed, "n_eval")
    return ImageData(data.name, x_train, y_train, x_eval, y_eval, data.n_classes)


def _to(tensor: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """A batch of images as float32 in [0, 1]: uint8 pixels / 255; float images as they are."""
    return x.to(torch.float32).div_(PIXEL_MAX) if x.dtype == torch.uint8 else x


def _hash_images(digest: hashlib._Hash, label: str, x: torch.Tensor, chunk: int = 4096) -> None:
    """`_hash_tensor` of as_unit(x), fed in chunks (no float copy of the whole set)."""
    digest.update(f"|{label}:{tuple(x.shape)}:{torch.float32}".encode())
    for i in range(0, len(x), chunk):
        digest.update(as_unit(x[i:i + chunk].detach().cpu()).contiguous().numpy())


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
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W), one vectorised pass (`as_unit` makes a batch float)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def _labels(values: np.ndarray | list[int], n_classes: int, where: str) -> torch.Tensor:
    """int64 label tensor, checked to lie in [0, n_classes)."""
    labels = torch.as_tensor(np.asarray(values), dtype=torch.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{where}: labels must lie in 0..{n_classes - 1}, "
                         f"found {int(labels.min())}..{int(labels.max())}")
    return labels


# --- digits ---------------------------------------------------------------------------------------

