"""Where a trial runs and how its device is set up (imports no Ray: the Ray trainable passes in what
Ray assigned it).

  trial_device    under Ray a trial uses CUDA only when Ray assigned it a GPU (`ray.get_gpu_ids()`),
                  and then device 0 of its visible set (Ray sets CUDA_VISIBLE_DEVICES to its GPUs);
                  else the CPU, whatever the node has: a trial on a GPU node given no GPU would
                  otherwise land on physical GPU 0, unmetered. In one process (`--sequential`)
                  train.device is taken as named (auto: cuda when present).
  prepare_gpu     a trial given a fraction of a GPU (sweep.gpus_per_trial 0.25: four per GPU) keeps
                  to that share of its memory (torch.cuda.set_per_process_memory_fraction); its
                  peak memory is counted from its own start (a reused worker ran others before)
  setup_device    CUDA's fast paths (TF32 matmuls, cudnn.benchmark), or with train.deterministic
                  PyTorch's deterministic algorithms and neither fast path
  peak_memory     the bytes a CUDA trial held at most (placement.json)
  engine_problems / cluster_problems
                  what the Ray engine refuses before any trial runs: a cuda device with no GPU per
                  trial, cuda:N past 0, a cuda device or a GPU per trial on a cluster without GPUs
                  (the cluster's resources, not the driver machine's)
"""

from __future__ import annotations

import os
from typing import Any

import torch

CUBLAS_DETERMINISTIC = ":4096:8"
"""cuBLAS workspace that makes its matmuls deterministic (PyTorch's reproducibility notes)."""


class PlacementError(RuntimeError):
    """A trial asked for a device it was not given."""


def devices_of(cfg: Any) -> list[str]:
    """train.device and every value a grid gives it."""
    return list(dict.fromkeys([cfg.train.device, *cfg.sweep.grid.get("train.device", [])]))


def trial_device(requested: str, gpu_ids: list | None, cuda_available: bool) -> torch.device:
    """The device of one trial.

    Args:
        requested: train.device (auto, cpu, cuda, cuda:N).
        gpu_ids: The GPUs Ray assigned to the trial (`ray.get_gpu_ids()`); None outside Ray.
        cuda_available: Whether torch sees a CUDA device.

    Raises:
        PlacementError: Under Ray, a cuda device for a trial Ray gave no GPU (the engine's pre-run
            check refuses that config first).
    """
    if gpu_ids is None:  # one process: the device as named
        if requested == "auto":
            return torch.device("cuda" if cuda_available else "cpu")
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    if not gpu_ids:
        if requested.startswith("cuda"):
            raise PlacementError(f"train.device {requested!r}, but Ray gave this trial no GPU (sweep.gpus_per_trial)")
        return torch.device("cpu")
    if not cuda_available:  # logical GPUs Ray was told of, none that torch can use
        if requested.startswith("cuda"):
            raise PlacementError(f"train.device {requested!r}: Ray gave this trial GPU {gpu_ids[0]}, but torch sees "
                                 "no CUDA device on this node")
        return torch.device("cpu")
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so its first is device 0; where that is
    # turned off (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) the ids are physical ones
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", 0 if visible else int(gpu_ids[0]))


def prepare_gpu(device: torch.device, share: float) -> None:
    """A trial's start on its GPU: peak statistics reset (a reused worker's earlier trials do not
    count), and a trial on a fraction of a GPU kept to that fraction of the GPU's memory."""
    if device.type != "cuda":
        return
    torch.cuda.reset_peak_memory_stats(device)
    if 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def setup_device(device: torch.device, deterministic: bool) -> None:
    """CUDA's fast paths, or (train.deterministic) deterministic algorithms everywhere: bitwise
    reproducible on one machine and device type, slower on a GPU."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(deterministic)  # also off again: a reused Ray actor runs the next trial
    fast = device.type == "cuda" and not deterministic
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast


def peak_memory(device: torch.device) -> int | None:
    """Bytes of GPU memory the trial held at most (None on the CPU)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def engine_problems(cfg: Any) -> list[str]:
    """What the Ray engine refuses before it starts Ray: a cuda device for trials that ask for no
    GPU, and cuda:N past 0 (a trial sees only the GPU Ray gives it, as cuda:0)."""
    out = []
    for d in devices_of(cfg):
        if d.startswith("cuda") and cfg.sweep.gpus_per_trial == 0:
            out.append(f"train.device: {d!r} but sweep.gpus_per_trial is 0: under Ray a trial gets a GPU only when "
                       "it asks for one (set sweep.gpus_per_trial, e.g. 1 or 0.25, or train.device: auto)")
        elif d.startswith("cuda:") and d != "cuda:0":
            out.append(f"train.device: {d!r}: under Ray a trial uses the GPU Ray assigns it, which it sees as cuda:0; "
                       "name cuda or auto (sweep.gpus_per_trial sets how many trials share a GPU)")
    return out


def engine_notes(cfg: Any) -> list[str]:
    """What the Ray engine says of a device it maps: cuda:0 is each trial's own GPU."""
    return [f"train.device {d!r}: under Ray each trial uses the GPU Ray assigns it, which it sees as cuda:0"
            for d in devices_of(cfg) if d == "cuda:0"]


def cluster_problems(cfg: Any, cluster_gpus: float) -> list[str]:
    """What the Ray engine refuses once it sees the cluster's resources (not the driver machine's)."""
    out = []
    if cfg.sweep.gpus_per_trial > 0 and cluster_gpus < cfg.sweep.gpus_per_trial:
        out.append(f"sweep.gpus_per_trial: {cfg.sweep.gpus_per_trial:g} but the cluster has {cluster_gpus:g} GPUs: "
                   "no trial could start")
    elif cluster_gpus == 0:
        out += [f"train.device: {d!r} but the cluster has no GPU; use auto (a GPU when the cluster has them) or cpu"
                for d in devices_of(cfg) if d.startswith("cuda")]
    return out


def gpus_per_trial(cfg: Any, cluster_gpus: float) -> float:
    """sweep.gpus_per_trial, with -1 (auto) resolved: one GPU per trial when the cluster has GPUs
    and the trials can use one (train.device is not cpu everywhere), else none."""
    if cfg.sweep.gpus_per_trial != -1:
        return cfg.sweep.gpus_per_trial
    uses_gpu = any(d != "cpu" for d in devices_of(cfg))
    return 1.0 if cluster_gpus >= 1 and uses_gpu else 0.0
