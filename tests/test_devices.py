"""Where a trial runs (sweep/devices.py), tested on any machine by simulating what Ray assigns: the
GPU ids, the assigned share and CUDA's presence are monkeypatched, so these tests mean the same on a
CPU machine and on a GPU one. Also checkpoints moved between a GPU and a CPU node: a generator state
of the other device type reseeds with one line, and a checkpoint that does not fit ends the trial
in a clean error, never a spent retry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sweep.__main__ import main
from sweep.checkpoint import load_checkpoint, save_checkpoint
from sweep.config import from_dict
from sweep.devices import PlacementError, cluster_problems, engine_problems, gpus_per_trial, trial_device
from sweep.protocol import new_trial, run_trial
from sweep.spec import TrialSpec
from sweep.stage import run_stage, train_warmup
from sweep.storage import Storage
from tests.conftest import tiny_raw


@pytest.mark.parametrize(("requested", "gpu_ids", "visible", "expected"), [
    ("auto", [], "", "cpu"),            # a GPU node that gave the trial no GPU: never GPU 0
    ("auto", ["3"], "3", "cuda:0"),     # its own GPU, device 0 of the visible set
    ("cuda", ["3"], "3", "cuda:0"),
    ("cuda:0", ["3"], "3", "cuda:0"),
    ("auto", [3], None, "cuda:3"),      # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: physical ids
    ("cpu", ["3"], "3", "cpu"),
])
def test_a_trial_uses_the_gpu_ray_assigned_it_and_else_the_cpu(monkeypatch, requested, gpu_ids, visible,
                                                                 expected) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert trial_device(requested, gpu_ids, cuda_available=True) == torch.device(expected)


def test_outside_ray_the_device_is_taken_as_named_and_cuda_without_a_gpu_is_an_error() -> None:
    assert trial_device("auto", None, cuda_available=False) == torch.device("cpu")
    assert trial_device("auto", None, cuda_available=True) == torch.device("cuda")
    assert trial_device("cuda:1", None, cuda_available=True) == torch.device("cuda:1")
    with pytest.raises(PlacementError, match="Ray gave this trial no GPU"):
        trial_device("cuda", [], cuda_available=True)
    # logical GPUs Ray was told of (ray start --num-gpus) on a node where torch sees none
    assert trial_device("auto", ["0"], cuda_available=False) == torch.device("cpu")


@pytest.mark.parametrize(("gpu_ids", "share", "device", "fraction"), [
    ([], 0.0, "cpu", None), (["0"], 1.0, "cuda:0", None), (["0"], 0.25, "cuda:0", 0.25)])
def test_the_trainable_places_a_trial_on_its_share_of_a_gpu(monkeypatch, gpu_ids, share, device, fraction) -> None:
    """What Ray gives a trial of gpus_per_trial 0, 1 and 0.25, as the trainable reads it."""
    import ray

    from sweep.engine import trainable

    class Context:
        def get_assigned_resources(self) -> dict:
            return {"CPU": 1.0, "GPU": share} if share else {"CPU": 1.0}

    limited, setup = [], []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(ray, "get_runtime_context", Context)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: limited.append((f, str(d))))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: setup.append(("reset", str(d))))
    monkeypatch.setattr(trainable, "setup_device", lambda d, deterministic: setup.append((str(d), deterministic)))
    cfg = from_dict(tiny_raw(device="auto"))
    placed, ids, got_share = trainable.place(cfg)
    assert (str(placed), ids, got_share) == (device, gpu_ids, share)
    assert limited == ([(fraction, device)] if fraction else [])
    assert setup == ([("reset", device)] if gpu_ids else []) + [(device, False)]


def test_gpus_per_trial_and_the_devices_the_ray_engine_refuses() -> None:
    cfg = from_dict(tiny_raw(device="auto"))
    assert gpus_per_trial(cfg, 8) == 1.0 and gpus_per_trial(cfg, 0) == 0.0
    assert gpus_per_trial(from_dict(tiny_raw(device="cpu")), 8) == 0.0  # a CPU trial holds no GPU
    no_gpu = from_dict(tiny_raw(device="cuda") | {"sweep": {"gpus_per_trial": 0.0}})
    (problem,) = engine_problems(no_gpu)
    assert problem.startswith("train.device: 'cuda' but sweep.gpus_per_trial is 0")
    (problem,) = engine_problems(from_dict(tiny_raw(device="cuda:2")))
    assert "which it sees as cuda:0" in problem
    assert engine_problems(from_dict(tiny_raw(device="cuda:0"))) == []
    (problem,) = cluster_problems(from_dict(tiny_raw(device="cuda")), 0)
    assert problem.startswith("train.device: 'cuda' but the cluster has no GPU")
    (problem,) = cluster_problems(from_dict(tiny_raw(device="cpu") | {"sweep": {"gpus_per_trial": 1.0}}), 0)
    assert problem.startswith("sweep.gpus_per_trial: 1 but the cluster has 0 GPUs")
    assert cluster_problems(from_dict(tiny_raw(device="cuda")), 2) == []


def test_cuda_with_no_gpu_per_trial_is_refused_with_one_message(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((Path(__file__).resolve().parent.parent / "configs/smoke_digits.yaml").read_text())
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--set", "train.device=cuda",
                 "--set", "sweep.gpus_per_trial=0"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: train.device: 'cuda' but sweep.gpus_per_trial is 0"), line
    assert not out.exists() and captured.out == ""


@pytest.fixture
def stopped_trial(tiny_cfg, digits, tmp_path: Path):
    """A full trial stopped after its first epoch, as a sweep folder run_stage continues."""
    warm = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    cut = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, epochs=1))
    run_trial(new_trial(cut, "full", 3, digits, warm.teacher, warm.state), tmp_path / "seed_3/full")
    spec = TrialSpec("seed_3/full", "full", 3, {}, "seed_3/warmup", "seed_3/teacher")
    return warm, spec, tmp_path / "seed_3/full/checkpoint.pt"


@pytest.mark.parametrize("recorded", [True, False], ids=["rng_device", "inferred-from-its-size"])
def test_a_gpu_checkpoint_resumes_on_a_cpu_with_a_reseed_line(tiny_cfg, digits, tmp_path, stopped_trial,
                                                             recorded: bool) -> None:
    warm, spec, path = stopped_trial
    state = load_checkpoint(path)
    step = state["step"]
    state["rng"] = torch.zeros(16, dtype=torch.uint8)  # the shape of a CUDA generator's state
    state["rng_device"] = "cuda"
    if not recorded:  # written before rng_device was recorded
        del state["rng_device"]
    save_checkpoint(state, path)
    lines = []
    outcome = run_stage(spec, tiny_cfg, digits, Storage(tmp_path), warm, lambda trial, m: None, {}, lines.append)
    assert outcome.status == "finished" and outcome.metrics["epoch"] == tiny_cfg.train.epochs
    (line,) = lines
    assert line.startswith("seed_3/full: full seed 3: its checkpoint's random state is a cuda generator's and this "
                           f"trial runs on cpu: reseeded from seed 3 and step {step}"), line
    assert load_checkpoint(path)["rng_device"] == "cpu"


def test_a_checkpoint_that_does_not_fit_ends_the_trial_in_a_clean_error(tiny_cfg, digits, tmp_path,
                                                                        stopped_trial) -> None:
    """Not an exception: under Ray that would cost every retry of max_failures, each failing alike."""
    warm, spec, path = stopped_trial
    state = load_checkpoint(path)
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3, 3)
    save_checkpoint(state, path)
    outcome = run_stage(spec, tiny_cfg, digits, Storage(tmp_path), warm, lambda trial, m: None, {}, lambda line: None)
    assert outcome.status == "error" and "does not fit this trial's model or optimizer" in outcome.reason
    assert (tmp_path / "seed_3/full/result.json").exists()


def test_the_probe_a_gpu_trial_fits_with_torch_agrees_with_scikit_learns(digits) -> None:
    """The same model (multinomial, L2 with C = 1, standardised means): on a GPU it is fitted by torch
    where the means are; here both fits run on the CPU, on 8 random projections of the digits."""
    from sweep.metrics import probe_accuracy, torch_probe_accuracy

    projection = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    mu_train, mu_eval = digits.x_train[:500].flatten(1) @ projection, digits.x_eval.flatten(1) @ projection
    sklearn = probe_accuracy(mu_train, digits.y_train[:500], mu_eval, digits.y_eval)
    fitted = torch_probe_accuracy(mu_train, digits.y_train[:500], mu_eval, digits.y_eval)
    assert 0.5 < sklearn and abs(fitted - sklearn) <= 0.01, (fitted, sklearn)


@pytest.mark.slow
def test_the_gpu_report_refuses_a_machine_without_cuda_and_its_dry_run_writes_every_field(
        tmp_path: Path, monkeypatch, capsys) -> None:
    from sweep import gpu_report

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    assert gpu_report.run(tmp_path / "none.json", dry_run=False) == 2
    assert capsys.readouterr().err == ("error: --gpu-report needs a CUDA device and torch sees none; --dry-run runs "
                                       "every code path at toy sizes on the CPU\n")
    assert not (tmp_path / "none.json").exists()
    assert gpu_report.run(tmp_path / "r.json", dry_run=True) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["dry_run"] and got["memory_kind"] == "cpu_max_rss"
    sizes = gpu_report.DRY
    assert sorted((r["model"], r["batch"], r["feed"], r["precision"]) for r in got["training"]) == sorted(
        (m, b, f, p) for m in gpu_report.MODELS for b in sizes.batches for f in ("tensor", "dataloader")
        for p in ("fp32", "bf16"))
    assert all(r["img_per_s"] > 0 for r in got["training"])
    assert [d["dataset"] for d in got["datasets"]] == list(gpu_report.DATASETS)
    assert all(d["eval_s"] > 0 and d["posthoc_s"] > 0 and d["peak_bytes"] > 0 for d in got["datasets"])
    assert [(s["processes"], len(s["peak_bytes_each"])) for s in got["sharing"]] == [(p, p) for p in sizes.processes]
    assert all(s["total_img_per_s"] > 0 for s in got["sharing"])
    assert "training img/s" in capsys.readouterr().out


def test_bf16_runs_the_backbone_under_autocast_and_keeps_the_certificate_in_float32(tiny_cfg, digits,
                                                                                   tmp_path) -> None:
    bf16 = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, precision="bf16", epochs=1))
    warm = train_warmup(tiny_cfg, digits, 3, tmp_path / "seed_3")
    trial = new_trial(bf16, "full", 3, digits, warm.teacher, warm.state)
    assert trial.model.backbone_dtype == torch.bfloat16
    mu, logvar = trial.model.encode(digits.x_eval[:8])
    assert mu.dtype == logvar.dtype == torch.float32 and trial.model.decode(mu).dtype == torch.float32
    with trial.model.backbone(digits.x_eval):
        assert trial.model.encoder(digits.x_eval[:8]).dtype == torch.bfloat16  # the body itself runs in bf16
    metrics = run_trial(trial, tmp_path / "full")
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("G_tau", "L_align", "I_T", "recon"))
    fp32 = new_trial(tiny_cfg, "full", 3, digits, warm.teacher, warm.state)
    assert fp32.model.backbone_dtype is None


def test_deterministic_turns_on_deterministic_algorithms_and_off_the_fast_paths() -> None:
    from sweep.devices import setup_device

    try:
        setup_device(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        setup_device(torch.device("cuda"), deterministic=False)  # flags only: no CUDA call is made
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    finally:
        setup_device(torch.device("cpu"), deterministic=False)
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
