"""The sweep plan on synthetic event streams (no Ray, no training): grid expansion, one warm-up per
(seed, warm-up settings), readiness, the reaction to every kind of ended trial (publish, fork, skip,
drop) returned as data, and a killed driver's plan rebuilt from its recorded events."""

from __future__ import annotations

import json
import random

import pytest

from sweep.config import from_dict, reported_taus
from sweep.grid import grid_points, grid_problems, warm_relevant
from sweep.plan import DROP, FINISHED, PUBLISH, RESCUE, SKIP, Reaction, SweepPlan
from sweep.schema import point_label
from sweep.spec import TrialSpec
from tests.conftest import tiny_raw


def plan_of(grid: dict | None = None, record=None, **top) -> SweepPlan:
    raw = tiny_raw() | {"seeds": [0, 1]} | top
    raw["sweep"] = top.get("sweep", {}) | {"grid": grid or {}}
    return SweepPlan(from_dict(raw), record=record)


def drain(plan: SweepPlan) -> list[str]:
    """Ids handed out until the plan must wait (None) or is done."""
    out = []
    while isinstance(spec := plan.next_spec(), TrialSpec):
        out.append(spec.trial)
    return out


def publish_all(plan: SweepPlan, reactions: list[Reaction]) -> list[Reaction]:
    """What an engine does with PUBLISH: mark the warm-up ready. Returns the other reactions."""
    for r in reactions:
        if r.kind == PUBLISH:
            plan.mark_ready(r.trial)
    return [r for r in reactions if r.kind != PUBLISH]


def test_one_warmup_per_seed_is_shared_by_every_lambda_alpha_and_witness() -> None:
    plan = plan_of({"train.lam": [1.0, 5.0], "train.alpha_kl": [1.0, 2.0], "model.witness": ["head", "simplex"]},
                   model={"arch": "mlp", "latent_dim": 6, "hidden": 32})
    specs = list(plan.specs.values())
    assert [w.trial for w in specs if w.stage == "warmup"] == ["seed_0/warmup", "seed_1/warmup"]
    downstream = [s for s in specs if s.stage != "warmup"]
    assert len(downstream) == 2 * (8 + 4)  # seeds x (8 full, 4 noalign: lambda is none of noalign's); no rescue yet
    assert {s.warm for s in downstream if s.seed == 0} == {"seed_0/warmup"}
    assert "seed_0/full-lam=5.0,alpha_kl=2.0,witness=simplex" in plan.specs
    assert all(s.teacher == f"seed_{s.seed}/teacher" for s in downstream)


def test_grid_keys_that_change_the_warmup_get_their_own() -> None:
    plan = plan_of({"data.n_train": [500, 1000], "train.lam": [1.0, 5.0]})
    warmups = sorted(s.warm for s in plan.warmups())
    assert warmups == ["seed_0/warmup-n_train=1000", "seed_0/warmup-n_train=500",
                       "seed_1/warmup-n_train=1000", "seed_1/warmup-n_train=500"]
    warm = plan.warmup("seed_0/warmup-n_train=500")
    assert warm.overrides == {"data.n_train": 500} and warm.teacher == "seed_0/teacher-n_train=500"
    assert plan.spec("seed_0/full-n_train=500,lam=5.0").warm == "seed_0/warmup-n_train=500"
    assert warm_relevant("teacher.ks") and warm_relevant("train.warmup_epochs")
    assert not warm_relevant("train.lam") and not warm_relevant("model.simplex_beta")


def test_downstream_waits_for_its_warmup_and_finished_comes_last() -> None:
    plan = plan_of()
    assert drain(plan) == ["seed_0/warmup", "seed_1/warmup"]
    assert plan.next_spec() is None  # nothing is ready
    assert plan.end("seed_1/warmup", "finished") == [Reaction(PUBLISH, "seed_1/warmup")]
    assert plan.next_spec() is None  # not before it is published
    plan.mark_ready("seed_1/warmup")
    assert drain(plan) == ["seed_1/full", "seed_1/noalign"]
    publish_all(plan, plan.end("seed_0/warmup", "finished"))
    assert drain(plan) == ["seed_0/full", "seed_0/noalign"]
    for t in ("seed_0/full", "seed_1/full"):
        assert plan.end(t, "finished") == []
    assert plan.end("seed_0/noalign", "finished") == [Reaction(RESCUE, "seed_0/noalign", "endpoint")]
    assert plan.next_spec() is None and not plan.finished()  # the fork waits for its rescue
    plan.rescued("seed_0/noalign", "seed_0/noalign/checkpoint-step30.pt", 30)
    assert drain(plan) == ["seed_0/rescue"]
    assert plan.end("seed_0/rescue", "finished") == [Reaction(DROP, "seed_0/warmup")]
    plan.end("seed_1/noalign", "error")  # an error gets no rescue, and its warm-up is done
    assert plan.next_spec() == FINISHED and plan.finished()


def test_trials_of_a_ready_warmup_go_before_new_warmups_and_a_rescue_before_other_seeds() -> None:
    plan = plan_of(seeds=[0, 1, 2])
    assert plan.next_spec().trial == "seed_0/warmup"
    publish_all(plan, plan.end("seed_0/warmup", "finished"))
    assert [plan.next_spec().trial for _ in range(3)] == ["seed_0/full", "seed_0/noalign", "seed_1/warmup"]
    plan.end("seed_0/noalign", "finished")
    plan.rescued("seed_0/noalign", "x.pt", 3)
    assert plan.next_spec().trial == "seed_0/rescue"


def test_a_scheduler_fork_is_carried_out_when_the_trial_has_ended() -> None:
    plan = plan_of({"train.lam": [5.0]}, variants=["full", "noalign"])  # no rescue listed: forks only
    publish_all(plan, [r for w in drain(plan) for r in plan.end(w, "finished")])
    assert drain(plan) == ["seed_0/full-lam=5.0", "seed_0/noalign", "seed_1/full-lam=5.0", "seed_1/noalign"]
    assert plan.end("seed_1/noalign", "finished") == []  # not forked, no rescue wanted
    plan.fork_pending("seed_0/noalign", "collapsed: margin <= 0 for 2 consecutive reports")
    plan.fork_pending("seed_0/noalign", "again")  # a second decision changes nothing
    (fork,) = plan.end("seed_0/noalign", "stopped")
    assert fork == Reaction(RESCUE, "seed_0/noalign", "collapsed: margin <= 0 for 2 consecutive reports")
    (spec,) = plan.rescued("seed_0/noalign", "seed_0/noalign/checkpoint-step30.pt", 30)
    assert spec.trial == "seed_0/rescue-lam=5.0" and spec.overrides == {"train.lam": 5.0}
    assert spec.parent == {"trial": "seed_0/noalign", "checkpoint": "seed_0/noalign/checkpoint-step30.pt",
                           "step": 30, "reason": "collapsed: margin <= 0 for 2 consecutive reports"}
    with pytest.raises(ValueError, match="no forked noalign"):
        plan.rescued("seed_0/full-lam=5.0", "x.pt", 1)
    assert plan.max_trials() == len(plan.specs) + 1  # seed_1's noalign could still be forked


def test_a_warmup_is_dropped_only_when_its_last_trial_and_its_rescue_have_ended() -> None:
    plan = plan_of()
    drain(plan)
    publish_all(plan, plan.end("seed_0/warmup", "finished"))
    assert drain(plan) == ["seed_0/full", "seed_0/noalign"]
    assert plan.end("seed_0/full", "finished") == []
    plan.fork_pending("seed_0/noalign", "collapsed")
    assert [r.kind for r in plan.end("seed_0/noalign", "stopped")] == [RESCUE]  # no DROP: the rescue reads it
    assert plan.waiting("seed_0/warmup")
    assert plan.fork_failed("seed_0/noalign", "disk full") == [Reaction(DROP, "seed_0/warmup")]
    assert not plan.waiting("seed_0/warmup") and plan.waiting("seed_1/warmup")


def test_a_failed_warmup_skips_its_trials() -> None:
    plan = plan_of()
    drain(plan)
    assert plan.end("seed_0/warmup", "error") == [Reaction(SKIP, "seed_0/full", "its warm-up ended as error"),
                                                   Reaction(SKIP, "seed_0/noalign", "its warm-up ended as error")]
    assert [r.kind for r in plan.end("seed_1/warmup", "finished")] == [PUBLISH]
    assert [r.kind for r in plan.publish_failed("seed_1/warmup", "hash mismatch")] == [SKIP, SKIP]
    assert plan.next_spec() == FINISHED and set(plan.skipped) == {"seed_0/full", "seed_0/noalign", "seed_1/full",
                                                                 "seed_1/noalign"}


def simulate(plan: SweepPlan, rng: random.Random, stop_after: int | None = None) -> list[str]:
    """An engine with random trial lengths and outcomes: start what the plan hands out, end a random
    running trial, carry out the reaction. Returns the trials in the order they ended."""
    running, order = [], []
    while stop_after is None or len(order) < stop_after:
        while isinstance(spec := plan.next_spec(), TrialSpec):
            running.append(spec.trial)
        if not running:
            assert plan.next_spec() == FINISHED
            return order
        trial = running.pop(rng.randrange(len(running)))
        status = rng.choice(["finished", "finished", "stopped", "error"]) if "warmup" not in trial else "finished"
        if "noalign" in trial and status == "stopped":
            plan.fork_pending(trial, "collapsed")
        order.append(trial)
        for r in publish_all(plan, plan.end(trial, status)):
            if r.kind == RESCUE:
                plan.rescued(r.trial, f"{r.trial}/checkpoint-step1.pt", 1)
            elif r.kind == DROP:
                assert not plan.waiting(r.trial)
    return order


@pytest.mark.parametrize("seed", range(5))
def test_random_streams_run_every_trial_once_and_end(seed: int) -> None:
    plan = plan_of({"train.lam": [1.0, 5.0]}, seeds=[0, 1, 2])
    order = simulate(plan, random.Random(seed))
    assert sorted(order) == sorted(plan.specs) and len(set(order)) == len(order)
    rescues = {t for t in plan.specs if "/rescue" in t}
    forked = {t.replace("/noalign", "/rescue") + f"-lam={lam}" for t, s in plan.ended.items()
              if "noalign" in t and s != "error" for lam in (1.0, 5.0)}
    assert rescues == forked  # every noalign that did not fail got one rescue per lambda
    assert plan.finished() and not plan.forking


@pytest.mark.parametrize("cut", [1, 4, 9, 15])
def test_a_replayed_plan_continues_where_the_killed_driver_stopped(cut: int) -> None:
    events = []
    plan = plan_of({"train.lam": [1.0, 5.0]}, record=events.append)
    done = simulate(plan, random.Random(cut), stop_after=cut)
    again = plan_of({"train.lam": [1.0, 5.0]})
    again.replay(json.loads(json.dumps(events)))  # as plan.jsonl holds them
    assert again.ended == plan.ended and set(again.specs) == set(plan.specs) and again.ready == plan.ready
    for trial, _reason in again.pending_forks():  # what resume carries out first
        again.rescued(trial, f"{trial}/checkpoint-step1.pt", 1)
    rest = simulate(again, random.Random(100 + cut))
    assert not set(rest) & set(done)  # nothing that ended runs again
    assert sorted(done + rest) == sorted(again.specs) and again.finished()


def test_catch_up_publishes_ready_warmups_with_work_left() -> None:
    plan = plan_of()
    drain(plan)
    publish_all(plan, plan.end("seed_0/warmup", "finished") + plan.end("seed_1/warmup", "finished"))
    for t in drain(plan):
        if t.startswith("seed_1"):
            plan.end(t, "error")
    assert plan.catch_up() == [Reaction(PUBLISH, "seed_0/warmup")]


def test_grid_problems_are_listed_before_anything_runs() -> None:
    cfg = from_dict(tiny_raw() | {"sweep": {"grid": {"train.nope": [1], "seeds": [[1]], "train.lam": [1.0, -2.0]}}})
    problems = grid_problems(cfg)
    assert any("train.nope: not a config key" in p for p in problems)
    assert any("sweep.grid.seeds: not a training axis" in p for p in problems)
    (problem,) = grid_problems(from_dict(tiny_raw() | {"sweep": {"grid": {"eval.alpha": [0.05, 0.01]}}}))
    assert problem.startswith("sweep.grid.eval.alpha: not a grid axis: alpha is the error rate of the whole sweep")
    cfg = from_dict(tiny_raw() | {"sweep": {"grid": {"train.lam": [1.0, -2.0]}}})
    (problem,) = grid_problems(cfg)
    assert "{'train.lam': -2.0}" in problem and "train.lam: must be >= 0" in problem


def test_tau_is_reported_not_trained() -> None:
    cfg = from_dict(tiny_raw() | {"eval": {"tau": 0.05, "taus": [0.15]}, "sweep": {"grid": {"eval.tau": [0.0, 0.05]}}})
    assert grid_points(cfg) == [{}]  # no training axis: one run serves every tau
    assert reported_taus(cfg) == [0.0, 0.05, 0.15]
    assert point_label({"train.lam": 5, "model.hidden": 8}) == "lam=5,hidden=8"
    assert point_label({"train.lam": 5, "baselines.lam": 1}) == "train.lam=5,baselines.lam=1"


def test_a_trial_lost_with_its_node_is_handed_out_again_first() -> None:
    plan = plan_of(seeds=[0, 1, 2])
    assert plan.next_spec().trial == "seed_0/warmup"
    plan.requeue("seed_0/warmup")
    assert plan.next_spec().trial == "seed_0/warmup"  # before seed_1's warm-up
    publish_all(plan, plan.end("seed_0/warmup", "finished"))
    assert plan.next_spec().trial == "seed_0/full"
    plan.requeue("seed_0/full")
    assert [plan.next_spec().trial for _ in range(3)] == ["seed_0/full", "seed_0/noalign", "seed_1/warmup"]
    with pytest.raises(ValueError, match="not a running trial"):
        plan.requeue("seed_2/full")  # never issued
    plan.end("seed_0/full", "finished")
    with pytest.raises(ValueError, match="not a running trial"):
        plan.requeue("seed_0/full")  # ended


def test_a_warmup_that_ended_but_was_never_published_is_published_on_resume() -> None:
    """A driver killed between a warm-up's end and its publication (plan.jsonl has the end, not
    `ready`): the resumed driver publishes it, else its trials would wait forever."""
    events = []
    plan = plan_of(record=events.append)
    drain(plan)
    publish_all(plan, plan.end("seed_0/warmup", "finished"))
    plan.end("seed_1/warmup", "finished")  # killed here: no publish, no ready
    again = plan_of()
    again.replay(events)
    assert "seed_1/warmup" not in again.ready and again.ended["seed_1/warmup"] == "finished"
    assert again.catch_up() == [Reaction(PUBLISH, "seed_0/warmup"), Reaction(PUBLISH, "seed_1/warmup")]
    publish_all(again, again.catch_up())
    order = simulate(again, random.Random(0))
    assert {t for t in again.specs if t.startswith("seed_1/") and "warmup" not in t} <= set(order)
    assert again.finished()


def test_a_fork_added_by_hand_runs_first_and_a_replay_keeps_it() -> None:
    events = []
    plan = plan_of(record=events.append)
    drain(plan)
    publish_all(plan, plan.end("seed_0/warmup", "finished") + plan.end("seed_1/warmup", "finished"))
    fork = plan.spec("seed_0/noalign").replace(trial="seed_0/rescue-from-noalign-step9", stage="rescue", fork="noalign@9",
                                              parent={"trial": "seed_0/noalign", "checkpoint": "c.pt", "step": 9})
    plan.add(fork)
    assert drain(plan)[0] == fork.trial  # before the warm-up's trials still waiting
    with pytest.raises(ValueError, match="is a trial of this sweep already"):
        plan.add(fork)
    with pytest.raises(ValueError, match="its warm-up seed_2/warmup has not finished"):
        plan_of(seeds=[2]).add(fork.replace(trial="seed_2/x", warm="seed_2/warmup"))
    again = plan_of()
    again.replay(json.loads(json.dumps(events)))
    assert again.spec(fork.trial) == fork and not again.finished()
    assert again.catch_up() == [Reaction(PUBLISH, "seed_0/warmup"), Reaction(PUBLISH, "seed_1/warmup")]


def test_grid_points_that_ask_for_the_same_training_share_one_trial() -> None:
    """noalign and a baseline train with lambda = 0: a lambda grid asks each for one trial per
    seed, not one per lambda; full and the rescues keep one per lambda, each rescue forked from
    the one collapsed noalign at its own lambda; alpha_KL still tells noalign trials apart."""
    grid = {"train.lam": [1.0, 5.0], "train.alpha_kl": [1.0, 2.0]}
    plan = plan_of(grid, seeds=[0], variants=["full", "noalign", "rescue", "vae", "beta_vae_a"])
    by_stage: dict[str, list[str]] = {}
    for trial, spec in plan.specs.items():
        by_stage.setdefault(spec.stage, []).append(trial)
    assert by_stage["full"] == [f"seed_0/full-lam={lam},alpha_kl={a}" for lam in (1.0, 5.0) for a in (1.0, 2.0)]
    assert by_stage["noalign"] == ["seed_0/noalign-alpha_kl=1.0", "seed_0/noalign-alpha_kl=2.0"]
    assert by_stage["vae"] == ["seed_0/vae-alpha_kl=1.0", "seed_0/vae-alpha_kl=2.0"]
    assert by_stage["beta_vae_a"] == ["seed_0/beta_vae_a"]  # beta-VAE reads neither lambda nor alpha_KL
    assert plan.spec("seed_0/noalign-alpha_kl=2.0").overrides == {"train.alpha_kl": 2.0}
    publish_all(plan, [r for w in drain(plan) for r in plan.end(w, "finished")])
    drain(plan)
    plan.fork_pending("seed_0/noalign-alpha_kl=2.0", "collapsed")
    (rescue,) = plan.end("seed_0/noalign-alpha_kl=2.0", "stopped")
    specs = plan.rescued(rescue.trial, "seed_0/noalign-alpha_kl=2.0/checkpoint-step30.pt", 30)
    assert [(s.trial, s.overrides) for s in specs] == [
        ("seed_0/rescue-lam=1.0,alpha_kl=2.0", {"train.lam": 1.0, "train.alpha_kl": 2.0}),
        ("seed_0/rescue-lam=5.0,alpha_kl=2.0", {"train.lam": 5.0, "train.alpha_kl": 2.0})]
    assert {s.parent["checkpoint"] for s in specs} == {"seed_0/noalign-alpha_kl=2.0/checkpoint-step30.pt"}
    unshared = plan_of(grid, seeds=[0], variants=["full", "noalign"], sweep={"share_trials": False})
    assert len([t for t in unshared.specs if "/noalign" in t]) == 4  # one per grid point, as before


def test_the_rule_of_what_a_variant_trains_with() -> None:
    from sweep.variants import USED_BY, VARIANTS, applies, effective_point

    assert not applies("noalign", "train.lam") and applies("full", "train.lam") and applies("rescue", "train.lam")
    assert not any(applies(b, "train.lam") for b in ("vae", "beta_vae_a", "kl_anneal", "free_bits", "gmvae", "vqvae"))
    assert applies("warmup", "train.lam") and applies("noalign", "train.epochs")  # unlisted keys apply to all
    assert effective_point("noalign", {"train.lam": 5.0, "model.witness": "simplex"}) == {"model.witness": "simplex"}
    assert all(set(users) <= set(VARIANTS) for users in USED_BY.values())
    assert not any(warm_relevant(key) for key in USED_BY)  # a shared trial never needs another warm-up


def test_a_sweep_begun_with_one_trial_per_grid_point_continues_so() -> None:
    """plan.jsonl of a sweep begun before trials were shared names seed_0/noalign-lam=1.0: its
    driver's successor plans it the same way (and says so); a sweep begun shared stays shared."""
    from sweep.rows import as_begun

    grid = {"train.lam": [1.0, 5.0]}
    old_events, new_events, lines = [], [], []
    old = plan_of(grid, record=old_events.append, sweep={"share_trials": False})
    simulate(old, random.Random(0), stop_after=6)
    cfg = plan_of(grid).cfg  # its config.yaml has no share_trials: the default, True
    continued = as_begun(cfg, json.loads(json.dumps(old_events)), lines.append)
    assert not continued.sweep.share_trials and "one trial per grid point" in lines[0]
    again = SweepPlan(continued)
    again.replay(old_events)  # every trial it names is one of the plan's
    assert again.ended == old.ended
    simulate(plan_of(grid, record=new_events.append), random.Random(0), stop_after=6)
    assert as_begun(cfg, new_events, lines.append) is cfg and len(lines) == 1
