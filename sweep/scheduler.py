"""Certificate scheduler: stops, forks and guards trials by their certificate margin.

The rule (`decide`) is a pure function of one trial's stage, its recent margins and lambda; the
`CertificateScheduler` (a FIFOScheduler, the size of Tune's median stopping rule) feeds it each
report and carries the decision out:
  (a) stop: G_tau (G_fix for a fixed target) at or under `collapse_threshold` for `collapse_patience`
      consecutive reports; or a certified trial (margin > 0) whose margin gained less than
      `plateau_delta` over the last `plateau_patience` reports;
  (b) fork: a noalign trial stopped as collapsed gets a rescue from its latest checkpoint
      (METHOD.md, "Protocol" 3: rescue, with the student-first phase when configured);
  (c) guard: a full trial under `train.guard_value` gets lambda *= guard_factor (capped at lam_max):
      METHOD.md "Protocol" 4, the guarded schedule. The trial is paused with its checkpoint and
      resumes from it with the new lambda, never from the start.
Every decision other than continue is logged with trial, step, margin and reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweep.config import SchedulerConfig, TrainConfig

CONTINUE, STOP, FORK, GUARD = "continue", "stop", "fork", "guard"


@dataclass(frozen=True)
class Decision:
    """What to do with a trial after one report."""

    action: str
    """continue | stop | fork (stop, then start a rescue from its checkpoint) | guard (raise lambda)."""
    reason: str = ""
    lam: float | None = None
    """The new lambda of a guard decision."""


def decide(stage: str, margins: Sequence[float], lam: float, rules: SchedulerConfig,
           train: TrainConfig) -> Decision:
    """The scheduler's rule for one trial.

    Args:
        stage: The trial's variant (full, noalign, rescue, ...).
        margins: Its margins so far, oldest first; the last is the report being decided on.
        lam: Its current lambda.
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
    if stage == "full" and train.guard and margins[-1] < train.guard_value and lam < train.lam_max:
        new = min(lam * train.guard_factor, train.lam_max)
        return Decision(GUARD, f"guard: margin {margins[-1]:.4f} < {train.guard_value:g}, lambda {lam:g} -> {new:g}", new)
    q = rules.plateau_patience
    if stage in rules.plateau_variants and q and len(margins) > q and margins[-1] > 0 \
            and margins[-1] - margins[-1 - q] < rules.plateau_delta:
        return Decision(STOP, f"plateau: certified, margin gained {margins[-1] - margins[-1 - q]:+.4f} "
                              f"< {rules.plateau_delta:g} over {q} reports")
    return Decision(CONTINUE)


Fork = Callable[[dict[str, Any], dict[str, Any], str], None]
Log = Callable[[dict[str, Any]], None]


class CertificateScheduler(FIFOScheduler):
    """Applies `decide` to every report that carries a margin.

    Args:
        rules: Collapse / plateau settings.
        train: Guard settings.
        fork: Called as fork(spec, result, reason) for a collapsed noalign trial: pins its latest
            checkpoint and plans the rescue.
        log: Called with every decision other than continue (trial, step, margin, action, reason).
    """

    def __init__(self, rules: SchedulerConfig, train: TrainConfig, fork: Fork, log: Log) -> None:
        super().__init__()
        self._rules, self._train, self._fork, self._log = rules, train, fork, log
        self._window = max(rules.collapse_patience, rules.plateau_patience + 1, 1)
        self._margins: dict[str, deque[float]] = {}  # running trials only: the driver's memory stays flat

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        spec = trial.config
        if "margin" not in result or "stage" not in spec:
            return TrialScheduler.CONTINUE  # a warm-up has no teacher yet, so no margin
        margins = self._margins.setdefault(trial.trial_id, deque(maxlen=self._window))
        margins.append(float(result["margin"]))
        decision = decide(spec["stage"], list(margins), float(result["lam"]), self._rules, self._train)
        if decision.action == CONTINUE:
            return TrialScheduler.CONTINUE
        self._log({"trial": spec["trial"], "step": int(result["step"]), "margin": margins[-1],
                   "action": decision.action, "reason": decision.reason})
        if decision.action == GUARD:
            # Tune checkpoints the paused trial and restarts it from that checkpoint with this config
            trial.set_config(dict(spec) | {"lam": decision.lam})
            margins.clear()
            return TrialScheduler.PAUSE
        if decision.action == FORK:
            self._fork(spec, result, decision.reason)
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._margins.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._margins.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._margins.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A paused (guarded) trial first, so that it resumes before new trials take its slot."""
        trials = tune_controller.get_trials()
        return next((t for t in trials if t.status == Trial.PAUSED),
                    next((t for t in trials if t.status == Trial.PENDING), None))
