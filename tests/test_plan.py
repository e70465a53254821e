"""The sweep plan (no Ray): grid expansion, one warm-up per (seed, warm-up settings), readiness,
rescues, failed warm-ups, and its state surviving a JSON round trip (what `resume` relies on)."""

from __future__ import annotations

import json

import pytest

from sweep.config import from_dict
from sweep.plan import FINISHED, SweepPlan, grid_points, grid_problems, reported_taus, tag, warm_relevant
from tests.conftest import tiny_raw


def plan_of(grid: dict | None = None, **top) -> SweepPlan:
    raw = tiny_raw() | {"seeds": [0, 1]} | top
    raw["sweep"] = {"grid": grid or {}}
    return SweepPlan(from_dict(raw))


def drain(plan: SweepPlan) -> list[str]:
    """Ids handed out until the plan must wait (None) or is done."""
    out = []
    while isinstance(spec := plan.next_spec(), dict):
        out.append(spec["trial"])
    return out


def test_one_warmup_per_seed_is_shared_by_every_lambda_alpha_and_witness() -> None:
    plan = plan_of({"train.lam": [1.0, 5.0], "train.alpha_kl": [1.0, 2.0], "model.witness": ["head", "simplex"]},
                   model={"arch": "mlp", "latent_dim": 6, "hidden": 32})
    warmups = [s for s in plan.specs if s["stage"] == "warmup"]
    assert [w["trial"] for w in warmups] == ["seed_0/warmup", "seed_1/warmup"]
    downstream = [s for s in plan.specs if s["stage"] != "warmup"]
    assert len(downstream) == 2 * 8 * 2  # seeds x grid points x (full, noalign); rescues come later
    assert {s["warm"] for s in downstream if s["seed"] == 0} == {"seed_0/warmup"}
    assert "seed_0/full-lam=5.0,alpha_kl=2.0,witness=simplex" in {s["trial"] for s in downstream}
    assert all(s["teacher"] == f"seed_{s['seed']}/teacher" for s in downstream)


def test_grid_keys_that_change_the_warmup_get_their_own() -> None:
    plan = plan_of({"data.n_train": [500, 1000], "train.lam": [1.0, 5.0]})
    warmups = sorted(s["trial"] for s in plan.specs if s["stage"] == "warmup")
    assert warmups == ["seed_0/warmup-n_train=1000", "seed_0/warmup-n_train=500",
                       "seed_1/warmup-n_train=1000", "seed_1/warmup-n_train=500"]
    warm = plan.spec("seed_0/warmup-n_train=500")
    assert warm["overrides"] == {"data.n_train": 500} and warm["teacher"] == "seed_0/teacher-n_train=500"
    assert plan.spec("seed_0/full-n_train=500,lam=5.0")["warm"] == "seed_0/warmup-n_train=500"
    assert warm_relevant("teacher.ks") and warm_relevant("train.warmup_epochs")
    assert not warm_relevant("train.lam") and not warm_relevant("model.simplex_beta")


def test_downstream_waits_for_its_warmup_and_finished_comes_last() -> None:
    plan = plan_of()
    assert drain(plan) == ["seed_0/warmup", "seed_1/warmup"]
    assert plan.next_spec() is None  # nothing is ready
    plan.mark_ready("seed_1/warmup")
    plan.end("seed_1/warmup", "finished")
    assert drain(plan) == ["seed_1/full", "seed_1/noalign"]
    plan.end("seed_0/warmup", "finished")
    plan.mark_ready("seed_0/warmup")
    assert drain(plan) == ["seed_0/full", "seed_0/noalign"]
    for t in ("seed_0/full", "seed_1/full", "seed_0/noalign"):
        plan.end(t, "finished")
    assert plan.next_spec() is None  # seed_1/noalign still runs and may get a rescue
    plan.end("seed_1/noalign", "stopped")
    assert plan.next_spec() == FINISHED


def test_trials_of_a_ready_warmup_go_before_new_warmups() -> None:
    plan = plan_of(seeds=[0, 1, 2])
    assert plan.next_spec()["trial"] == "seed_0/warmup"
    plan.mark_ready("seed_0/warmup")
    plan.end("seed_0/warmup", "finished")
    assert [plan.next_spec()["trial"] for _ in range(4)] == ["seed_0/full", "seed_0/noalign", "seed_1/warmup",
                                                            "seed_2/warmup"]


def test_rescue_records_its_parent_once_and_runs_next() -> None:
    plan = plan_of({"train.lam": [5.0]})
    plan.mark_ready("seed_0/warmup")
    plan.issued += [s["trial"] for s in plan.specs]
    spec = plan.add_rescue("seed_0/noalign-lam=5.0", "seed_0/noalign-lam=5.0/checkpoint-step30.pt", 30, "collapsed")
    assert spec["trial"] == "seed_0/rescue-lam=5.0" and spec["stage"] == "rescue"
    assert spec["parent"] == {"trial": "seed_0/noalign-lam=5.0", "checkpoint": "seed_0/noalign-lam=5.0/checkpoint-step30.pt",
                              "step": 30, "reason": "collapsed"}
    assert spec["overrides"] == {"train.lam": 5.0} and spec["warm"] == "seed_0/warmup"
    assert plan.add_rescue("seed_0/noalign-lam=5.0", "x.pt", 40, "endpoint") is None
    assert plan.next_spec()["trial"] == "seed_0/rescue-lam=5.0"
    with pytest.raises(ValueError, match="no noalign trial"):
        plan.add_rescue("seed_0/full-lam=5.0", "x.pt", 1, "collapsed")
    assert plan.max_trials() >= len(plan.specs)


def test_a_warmup_is_done_when_its_last_trial_and_the_rescue_it_forked_have_ended() -> None:
    plan = plan_of()
    drain(plan)
    plan.mark_ready("seed_0/warmup")
    plan.end("seed_0/warmup", "finished")
    assert drain(plan) == ["seed_0/full", "seed_0/noalign"] and not plan.warm_done("seed_0/warmup")
    plan.end("seed_0/full", "finished")
    plan.add_rescue("seed_0/noalign", "seed_0/noalign/checkpoint-step30.pt", 30, "collapsed")  # before its end
    plan.end("seed_0/noalign", "stopped")
    assert not plan.warm_done("seed_0/warmup")  # the rescue reads the same teacher
    plan.end(drain(plan)[0], "finished")
    assert plan.warm_done("seed_0/warmup") and not plan.warm_done("seed_1/warmup")
    assert not plan.finished() and plan.ended["seed_0/rescue"] == "finished"


def test_a_failed_warmup_drops_its_downstream_trials() -> None:
    plan = plan_of()
    drain(plan)
    plan.end("seed_0/warmup", "error")
    assert sorted(plan.skip_blocked()) == ["seed_0/full", "seed_0/noalign"]
    plan.mark_ready("seed_1/warmup")
    plan.end("seed_1/warmup", "finished")
    assert drain(plan) == ["seed_1/full", "seed_1/noalign"]


def test_state_round_trips_through_json() -> None:
    plan = plan_of({"train.lam": [1.0, 5.0]})
    drain(plan)
    plan.end("seed_0/warmup", "finished")
    plan.mark_ready("seed_0/warmup")
    plan.next_spec()
    again = plan_of({"train.lam": [1.0, 5.0]})
    again.load_state(json.loads(json.dumps(plan.state())))
    assert again.state() == plan.state()
    assert drain(again) == drain(plan)


def test_grid_problems_are_listed_before_anything_runs() -> None:
    cfg = from_dict(tiny_raw() | {"sweep": {"grid": {"train.nope": [1], "seeds": [[1]], "train.lam": [1.0, -2.0]}}})
    problems = grid_problems(cfg)
    assert any("train.nope: not a config key" in p for p in problems)
    assert any("sweep.grid.seeds: not a training axis" in p for p in problems)
    cfg = from_dict(tiny_raw() | {"sweep": {"grid": {"train.lam": [1.0, -2.0]}}})
    (problem,) = grid_problems(cfg)
    assert "{'train.lam': -2.0}" in problem and "train.lam: must be >= 0" in problem


def test_tau_is_reported_not_trained() -> None:
    cfg = from_dict(tiny_raw() | {"eval": {"tau": 0.05, "taus": [0.15]}, "sweep": {"grid": {"eval.tau": [0.0, 0.05]}}})
    assert grid_points(cfg) == [{}]  # no training axis: one run serves every tau
    assert reported_taus(cfg) == [0.0, 0.05, 0.15]
    assert tag({"train.lam": 5, "model.hidden": 8}) == "lam=5,hidden=8"
    assert tag({"train.lam": 5, "baselines.lam": 1}) == "train.lam=5,baselines.lam=1"
