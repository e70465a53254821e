"""The certificate scheduler's rule and the guarded schedule, as pure functions (imports no Ray).

Both engines use them: the protocol applies `guard_step` after every report point (the sequential
runner and every Ray trial alike), and the Ray engine's scheduler (sweep/engine/scheduler.py) feeds
each report of a running trial to `decide` and carries the decision out:
  (a) stop: a trial of `collapse_variants` whose margin (G_tau; G_fix for a fixed target) is at or
      under `collapse_threshold` for `collapse_patience` consecutive reports; or a certified trial
      (margin > 0) whose margin gained less than `plateau_delta` over `plateau_patience` reports;
  (b) fork: a noalign trial stopped as collapsed gets a rescue from its latest checkpoint
      (METHOD.md, "Protocol" 3: rescue, with the student-first phase when configured);
  (c) guard: a full trial under `train.guard_value` trains on with lambda * guard_factor (capped
      at lam_max): METHOD.md "Protocol" 4, the guarded schedule. The trial raises its own lambda
      (`guard_step`, from its next epoch, recorded in its metrics and checkpoint); the scheduler
      only logs the decision, which it reaches with the same function on the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from sweep.config import SchedulerConfig, TrainConfig

CONTINUE, STOP, FORK, GUARD = "continue", "stop", "fork", "guard"


@dataclass(frozen=True)
class Decision:
    """What to do with a trial after one report."""

    action: str
    """continue | stop | fork (stop, then start a rescue from its checkpoint) | guard (lambda raised)."""
    reason: str = ""
    lam: float | None = None
    """The new lambda of a guard decision."""


def guard_step(stage: str, margin: float, lam: float, train: TrainConfig) -> float | None:
    """The guarded schedule: the raised lambda of a full trial whose margin fell under
    train.guard_value, or None when lambda stays (guard off, another stage, margin high enough,
    or lambda already at lam_max)."""
    if stage != "full" or not train.guard or not margin < train.guard_value or lam >= train.lam_max:
        return None
    return min(lam * train.guard_factor, train.lam_max)


def decide(stage: str, margins: Sequence[float], lam: float, rules: SchedulerConfig,
           train: TrainConfig) -> Decision:
    """The scheduler's rule for one trial.

    Args:
        stage: The trial's variant (full, noalign, rescue, ...).
        margins: Its margins so far, oldest first; the last is the report being decided on.
        lam: The lambda it trained with up to this report.
        rules: Collapse / plateau settings.
        train: The guard settings (guard, guard_value, guard_factor, lam_max).

    Returns:
        The decision, with a reason for anything but continue.
    """
    p = rules.collapse_patience
    if stage in rules.collapse_variants and p and len(margins) >= p \
            and all(m <= rules.collapse_threshold for m in margins[-p:]):
        action = FORK if stage == "noalign" and rules.fork_rescue else STOP
        return Decision(action, f"collapsed: margin <= {rules.collapse_threshold:g} for {p} consecutive reports")
    raised = guard_step(stage, margins[-1], lam, train)
    if raised is not None:
        return Decision(GUARD, f"guard: margin {margins[-1]:.4f} < {train.guard_value:g}, lambda {lam:g} -> {raised:g}",
                        raised)
    q = rules.plateau_patience
    if stage in rules.plateau_variants and q and len(margins) > q and margins[-1] > 0 \
            and margins[-1] - margins[-1 - q] < rules.plateau_delta:
        return Decision(STOP, f"plateau: certified, margin gained {margins[-1] - margins[-1 - q]:+.4f} "
                              f"< {rules.plateau_delta:g} over {q} reports")
    return Decision(CONTINUE)
