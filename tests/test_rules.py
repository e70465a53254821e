"""The certificate scheduler's rule and the guard step (sweep/rules.py) on synthetic report streams,
without Ray: stop after P collapsed reports, fork noalign, guard full, plateau stop, with the point
estimate or the statistical certificate's bounds as evidence."""

from __future__ import annotations

import pytest

from sweep.config import SchedulerConfig, TrainConfig
from sweep.rules import CONTINUE, FORK, GUARD, STOP, Report, decide, ends_here, guard_step

RULES = SchedulerConfig(evidence="estimate", collapse_threshold=0.0, collapse_patience=3, plateau_patience=2,
                        plateau_delta=0.01)
BOUND = SchedulerConfig(evidence="bound", collapse_threshold=0.0, collapse_patience=3, plateau_patience=2,
                        plateau_delta=0.01)
NO_GUARD = TrainConfig()
GUARDED = TrainConfig(guard=True, guard_value=0.1, guard_factor=2.0, lam=1.0, lam_max=4.0)


def reports(margins: list[float]) -> list[Report]:
    return [Report(m) for m in margins]


def stream(stage: str, margins: list[float], rules: SchedulerConfig = RULES, train: TrainConfig = NO_GUARD,
           lam: float = 1.0) -> list[str]:
    """The action after each report of a margin stream (point estimates only)."""
    return [decide(stage, reports(margins[:i + 1]), lam, rules, train).action for i in range(len(margins))]


def bound_stream(stage: str, bounds: list[tuple[float, float, float]], rules: SchedulerConfig = BOUND) -> list:
    """The decision after each report of a (margin, G_lower, G_upper) stream."""
    rs = [Report(*b) for b in bounds]
    return [decide(stage, rs[:i + 1], 1.0, rules, NO_GUARD) for i in range(len(rs))]


def test_noalign_is_forked_after_patience_consecutive_collapsed_reports() -> None:
    assert stream("noalign", [-0.14, -0.14, -0.14]) == [CONTINUE, CONTINUE, FORK]
    assert stream("noalign", [-0.1, 0.2, -0.1, -0.1, 0.0]) == [CONTINUE] * 4 + [FORK]  # 0 counts as collapsed
    decision = decide("noalign", reports([-1.0] * 3), 0.0, RULES, NO_GUARD)
    assert "3 consecutive" in decision.reason and decision.lam is None


def test_collapse_stop_without_fork_and_only_for_listed_variants() -> None:
    no_fork = SchedulerConfig(evidence="estimate", collapse_patience=2, fork_rescue=False)
    assert stream("noalign", [-0.1, -0.1], no_fork) == [CONTINUE, STOP]
    assert stream("full", [-0.1] * 5) == [CONTINUE] * 5  # full is guarded, not stopped
    assert stream("vae", [-0.1] * 5) == [CONTINUE] * 5  # baselines run to their post-hoc endpoint
    assert stream("noalign", [-0.1] * 5, SchedulerConfig(evidence="estimate", collapse_patience=0)) == [CONTINUE] * 5


def test_guard_raises_lambda_of_full_up_to_lam_max() -> None:
    decision = decide("full", reports([0.5, 0.05]), 1.0, RULES, GUARDED)
    assert (decision.action, decision.lam) == (GUARD, 2.0)
    assert decide("full", reports([0.05]), 3.0, RULES, GUARDED).lam == 4.0  # capped
    assert decide("full", reports([0.05]), 4.0, RULES, GUARDED).action == CONTINUE  # at the cap: nothing to raise
    assert decide("full", reports([0.2]), 1.0, RULES, GUARDED).action == CONTINUE  # above the guard value
    assert decide("rescue", reports([0.05]), 1.0, RULES, GUARDED).action == CONTINUE  # the guard is full's schedule


def test_guard_step_is_the_rule_both_engines_apply() -> None:
    assert guard_step("full", 0.05, 1.0, GUARDED) == 2.0
    assert guard_step("full", 0.05, 3.0, GUARDED) == 4.0  # capped at lam_max
    assert guard_step("full", 0.05, 4.0, GUARDED) is None  # nothing left to raise
    assert guard_step("full", 0.2, 1.0, GUARDED) is None and guard_step("full", float("nan"), 1.0, GUARDED) is None
    assert guard_step("noalign", 0.05, 1.0, GUARDED) is None and guard_step("full", 0.05, 1.0, NO_GUARD) is None
    # the scheduler's guard decision names exactly the lambda the trial moves to
    for margin, lam in ((0.05, 1.0), (0.0, 3.0), (-1.0, 2.5)):
        assert decide("full", reports([margin]), lam, RULES, GUARDED).lam == guard_step("full", margin, lam, GUARDED)


def test_plateau_stops_certified_trials_only() -> None:
    assert stream("full", [0.8, 1.2, 1.205, 1.209]) == [CONTINUE, CONTINUE, CONTINUE, STOP]
    assert stream("full", [0.8, 1.2, 1.4, 1.6]) == [CONTINUE] * 4  # still gaining
    assert stream("prefit", [-0.5, -0.5, -0.5, -0.5]) == [CONTINUE] * 4  # flat but not certified
    assert stream("noalign", [0.5, 0.5, 0.5]) == [CONTINUE] * 3  # noalign is not a plateau variant
    assert "plateau" in decide("full", reports([1.0, 1.0, 1.0]), 1.0, RULES, NO_GUARD).reason


def test_with_bound_evidence_collapse_needs_the_upper_bound_under_the_threshold() -> None:
    # point estimates below 0 but an upper bound above 0: the data do not say it collapsed
    unsure = [(-0.05, -0.20, 0.08)] * 4
    assert [d.action for d in bound_stream("noalign", unsure)] == [CONTINUE] * 4
    sure = [(-0.14, -0.16, -0.12)] * 3
    decisions = bound_stream("noalign", sure)
    assert [d.action for d in decisions] == [CONTINUE, CONTINUE, FORK]
    assert decisions[-1].used == {"G_upper": -0.12} and "G_upper <= 0 for 3 consecutive" in decisions[-1].reason
    # NaN bounds (no certificate computed) never count as collapsed
    assert bound_stream("noalign", [(-1.0, float("nan"), float("nan"))] * 3)[-1].action == CONTINUE


def test_with_bound_evidence_only_a_lower_bound_above_zero_is_certified_for_the_plateau() -> None:
    flat_unsure = [(0.10, -0.01, 0.2), (0.105, -0.005, 0.2), (0.106, -0.004, 0.21)]
    assert bound_stream("full", flat_unsure)[-1].action == CONTINUE  # flat, but G_lower <= 0
    flat_sure = [(1.00, 0.9, 1.1), (1.004, 0.92, 1.1), (1.006, 0.93, 1.1)]
    last = bound_stream("full", flat_sure)[-1]
    assert last.action == STOP and last.used == {"G_lower": 0.93} and "G_lower +0.9300 > 0" in last.reason


@pytest.mark.parametrize("bad", [{"collapse_patience": -1}, {"plateau_variants": ["nope"]}])
def test_scheduler_config_problems(bad: dict) -> None:
    assert SchedulerConfig(**bad).problems()


def test_a_trial_knows_the_report_the_scheduler_ends_it_at() -> None:
    """`ends_here` reads a trial's own reports with `decide`: true exactly where the scheduler stops
    or forks it (so the trial fits its endpoint numbers there), never for continue or guard."""
    rules, train = SchedulerConfig(collapse_patience=2, evidence="estimate"), TrainConfig()
    collapsed = {"margin": -0.2, "G_lower": -0.3, "G_upper": -0.1}
    assert not ends_here("noalign", [collapsed], 0.0, rules, train)
    assert ends_here("noalign", [collapsed, collapsed], 0.0, rules, train)
    assert decide("noalign", [Report(-0.2, -0.3, -0.1)] * 2, 0.0, rules, train).action == FORK
    assert not ends_here("full", [collapsed, collapsed], 5.0, rules, train)  # full is guarded, not stopped
    assert not ends_here("noalign", [{"margin": None}, {"margin": None}], 0.0, rules, train)  # NaN never collapses
    assert not ends_here("noalign", [], 0.0, rules, train)
