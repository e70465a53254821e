"""Data sets and warm-ups in Ray's object store: a cache that trials read instead of the disk.

The data sets go into the object store once, through tune.with_parameters (`payloads`), and a
trial rebuilds its ImageData over the read-only arrays (zero-copy). A finished warm-up's state and
teacher are read back from storage (hash-checked) and put into the object store once by the driver
(`publish`), which owns them: they live on the driver's node and survive the loss of any other
node. A `WarmupStore` actor, also placed on the driver's node and restarted if it dies, maps
warm-up ids to those objects, so every downstream trial of a warm-up reads the same objects.

Storage stays the source of truth: a trial that finds nothing published (the store restarted and
lost its map, an object was lost with a node, a resumed sweep on a new Ray) reads its warm-up
from storage instead (`fetch`), every hash check applied, and says so.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sweep.checks import data_key
from sweep.config import RunConfig
from sweep.data import ImageData
from sweep.stage import Warmup, read_warmup
from sweep.spec import TrialSpec
from sweep.storage import Storage

ARRAYS = ("x_train", "y_train", "x_eval", "y_eval")
FETCH_TIMEOUT_S = 60.0


def payloads(datasets: dict[str, ImageData]) -> dict[str, dict[str, Any]]:
    """Numpy arrays (zero-copy from the object store) and the fingerprint (computed once here) of
    every data set, by `data_key`."""
    return {key: {k: None if getattr(d, k) is None else getattr(d, k).numpy() for k in ARRAYS}
            | {"name": d.name, "n_classes": d.n_classes, "fingerprint": d.fingerprint()}
            for key, d in datasets.items()}


def data_from(payloads: dict[str, dict[str, Any]], cfg: RunConfig, device: torch.device) -> ImageData:
    """The trial's ImageData over the object store's read-only arrays (training never writes them)."""
    payload = payloads[data_key(cfg.data)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: None if payload[k] is None else torch.from_numpy(payload[k]) for k in ARRAYS}
    data = ImageData(payload["name"], n_classes=payload["n_classes"], **tensors)
    object.__setattr__(data, "_fingerprint", payload["fingerprint"])
    return data.to(device) if device.type != "cpu" else data


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class WarmupStore:
    """Warm-up id -> [object reference] of its published Warmup."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef] = {}

    def put(self, key: str, boxed: list[ray.ObjectRef]) -> None:
        self._refs[key] = boxed[0]  # boxed, so that Ray hands over the reference, not the value

    def get(self, key: str) -> list[ray.ObjectRef | None]:
        return [self._refs.get(key)]

    def drop(self, key: str) -> None:
        """Forget a warm-up whose trials have all ended (its objects are freed with the reference)."""
        self._refs.pop(key, None)


def store_name(storage: Storage) -> str:
    """The sweep's store: one per sweep location."""
    return "certsweep-warmups-" + hashlib.sha256(storage.uri.encode()).hexdigest()[:12]


def open_store(storage: Storage) -> Any:
    """Create the sweep's WarmupStore on this (the driver's) node; the caller keeps the handle."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return WarmupStore.options(name=store_name(storage), get_if_exists=True, scheduling_strategy=here).remote()


def publish(store: str, warm: Warmup) -> None:
    """Put a warm-up into the object store once (owned by this process), under its id."""
    ray.get(ray.get_actor(store).put.remote(warm.trial, [ray.put(warm)]), timeout=FETCH_TIMEOUT_S)


def drop(store: str, warm_id: str) -> None:
    ray.get_actor(store).drop.remote(warm_id)


def fetch(store: str, spec: TrialSpec, cfg: RunConfig, storage: Storage, fingerprint: str,
          log: Callable[[str], None] = print) -> Warmup:
    """The warm-up a trial starts from: the published one, else (nothing published, or the store or
    the object lost) the one in storage, hash-checked."""
    try:
        (ref,) = ray.get(ray.get_actor(store).get.remote(spec.warm), timeout=FETCH_TIMEOUT_S)
        if ref is not None:
            return ray.get(ref, timeout=FETCH_TIMEOUT_S)
        why = "it is not published"
    except (ray.exceptions.RayError, ValueError) as err:  # ValueError: no such actor
        why = f"the object store failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    log(f"{spec.trial}: reading warm-up {spec.warm} from storage: {why}")
    return read_warmup(cfg, spec, storage, fingerprint)
