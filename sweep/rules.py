"""The certificate scheduler's rule and the guarded schedule, as pure functions (imports no Ray).

Both engines use them: the protocol applies `guard_step` after every report point (the sequential
runner and every Ray trial alike), and the Ray engine's scheduler (sweep/engine/scheduler.py) feeds
each report of a running trial to `decide` and carries the decision out:
  (a) stop: a trial of `collapse_variants` whose margin is at or under `collapse_threshold` for
      `collapse_patience` consecutive reports; or a certified trial whose margin gained less than
      `plateau_delta` over `plateau_patience` reports. With `scheduler.evidence: bound` (the default)
      "collapsed" means G_upper <= threshold and "certified" means G_lower > 0: the statistical
      certificate's bounds (teachers/bounds.py), valid over every report point of the trial, so a
      stop or fork errs with probability at most eval.alpha. With `evidence: estimate` both read the
      point estimate G_tau (G_fix for a fixed target), the paper's rule;
  (b) fork: a noalign trial stopped as collapsed gets a rescue from its latest checkpoint
      (docs/method.md, "Protocol" 3: rescue, with the student-first phase when configured);
  (c) guard: a full trial under `train.guard_value` trains on with lambda * guard_factor (capped
      at lam_max): docs/method.md "Protocol" 4, the guarded schedule. The trial raises its own lambda
      (`guard_step`, from its next epoch, recorded in its metrics and checkpoint); the scheduler
      only logs the decision, which it reaches with the same function on the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from sweep.config import SchedulerConfig, TrainConfig

CONTINUE, STOP, FORK, GUARD = "continue", "stop", "fork", "guard"


@dataclass(frozen=True)
class Report:
    """What the rule reads of one report point."""

    margin: float
    """G_tau (G_fix for a fixed target): the point estimate."""
    lower: float = math.nan
    """G_lower: lower confidence bound on the population bare margin."""
    upper: float = math.nan
    """G_upper: upper confidence bound on it."""


@dataclass(frozen=True)
class Decision:
    """What to do with a trial after one report."""

    action: str
    """continue | stop | fork (stop, then start a rescue from its checkpoint) | guard (lambda raised)."""
    reason: str = ""
    lam: float | None = None
    """The new lambda of a guard decision."""
    used: dict[str, float] = field(default_factory=dict)
    """The number(s) the decision rests on, e.g. {"G_upper": -0.13} (logged with it)."""


def guard_step(stage: str, margin: float, lam: float, train: TrainConfig) -> float | None:
    """The guarded schedule: the raised lambda of a full trial whose margin fell under
    train.guard_value, or None when lambda stays (guard off, another stage, margin high enough,
    or lambda already at lam_max)."""
    if stage != "full" or not train.guard or not margin < train.guard_value or lam >= train.lam_max:
        return None
    return min(lam * train.guard_factor, train.lam_max)


def report_window(rules: SchedulerConfig) -> int:
    """How many of a trial's latest reports `decide` reads."""
    return max(rules.collapse_patience, rules.plateau_patience + 1, 1)


def decide(stage: str, reports: Sequence[Report], lam: float, rules: SchedulerConfig,
           train: TrainConfig) -> Decision:
    """The scheduler's rule for one trial.

    Args:
        stage: The trial's variant (full, noalign, rescue, ...).
        reports: Its reports so far, oldest first; the last is the one being decided on.
        lam: The lambda it trained with up to this report.
        rules: Collapse / plateau settings and the evidence they read.
        train: The guard settings (guard, guard_value, guard_factor, lam_max).

    Returns:
        The decision, with a reason and the numbers it used for anything but continue.
    """
    bound, last = rules.evidence == "bound", reports[-1]
    p = rules.collapse_patience
    if stage in rules.collapse_variants and p and len(reports) >= p:
        name, read = ("G_upper", [r.upper for r in reports[-p:]]) if bound else ("margin", [r.margin for r in reports[-p:]])
        if all(v <= rules.collapse_threshold for v in read):  # NaN never counts as collapsed
            action = FORK if stage == "noalign" and rules.fork_rescue else STOP
            return Decision(action, f"collapsed: {name} <= {rules.collapse_threshold:g} for {p} consecutive reports "
                                    f"(last {name} {read[-1]:+.4f})", used={name: read[-1]})
    raised = guard_step(stage, last.margin, lam, train)
    if raised is not None:
        return Decision(GUARD, f"guard: margin {last.margin:.4f} < {train.guard_value:g}, lambda {lam:g} -> {raised:g}",
                        raised, {"margin": last.margin})
    q = rules.plateau_patience
    certified = last.lower > 0 if bound else last.margin > 0
    if stage in rules.plateau_variants and q and len(reports) > q and certified:
        gain = last.margin - reports[-1 - q].margin
        if gain < rules.plateau_delta:
            evidence = f"G_lower {last.lower:+.4f} > 0" if bound else f"margin {last.margin:+.4f} > 0"
            used = {"G_lower": last.lower} if bound else {"margin": last.margin}
            return Decision(STOP, f"plateau: certified ({evidence}), margin gained {gain:+.4f} "
                                  f"< {rules.plateau_delta:g} over {q} reports", used=used)
    return Decision(CONTINUE)


def ends_here(stage: str, history: Sequence[dict], lam: float, rules: SchedulerConfig, train: TrainConfig) -> bool:
    """Whether the scheduler stops (or forks) a trial at its latest report: `decide` on the same
    window of the same numbers. The trial reads it to fit its endpoint numbers (the probe, the
    post-hoc certificate) at that report, so a stopped trial's row has them like a finished one's.

    Args:
        stage: The trial's variant.
        history: Its reports so far (metrics dicts with margin, G_lower, G_upper), the latest last.
        lam: The lambda it trained with up to the latest report.
        rules, train: As in `decide`.
    """
    def number(value: object) -> float:
        return math.nan if value is None else float(value)

    window = [Report(number(m.get("margin")), number(m.get("G_lower")), number(m.get("G_upper")))
              for m in history[-report_window(rules):]]
    return bool(window) and decide(stage, window, lam, rules, train).action in (STOP, FORK)
