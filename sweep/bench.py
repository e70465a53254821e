"""Training-speed benchmark (figures printed, never asserted): `python -m sweep.bench`.

1. The demo model (MLP on Fashion-MNIST 28x28, batch as in configs/demo_fashion_mnist.yaml) on the
   CPU: epoch time and samples/s of the protocol's own training epoch (data as one tensor).
2. Where CUDA is present: the CIFAR-100 conv model of configs/cifar100_teacher_search.yaml, once
   with the training split as one tensor on the GPU (how the protocol trains) and once fed by a
   standard torchvision CIFAR100 + DataLoader (ToTensor, shuffling, worker processes, pinned
   memory), same model, objective and batch size; and their ratio. Without CIFAR-100 on disk it
   writes a synthetic one (random pixels, 50k + 10k) in the official pickle layout first: speed
   does not depend on pixel values.
Both paths train the full objective against a random K=100 teacher. Compare figures within one run.
3. `--gpu-report OUT.json [--dry-run]`: the GPU report of sweep/gpu_report.py instead (training, evaluation,
   memory per trial, trials sharing a GPU), written to OUT.json too.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.objective import Objective
from sweep.config import RunConfig, load_config
from sweep.data import DataConfig, ImageData, load_data
from sweep.devices import setup_device
from sweep.formats import cifar_class
from sweep.protocol import new_trial, train_epoch
from teachers.artifact import TeacherArtifact

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def random_teacher(n_train: int, n_eval: int, k: int, seed: int = 0) -> TeacherArtifact:
    """A Dirichlet teacher: the alignment term costs the same as with a searched one."""
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(k, 0.3), size=n_train + n_eval)
    selected = {"k": k, "feasible": True, "covariance_type": "none", "pca_dim": 0, "restart": 0}
    return TeacherArtifact(rows[:n_train], rows[n_train:], selected, [selected], seed, "bench", "bench")


def time_tensor_epochs(cfg: RunConfig, data: ImageData, epochs: int) -> tuple[float, float]:
    """Seconds per epoch and samples/s of the protocol's training epoch (after one warm epoch)."""
    teacher = random_teacher(len(data.x_train), len(data.x_eval), 100 if data.n_classes == 100 else 10)
    trial = new_trial(cfg, "full", 0, data, teacher)
    objective = Objective(cfg.model.recon, cfg.train.alpha_kl, cfg.train.gamma)
    train_epoch(trial, objective)  # warm-up: allocator, cuDNN autotuning (on for CUDA trials), lazy init
    _sync(data.x_train.device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        train_epoch(trial, objective)
    _sync(data.x_train.device)
    per_epoch = (time.perf_counter() - t0) / epochs
    return per_epoch, len(data.x_train) / per_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_synthetic_cifar100(root: Path, n_train: int = 50000, n_test: int = 10000) -> None:
    """Random pixels in the official cifar-100-python pickle layout (train, test, meta)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n).tolist()
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": labels,
                 "coarse_labels": [y // 5 for y in labels]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, f, protocol=2)


class IndexedCIFAR100(torch.utils.data.Dataset):
    """torchvision CIFAR100 with ToTensor that also yields the row index (for the teacher rows)."""

    def __init__(self, cfg: DataConfig) -> None:
        from torchvision import transforms

        # the same torchvision class the protocol's loader uses (md5 check off for synthetic files)
        self.base = cifar_class(cfg)(cfg.root, train=True, download=False, transform=transforms.ToTensor())

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.base[i][0], i


def time_dataloader_epochs(cfg: RunConfig, data: ImageData, data_cfg: DataConfig, epochs: int,
                           workers: int) -> tuple[float, float]:
    """The same training step fed by a standard DataLoader from disk-backed torchvision data
    (`data` only supplies shapes and the device; every batch comes through the loader)."""
    device = data.x_train.device
    teacher = random_teacher(len(data.x_train), len(data.x_eval), 100)
    trial = new_trial(cfg, "full", 0, data, teacher)
    objective = Objective(cfg.model.recon, cfg.train.alpha_kl, cfg.train.gamma)
    loader = torch.utils.data.DataLoader(IndexedCIFAR100(data_cfg), batch_size=cfg.train.batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=True,
                                         persistent_workers=workers > 0)

    def epoch() -> None:
        for x, idx in loader:
            x, idx = x.to(device, non_blocking=True), idx.to(device, non_blocking=True)
            terms = objective(trial.model, x, trial.targets[idx], trial.lam, trial.step)
            trial.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            trial.optimizer.step()

    epoch()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    _sync(device)
    per_epoch = (time.perf_counter() - t0) / epochs
    return per_epoch, len(data.x_train) / per_epoch


def bench_cpu(epochs: int) -> None:
    cfg = load_config(CONFIGS / "demo_fashion_mnist.yaml", ["train.device=cpu"])
    try:
        data = load_data(cfg.data)
        what = f"Fashion-MNIST {len(data.x_train)} images"
    except FileNotFoundError:  # still a 28x28 grey tensor of the demo's size
        n = cfg.data.n_train or 60000
        data = ImageData("synthetic", torch.rand(n, 1, 28, 28), None, torch.rand(500, 1, 28, 28), None, 0)
        what = f"synthetic 28x28 ({n} images; Fashion-MNIST not installed)"
    per_epoch, rate = time_tensor_epochs(cfg, data, epochs)
    print(f"cpu  demo MLP    {what}, batch {cfg.train.batch_size}, {torch.get_num_threads()} threads: "
          f"{per_epoch:.3f} s/epoch, {rate:,.0f} samples/s")


def bench_gpu(epochs: int, root: Path | None, workers: int) -> None:
    device = torch.device("cuda")
    setup_device(device, deterministic=False)  # TF32 and cudnn.benchmark, as a CUDA trial has them
    cfg = load_config(CONFIGS / "cifar100_teacher_search.yaml", ["train.device=cuda"])
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = Path(tmp)
            write_synthetic_cifar100(root)
        data_cfg = DataConfig(name="cifar100", root=str(root), verify=False)  # speed only: no md5 pass
        data = load_data(data_cfg).to(device)
        gpu_epoch, gpu_rate = time_tensor_epochs(cfg, data, epochs)
        dl_epoch, dl_rate = time_dataloader_epochs(cfg, data, data_cfg, epochs, workers)
    name = torch.cuda.get_device_name(device)
    print(f"gpu  CIFAR-100 conv ({name}), batch {cfg.train.batch_size}, {len(data.x_train)} images:")
    print(f"     data as one GPU tensor        : {gpu_epoch:.3f} s/epoch, {gpu_rate:,.0f} samples/s")
    print(f"     torchvision DataLoader ({workers} workers): {dl_epoch:.3f} s/epoch, {dl_rate:,.0f} samples/s")
    print(f"     ratio (GPU tensor / DataLoader samples/s): {gpu_rate / dl_rate:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    p.add_argument("--cifar-root", type=Path, help="real CIFAR-100 root (default: synthetic files)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--gpu-report", type=Path, metavar="OUT.json",
                   help="instead: the GPU report (sweep/gpu_report.py), its figures also written to OUT.json")
    p.add_argument("--dry-run", action="store_true", help="with --gpu-report: every code path at toy sizes on the CPU")
    args = p.parse_args()
    if args.gpu_report is not None or args.dry_run:
        from sweep.gpu_report import run

        if args.gpu_report is None:
            p.error("--dry-run goes with --gpu-report OUT.json")
        sys.exit(run(args.gpu_report, args.dry_run))
    if not args.skip_cpu:
        bench_cpu(args.epochs)
    if torch.cuda.is_available():
        bench_gpu(args.epochs, args.cifar_root, args.workers)
    else:
        print("gpu  no CUDA device: GPU figures skipped")


if __name__ == "__main__":
    main()
