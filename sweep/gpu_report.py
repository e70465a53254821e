"""The GPU report (`python -m sweep.bench --gpu-report OUT.json [--dry-run]`): the figures a GPU pool
is planned with, measured in one run of about 3-5 minutes on one GPU, with torch alone (no Ray: the
machine it is prepared for has torch only). Synthetic images of each data set's shape: speed and
memory do not depend on pixel values.

  training      img/s of the protocol's training step (full objective against a K-row teacher) for
                the demo MLP (Fashion-MNIST shape) and the CIFAR-100 conv, at batch 128 and 512,
                with the data as one tensor on the device (how certsweep trains) and fed by a
                DataLoader from host memory, in fp32 and bf16 (train.precision)
  evaluation    seconds of one report point's evaluation (certificate, probe) and of the post-hoc
                head fit at a trial's end, per data set
  memory        peak GPU memory of one trial (data on the device, training, evaluation) for
                Fashion-MNIST, CIFAR-100 and Tiny-ImageNet shapes: what sets sweep.gpus_per_trial
  sharing       1, 2 and 4 processes training the CIFAR-100 conv on one GPU at once: total img/s and
                the memory each held (how much packing trials onto a GPU gains)

It prints a table and writes every figure to OUT.json. Without CUDA it exits 2 with one line;
`--dry-run` runs every code path at toy sizes on the CPU (memory is then the process's peak RSS),
so the script is known to work before any GPU time is spent on it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.objective import Objective
from sweep.bench import random_teacher
from sweep.config import RunConfig, load_config
from sweep.data import ImageData, as_unit
from sweep.devices import setup_device
from sweep.metrics import encode_all, evaluate, posthoc_certificate
from sweep.protocol import new_trial, train_epoch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MODELS = {"mlp": "demo_fashion_mnist.yaml", "conv": "cifar100_teacher_search.yaml"}
"""The two backbones timed for training: the demo's MLP and the CIFAR-100 conv."""
DATASETS = {  # shape, train rows, eval rows, classes / K, config of its model
    "fashion_mnist": ((1, 28, 28), 60000, 10000, 10, "demo_fashion_mnist.yaml"),
    "cifar100": ((3, 32, 32), 50000, 10000, 100, "cifar100_teacher_search.yaml"),
    "tiny_imagenet": ((3, 64, 64), 100000, 10000, 200, "tiny_imagenet_fixed_target.yaml"),
}


@dataclasses.dataclass
class Sizes:
    """How much each measurement does: the real sizes on a GPU, toy ones for --dry-run."""

    steps: int = 60            # timed training steps per measurement (after `warm` untimed ones)
    warm: int = 10
    batches: tuple[int, ...] = (128, 512)
    rows_scale: float = 1.0    # of each data set's real row counts (memory, evaluation)
    share_seconds: float = 20.0  # timed training per process when processes share the GPU
    processes: tuple[int, ...] = (1, 2, 4)
    workers: int = 4           # DataLoader worker processes


DRY = Sizes(steps=3, warm=1, batches=(8, 16), rows_scale=0.004, share_seconds=1.0, processes=(1, 2), workers=0)


def model_config(name: str, device: torch.device, precision: str, batch: int) -> RunConfig:
    return load_config(CONFIGS / name, [f"train.device={device.type}", f"train.precision={precision}",
                                        f"train.batch_size={batch}"])


def synthetic(shape: tuple[int, int, int], n_train: int, n_eval: int, classes: int, device: torch.device) -> ImageData:
    g = torch.Generator().manual_seed(0)
    def pixels(n: int) -> torch.Tensor:  # uint8, as the data sets are held (sweep/data.py)
        return torch.randint(256, (n, *shape), generator=g, dtype=torch.uint8)

    x_train, y_train = pixels(n_train), torch.randint(classes, (n_train,), generator=g)
    x_eval, y_eval = pixels(n_eval), torch.randint(classes, (n_eval,), generator=g)
    data = ImageData("synthetic", x_train, y_train, x_eval, y_eval, classes)
    object.__setattr__(data, "_fingerprint", "synthetic")  # no hash over gigabytes of random pixels
    return data.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory since the last reset, or (on the CPU) the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_training(model: str, batch: int, feed: str, precision: str, device: torch.device, sizes: Sizes) -> dict:
    """img/s of `sizes.steps` training steps of one backbone, data on the device or from a DataLoader."""
    cfg = model_config(MODELS[model], device, precision, batch)
    shape = DATASETS["fashion_mnist" if model == "mlp" else "cifar100"][0]
    k = 10 if model == "mlp" else 100
    n = batch * (sizes.steps + sizes.warm)
    host = synthetic(shape, n, batch, k, torch.device("cpu"))
    data = host.to(device) if feed == "tensor" else dataclasses.replace(host, x_train=host.x_train[:batch],
                                                                          y_train=host.y_train[:batch]).to(device)
    trial = new_trial(cfg, "full", 0, data, random_teacher(n, batch, k))
    targets = trial.targets  # (n, K) on the device: the teacher rows of every image, however it is fed
    objective = Objective(cfg.model.recon, cfg.train.alpha_kl, cfg.train.gamma)
    if feed == "tensor":
        batches = ((data.x_train[i:i + batch], targets[i:i + batch]) for i in range(0, n, batch))
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(host.x_train, torch.arange(n)),
                                             batch_size=batch, shuffle=True, num_workers=sizes.workers,
                                             pin_memory=device.type == "cuda")
        batches = ((x.to(device, non_blocking=True), targets[i.to(device)]) for x, i in loader)
    t0 = None
    for step, (x, t) in enumerate(batches):
        if step == sizes.warm:
            sync(device)
            t0 = time.perf_counter()
        terms = objective(trial.model, as_unit(x), t, trial.lam, trial.step, trial.generator)
        trial.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        trial.optimizer.step()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"model": model, "batch": batch, "feed": feed, "precision": precision, "steps": sizes.steps,
            "img_per_s": batch * sizes.steps / seconds}


def measure_dataset(name: str, device: torch.device, sizes: Sizes) -> dict:
    """One trial's peak memory (its data on the device, training steps, a report point's evaluation)
    and the seconds of that evaluation and of the post-hoc fit at its end."""
    shape, n_train, n_eval, k, config = DATASETS[name]
    n_train, n_eval = max(64, int(n_train * sizes.rows_scale)), max(64, int(n_eval * sizes.rows_scale))
    reset_peak(device)
    cfg = load_config(CONFIGS / config, [f"train.device={device.type}"])
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, probe_samples=min(2000, n_train)))
    data = synthetic(shape, n_train, n_eval, k, device)
    teacher = random_teacher(n_train, n_eval, k)
    trial = new_trial(cfg, "full", 0, data, teacher)
    steps = dataclasses.replace(data, x_train=data.x_train[:cfg.train.batch_size * (sizes.warm + 2)])
    trial.data = steps
    train_epoch(trial, trial.objective())  # a few steps: optimizer state and activations allocated
    trial.data = data
    sync(device)
    t0 = time.perf_counter()
    evaluate(trial.model, data, teacher, cfg.eval, probe=True, posthoc=False)
    sync(device)
    eval_s = time.perf_counter() - t0
    mu_train, _ = encode_all(trial.model, data.x_train, cfg.eval.batch_size)
    mu_eval, _ = encode_all(trial.model, data.x_eval, cfg.eval.batch_size)
    sync(device)
    t0 = time.perf_counter()
    posthoc_certificate(mu_train, teacher.targets_train, mu_eval, teacher.targets_eval, cfg.eval.tau)
    sync(device)
    posthoc_s = time.perf_counter() - t0
    out = {"dataset": name, "shape": list(shape), "n_train": n_train, "n_eval": n_eval, "k": k,
           "data_bytes": sum(x.numel() * x.element_size() for x in (data.x_train, data.x_eval)), "eval_s": eval_s,
           "posthoc_s": posthoc_s,
           "peak_bytes": peak_bytes(device)}
    del trial, data, steps, mu_train, mu_eval
    return out


def _share_worker(index: int, device_type: str, seconds: float, batch: int, start, results) -> None:
    """One process of the sharing measurement: trains the CIFAR-100 conv for `seconds` once all have started."""
    torch.set_num_threads(1)
    device = torch.device(device_type)
    cfg = model_config(MODELS["conv"], device, "fp32", batch)
    n = batch * 8
    data = synthetic(DATASETS["cifar100"][0], n, batch, 100, device)
    trial = new_trial(cfg, "full", index, data, random_teacher(n, batch, 100))
    objective = trial.objective()
    train_epoch(trial, objective)  # warm: CUDA context, cuDNN, allocator
    reset_peak(device)
    start.wait()
    sync(device)
    t0, images = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        train_epoch(trial, objective)
        images += n
    sync(device)
    results.put({"index": index, "img_per_s": images / (time.perf_counter() - t0), "peak_bytes": peak_bytes(device)})


def measure_sharing(processes: int, device: torch.device, sizes: Sizes) -> dict:
    """`processes` trainings on one device at once (spawned: each its own CUDA context)."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(processes), ctx.Queue()
    batch = sizes.batches[0]
    workers = [ctx.Process(target=_share_worker, args=(i, device.type, sizes.share_seconds, batch, start, results))
               for i in range(processes)]
    for w in workers:
        w.start()
    got = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    return {"processes": processes, "batch": batch, "total_img_per_s": sum(g["img_per_s"] for g in got),
            "peak_bytes_each": [g["peak_bytes"] for g in sorted(got, key=lambda g: g["index"])]}


def report(out: Path, dry_run: bool) -> dict[str, Any]:
    device = torch.device("cpu" if dry_run else "cuda")
    sizes = DRY if dry_run else Sizes()
    setup_device(device, deterministic=False)  # TF32 and cudnn.benchmark, as a trial has them
    t0 = time.perf_counter()
    cuda = device.type == "cuda"
    result: dict[str, Any] = {
        "dry_run": dry_run, "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "memory_kind": "cuda_max_allocated" if cuda else "cpu_max_rss", "sizes": dataclasses.asdict(sizes)}
    result["training"] = [time_training(m, b, f, p, device, sizes) for m in MODELS for b in sizes.batches
                          for f in ("tensor", "dataloader") for p in ("fp32", "bf16")]
    result["datasets"] = [measure_dataset(name, device, sizes) for name in DATASETS]
    result["sharing"] = [measure_sharing(p, device, sizes) for p in sizes.processes]
    result["seconds"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def table(result: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [f"GPU report: {result['device']} (torch {result['torch']}, CUDA {result['cuda']})"
             f"{'  [dry run: toy sizes on the CPU]' if result['dry_run'] else ''}", "",
             "training img/s        batch  tensor fp32  tensor bf16  loader fp32  loader bf16"]
    by = {(r["model"], r["batch"], r["feed"], r["precision"]): r["img_per_s"] for r in result["training"]}
    for model in MODELS:
        for batch in result["sizes"]["batches"]:
            cells = [by[(model, batch, f, p)] for f in ("tensor", "dataloader") for p in ("fp32", "bf16")]
            lines.append(f"  {model:<19} {batch:>6}" + "".join(f"{c:>13,.0f}" for c in cells))
    lines += ["", f"one trial             rows (train/eval)  data MiB  peak MiB ({result['memory_kind']})"
                  "  eval s  post-hoc s"]
    for d in result["datasets"]:
        lines.append(f"  {d['dataset']:<19} {d['n_train']:>7}/{d['n_eval']:<9} {d['data_bytes'] / mib:>8.0f}  "
                     f"{d['peak_bytes'] / mib:>10.0f}{'':>22}{d['eval_s']:>6.2f}  {d['posthoc_s']:>10.2f}")
    lines += ["", "sharing one GPU       processes  total img/s  peak MiB each"]
    for s in result["sharing"]:
        each = ", ".join(f"{b / mib:.0f}" for b in s["peak_bytes_each"])
        lines.append(f"  CIFAR-100 conv b{s['batch']:<4} {s['processes']:>9}  {s['total_img_per_s']:>11,.0f}  {each}")
    lines.append(f"\n{result['seconds']:.0f} s in all")
    return "\n".join(lines)


def run(out: Path, dry_run: bool) -> int:
    """The command's body: exit status 2 (one line) without CUDA unless --dry-run."""
    if not dry_run and not torch.cuda.is_available():
        print("error: --gpu-report needs a CUDA device and torch sees none; --dry-run runs every code path at toy "
              "sizes on the CPU", file=sys.stderr)
        return 2
    print(table(report(out, dry_run)))
    print(f"wrote {out}")
    return 0
