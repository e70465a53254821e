"""The certificate scheduler's Tune adapter (sweep/engine/scheduler.py) with a mocked controller
and synthetic result streams (no Ray cluster): it forks a collapsed noalign once and logs it, keeps
trials apart, logs a guard decision and lets the trial go on."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import MagicMock

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweep.config import SchedulerConfig, TrainConfig
from sweep.engine.scheduler import CertificateScheduler
from sweep.rules import FORK, GUARD

RULES = SchedulerConfig(evidence="estimate", collapse_threshold=0.0, collapse_patience=3, plateau_patience=2,
                        plateau_delta=0.01)
NO_GUARD = TrainConfig()
GUARDED = TrainConfig(guard=True, guard_value=0.1, guard_factor=2.0, lam=1.0, lam_max=4.0)


def fake_trial(trial_id: str, stage: str, status: str = Trial.RUNNING) -> SimpleNamespace:
    trial = SimpleNamespace(trial_id=trial_id, status=status,
                            config={"trial": f"seed_0/{stage}", "stage": stage, "seed": 0})
    trial.set_config = lambda config: setattr(trial, "config", config)
    return trial


def report(step: int, margin: float | None, lam: float = 0.0) -> dict:
    result = {"step": step, "lam": lam, "training_iteration": step // 10}
    return result if margin is None else result | {"margin": margin}


def test_scheduler_forks_a_collapsed_noalign_trial_once_and_logs_it() -> None:
    fork, log = MagicMock(), MagicMock()
    scheduler = CertificateScheduler(RULES, NO_GUARD, fork, log)
    controller, trial = MagicMock(), fake_trial("t1", "noalign")
    decisions = [scheduler.on_trial_result(controller, trial, report(10 * i, -0.14)) for i in (1, 2, 3)]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]
    fork.assert_called_once()
    trial_id, reason = fork.call_args.args
    assert trial_id == "seed_0/noalign" and "collapsed" in reason
    (entry,), _ = log.call_args
    assert entry | {"reason": ""} == {"trial": "seed_0/noalign", "step": 30, "margin": -0.14, "action": FORK,
                                      "reason": "", "used": {"margin": -0.14}}
    assert not controller.method_calls  # the decision is returned, never forced through the controller


def test_scheduler_ignores_reports_without_a_margin_and_keeps_trials_apart() -> None:
    scheduler = CertificateScheduler(RULES, NO_GUARD, MagicMock(), MagicMock())
    warm, a, b = fake_trial("w", "warmup"), fake_trial("a", "noalign"), fake_trial("b", "noalign")
    assert scheduler.on_trial_result(None, warm, report(5, None)) == TrialScheduler.CONTINUE
    # interleaved streams: two collapsed reports each never add up to three
    for step in (10, 20):
        assert scheduler.on_trial_result(None, a, report(step, -0.1)) == TrialScheduler.CONTINUE
        assert scheduler.on_trial_result(None, b, report(step, -0.1)) == TrialScheduler.CONTINUE
    scheduler.on_trial_complete(None, a, {})
    assert "a" not in scheduler._reports and "b" in scheduler._reports  # ended trials leave no state


def test_a_guard_decision_is_logged_and_the_trial_goes_on() -> None:
    log = MagicMock()
    scheduler = CertificateScheduler(RULES, GUARDED, MagicMock(), log)
    trial = fake_trial("f", "full")
    assert scheduler.on_trial_result(None, trial, report(10, 0.5, lam=1.0)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial, report(20, 0.02, lam=1.0)) == TrialScheduler.CONTINUE
    assert trial.config == {"trial": "seed_0/full", "stage": "full", "seed": 0}  # no side channel: the trial raises it
    (entry,) = log.call_args.args
    assert entry["action"] == GUARD and entry["step"] == 20 and "lambda 1 -> 2" in entry["reason"]


def test_a_resumed_trial_brings_its_earlier_reports_and_is_stopped_where_it_would_have_been() -> None:
    """A stopped sweep's noalign trial continues from its checkpoint under a new driver: its first
    report carries the earlier ones (the trainable's `prior`), so the collapse rule counts them."""
    from sweep.engine.trainable import PRIOR_KEY

    fork = MagicMock()
    scheduler = CertificateScheduler(RULES, NO_GUARD, fork, MagicMock())
    resumed = report(30, -0.14) | {PRIOR_KEY: [[-0.14, -0.2, -0.1], [-0.14, None, None]]}
    assert scheduler.on_trial_result(None, fake_trial("r", "noalign"), resumed) == TrialScheduler.STOP
    fork.assert_called_once()
    fresh = CertificateScheduler(RULES, NO_GUARD, MagicMock(), MagicMock())  # without them: two more reports
    assert fresh.on_trial_result(None, fake_trial("r", "noalign"), report(30, -0.14)) == TrialScheduler.CONTINUE
