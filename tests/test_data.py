"""Tests of sweep.data: tiny files in each real on-disk format, loaded through load_data."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweep.data import FASHION_MNIST_ROOT, DataConfig, DataNotFoundError, ImageData, as_unit, load_data

# --- MNIST / Fashion-MNIST (IDX) -------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0800 | ndim, big-endian dims, then the data."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = _idx_bytes(array)
    target = path.with_name(path.name + ".gz") if compress else path
    target.write_bytes(gzip.compress(data) if compress else data)
    return target


def _fmnist_arrays() -> dict[str, np.ndarray]:
    """6 train and 4 eval images whose pixels all differ from their neighbours, with labels."""
    pixels = (np.arange(10 * 28 * 28) % 251).astype(np.uint8).reshape(10, 28, 28)
    return {"train-images-idx3-ubyte": pixels[:6], "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9, 5]),
            "t10k-images-idx3-ubyte": pixels[6:], "t10k-labels-idx1-ubyte": np.array([7, 8, 9, 0])}


def _write_fmnist(root: Path, compress: bool = True) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = _fmnist_arrays()
    for stem, array in arrays.items():
        _write_idx(root / stem, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_exact_values(tmp_path: Path, compress: bool) -> None:
    arrays = _write_fmnist(tmp_path, compress)
    data = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert data.shape == (1, 28, 28) and data.n_classes == 10
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_eval.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64  # the files' bytes, 1/4 of float32
    assert torch.equal(data.x_train, torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1))
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.equal(as_unit(data.x_train), expected)  # each batch: the float values a float copy held
    assert as_unit(data.x_eval)[2, 0, 3, 4].item() == pytest.approx(((8 * 784 + 3 * 28 + 4) % 251) / 255)
    assert data.y_train.tolist() == [0, 1, 2, 3, 9, 5]
    assert data.y_eval.tolist() == [7, 8, 9, 0]


def test_fashion_mnist_truncated_file_names_the_file(tmp_path: Path) -> None:
    _write_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(_fmnist_arrays()["train-images-idx3-ubyte"])[:-10]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_broken_gzip_and_wrong_magic(tmp_path: Path) -> None:
    _write_fmnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-8])  # cut inside the gzip stream
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    # An image file where a label file belongs: magic 0x803, not 0x801.
    images = _fmnist_arrays()["t10k-images-idx3-ubyte"]
    labels.write_bytes(gzip.compress(_idx_bytes(images)))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*expected 0x00000801"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_label_count_mismatch(tmp_path: Path) -> None:
    _write_fmnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 3]), compress=True)
    with pytest.raises(ValueError, match="6 images but .* 3 labels"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_missing_dir(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist") as info:
        load_data(DataConfig(name="fashion_mnist", root=str(root)))
    assert str(root) in str(info.value) and "t10k-labels-idx1-ubyte" in str(info.value)


def test_mnist_tiny_idx_files(tmp_path: Path) -> None:
    arrays = _fmnist_arrays()  # MNIST shares the format: 28x28 bytes, labels 0..9
    for stem, array in arrays.items():  # images gzipped, labels not: each file is found on its own
        _write_idx(tmp_path / stem, array, compress="images" in stem)
    data = load_data(DataConfig(name="mnist", root=str(tmp_path)))
    assert data.name == "mnist" and data.shape == (1, 28, 28) and data.n_classes == 10
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_eval.shape == (4, 1, 28, 28)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.equal(as_unit(data.x_eval), expected)
    assert data.y_train.tolist() == [0, 1, 2, 3, 9, 5] and data.y_eval.tolist() == [7, 8, 9, 0]


def test_mnist_missing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default root data/mnist is relative to the working directory
    with pytest.raises(DataNotFoundError, match="^MNIST not found") as info:
        load_data(DataConfig(name="mnist"))
    message = str(info.value)
    assert "in data/mnist" in message and "four official IDX files" in message
    assert all(stem in message for stem in _fmnist_arrays())
    assert "apt-get" not in message  # no Debian package ships MNIST here


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_installed_copy() -> None:
    data = load_data(DataConfig(name="fashion_mnist", n_train=100, n_eval=50))
    assert data.x_train.shape == (100, 1, 28, 28) and data.x_eval.shape == (50, 1, 28, 28)
    assert data.shape == (1, 28, 28)
    unit = as_unit(data.x_train)
    assert data.x_train.dtype == torch.uint8 and 0.0 <= unit.min() <= unit.max() <= 1.0
    assert set(data.y_train.tolist()) <= set(range(10))


# --- CIFAR ----------------------------------------------------------------------------------------
# torchvision unpickles with encoding="latin1", which turns the Python 2 str keys of the official
# files into str; a Python 3 pickle therefore needs str keys ("data"), not bytes, to load the same way.


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(n: int, marker: int) -> np.ndarray:
    """(n, 3072) uint8 zeros but one pixel per image: image i has value marker + i at
    (c, h, w) = (1, 5, 7), i.e. the G plane (offset 1024), row 5, column 7."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    rows[:, 1024 + 5 * 32 + 7] = marker + np.arange(n)
    return rows


def _write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):  # two images per training batch, labels 2b-2 and 2b-1 (mod 10)
        _pickle(folder / f"data_batch_{b}",
                {"data": _cifar_rows(2, 10 * b), "labels": [(2 * b - 2) % 10, (2 * b - 1) % 10],
                 "batch_label": f"training batch {b} of 5"})
    _pickle(folder / "test_batch", {"data": _cifar_rows(3, 200), "labels": [9, 8, 7]})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})


def _write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "train", {"data": _cifar_rows(4, 50), "fine_labels": [0, 42, 99, 7],
                               "coarse_labels": [0, 1, 2, 3]})
    _pickle(folder / "test", {"data": _cifar_rows(2, 100), "fine_labels": [55, 3], "coarse_labels": [4, 5]})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"c{i}" for i in range(20)]})


def test_cifar10_tiny_pickles(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path), verify=False))
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_eval.shape == (3, 3, 32, 32)
    assert data.shape == (3, 32, 32) and data.n_classes == 10
    # batch 3's second image (row 5) carries 30 + 1 at G, row 5, column 7 and nothing else
    assert data.x_train[5, 1, 5, 7].item() == 31 and data.x_train.dtype == torch.uint8
    assert as_unit(data.x_train[5]).sum().item() == pytest.approx(31 / 255)
    assert as_unit(data.x_eval)[2, 1, 5, 7].item() == pytest.approx(202 / 255)
    assert data.y_train.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert data.y_eval.tolist() == [9, 8, 7]


def test_cifar100_tiny_pickles_fine_labels(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    data = load_data(DataConfig(name="cifar100", root=str(tmp_path), verify=False))
    assert data.x_train.shape == (4, 3, 32, 32) and data.x_eval.shape == (2, 3, 32, 32)
    assert data.n_classes == 100
    assert as_unit(data.x_train)[3, 1, 5, 7].item() == pytest.approx(53 / 255)
    assert data.x_train[3, 0, 5, 7].item() == 0 and data.x_train[3, 1, 7, 5].item() == 0
    assert data.y_train.tolist() == [0, 42, 99, 7] and data.y_eval.tolist() == [55, 3]


@pytest.mark.parametrize(("name", "writer"), [("cifar10", _write_cifar10), ("cifar100", _write_cifar100)])
def test_cifar_verify_rejects_non_official_files(tmp_path: Path, name: str, writer) -> None:
    writer(tmp_path)
    with pytest.raises(DataNotFoundError, match="corrupted"):
        load_data(DataConfig(name=name, root=str(tmp_path), verify=True))


@pytest.mark.parametrize(("name", "folder", "archive"),
                         [("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
                          ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz")])
def test_cifar_missing_folder(tmp_path: Path, name: str, folder: str, archive: str) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_data(DataConfig(name=name, root=str(tmp_path), verify=False))
    message = str(info.value)
    assert str(tmp_path / folder) in message and archive in message and "data.download" in message


def test_cifar_malformed_pickle_is_value_error(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    # bytes keys, as a Python 3 pickle of b"data" would have: torchvision looks up "data"
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _cifar_rows(1, 0), b"labels": [0]})
    with pytest.raises(ValueError, match="cifar-10-batches-py.*official CIFAR pickle"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path), verify=False))


def test_cifar_missing_meta_is_not_found(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DataNotFoundError, match="batches.meta"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path), verify=False))


# --- Tiny-ImageNet --------------------------------------------------------------------------------

_RED, _BLUE, _GREEN, _GREY = (200, 30, 40), (20, 40, 220), (30, 180, 60), (128, 128, 128)


def _solid(path: Path, colour: tuple[int, int, int], size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="JPEG", quality=95)


def _write_tiny(root: Path) -> Path:
    """Two classes listed unsorted in wnids.txt, two training images each, two val images
    (one 32x32, which the loader must resize)."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("n0200\nn0100\n")
    for i in range(2):
        _solid(base / "train" / "n0100" / "images" / f"n0100_{i}.JPEG", _RED)
        _solid(base / "train" / "n0200" / "images" / f"n0200_{i}.JPEG", _BLUE)
    _solid(base / "val" / "images" / "val_0.JPEG", _GREEN)
    _solid(base / "val" / "images" / "val_1.JPEG", _GREY, size=32)
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn0200\t0\t0\t63\t63\nval_1.JPEG\tn0100\t1\t2\t30\t40\n")
    return base


def _colour(rgb: tuple[int, int, int]) -> torch.Tensor:
    """(3, 1, 1) float colour in [0, 1], broadcastable over an image."""
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255


def test_tiny_imagenet_labels_and_pixels(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    data = load_data(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    assert data.x_train.shape == (4, 3, 64, 64) and data.x_eval.shape == (2, 3, 64, 64)
    assert data.n_classes == 2
    # sorted wnids: n0100 -> 0, n0200 -> 1, whatever the order in wnids.txt
    assert data.y_train.tolist() == [0, 0, 1, 1] and data.y_eval.tolist() == [1, 0]
    tol = 2 / 255  # JPEG is lossy, but a solid colour survives almost exactly
    assert (as_unit(data.x_train[0]) - _colour(_RED)).abs().max() <= tol
    assert (as_unit(data.x_train[3]) - _colour(_BLUE)).abs().max() <= tol
    assert (as_unit(data.x_eval[0]) - _colour(_GREEN)).abs().max() <= tol
    assert (as_unit(data.x_eval[1]) - _colour(_GREY)).abs().max() <= tol


def test_tiny_imagenet_unknown_wnid(tmp_path: Path) -> None:
    base = _write_tiny(tmp_path)
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn0200\t0\t0\t1\t1\nval_1.JPEG\tn0999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="line 2"):
        load_data(DataConfig(name="tiny_imagenet", root=str(tmp_path)))


def test_tiny_imagenet_missing_val_image(tmp_path: Path) -> None:
    base = _write_tiny(tmp_path)
    (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(ValueError, match="val_1.JPEG"):
        load_data(DataConfig(name="tiny_imagenet", root=str(tmp_path)))


def test_tiny_imagenet_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200"):
        load_data(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    base = _write_tiny(tmp_path)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        load_data(DataConfig(name="tiny_imagenet", root=str(tmp_path)))


# --- digits, subsets, fingerprint, config ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_data(DataConfig(name="digits"))


def test_digits(digits: ImageData) -> None:
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_eval.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32
    assert max(digits.x_train.max().item(), digits.x_eval.max().item()) == 1.0
    assert digits.x_train.min().item() == 0.0
    assert set(digits.y_train.tolist()) == set(range(10)) and digits.y_eval.max().item() <= 9
    assert digits.n_classes == 10 and digits.shape == (1, 8, 8)


def test_digits_are_what_load_digits_gives_read_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    from sweep import formats

    bunch = load_digits()
    images, target = formats.digits_arrays()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)
    # a driver that reads the digits does not import scikit-learn (its own process: this one has)
    code = ("import sys; from sweep.formats import digits_arrays; digits_arrays(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])
    # a scikit-learn that keeps the file elsewhere: its API instead
    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name: None)
    images, target = formats.digits_arrays()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)


def test_subsets_fixed_and_seeded(digits: ImageData) -> None:
    first = load_data(DataConfig(name="digits", n_train=5, n_eval=3))
    again = load_data(DataConfig(name="digits", n_train=5, n_eval=3))
    other = load_data(DataConfig(name="digits", n_train=5, n_eval=3, subset_seed=1))
    assert first.x_train.shape == (5, 1, 8, 8) and first.x_eval.shape == (3, 1, 8, 8)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_train, again.y_train)
    assert not torch.equal(first.x_train, other.x_train)
    # the subset is made of rows of the full split, in their original (sorted) order
    rows = [int((digits.x_train == row).flatten(1).all(1).nonzero()[0]) for row in first.x_train]
    assert rows == sorted(rows)


def test_subset_too_large() -> None:
    with pytest.raises(ValueError, match="2000.*1437"):
        load_data(DataConfig(name="digits", n_train=2000))
    with pytest.raises(ValueError, match="n_eval.*361.*360"):
        load_data(DataConfig(name="digits", n_eval=361))


def test_fingerprint(digits: ImageData) -> None:
    same = load_data(DataConfig(name="digits"))
    assert digits.fingerprint() == same.fingerprint()
    assert len(digits.fingerprint()) == 64
    x_changed = digits.x_train.clone()
    x_changed[7, 0, 3, 3] += 1 / 16
    changed = ImageData("digits", x_changed, digits.y_train, digits.x_eval, digits.y_eval, 10)
    assert changed.fingerprint() != digits.fingerprint()
    unlabelled = ImageData("digits", digits.x_train, None, digits.x_eval, None, 0)
    assert unlabelled.fingerprint() != digits.fingerprint()
    moved = same.to("cpu")
    assert moved.fingerprint() == digits.fingerprint()
    assert torch.equal(moved.x_eval, digits.x_eval)
    # the copy hashes its own tensors when the original had no cached value
    fresh = ImageData("digits", digits.x_train, digits.y_train, digits.x_eval, digits.y_eval, 10)
    assert fresh.to(torch.device("cpu")).fingerprint() == digits.fingerprint()


def test_config_problems() -> None:
    assert DataConfig().problems() == []
    bad_name = DataConfig(name="svhn").problems()
    assert len(bad_name) == 1 and bad_name[0].startswith("data.name:") and "fashion_mnist" in bad_name[0]
    negative = DataConfig(n_train=-1, n_eval=-2).problems()
    assert [p.split(":")[0] for p in negative] == ["data.n_train", "data.n_eval"]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, cifar10, cifar100, tiny_imagenet"):
        load_data(DataConfig(name="svhn"))


def test_images_are_held_at_their_own_size_and_keep_their_fingerprint(tmp_path: Path) -> None:
    """uint8 in memory (1/4 of float32's bytes); a copy held as the floats of before has the same
    fingerprint (teacher caches written then still match) and the same values per batch."""
    _write_fmnist(tmp_path, compress=False)
    data = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    floats = ImageData(data.name, as_unit(data.x_train), data.y_train, as_unit(data.x_eval), data.y_eval,
                       data.n_classes)
    assert data.x_train.element_size() * 4 == floats.x_train.element_size()
    assert data.fingerprint() == floats.fingerprint()
    assert torch.equal(as_unit(data.x_train[2:5]), floats.x_train[2:5]) and as_unit(floats.x_eval) is floats.x_eval
