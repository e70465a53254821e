"""The certificate scheduler's Tune adapter: a FIFOScheduler that feeds every report carrying a
margin to the pure rule `sweep.rules.decide` and carries its decision out (the rule, its reasons
and the guarded schedule are documented there).

  stop   the trial is stopped (Tune's STOP)
  fork   the trial is stopped and its rescue is planned from its last checkpoint once it has ended
  guard  logged only: the trial raises its own lambda with the same rule (sweep/rules.py)

Every decision other than continue goes to the decision log with the numbers it used (G_upper for a
collapse under the default evidence: bound). State: a short window of reports per
running trial, dropped when it ends, so the driver's memory does not grow with the sweep.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweep.config import SchedulerConfig, TrainConfig
from sweep.engine.trainable import PRIOR_KEY
from sweep.interrupt import STOP
from sweep.rules import CONTINUE, FORK, GUARD, Report, decide, report_window

Fork = Callable[[str, str], None]
"""fork(noalign trial id, reason): plan the rescue of a collapsed noalign trial."""
Log = Callable[[dict[str, Any]], None]


class CertificateScheduler(FIFOScheduler):
    """Applies `decide` to every report that carries a margin.

    Args:
        rules: Collapse / plateau settings.
        train: Guard settings.
        fork: Called for a collapsed noalign trial that is stopped to be forked.
        log: Called with every decision other than continue (trial, step, margin, action, reason).
    """

    def __init__(self, rules: SchedulerConfig, train: TrainConfig, fork: Fork, log: Log) -> None:
        super().__init__()
        self._rules, self._train, self._fork, self._log = rules, train, fork, log
        self._window = report_window(rules)
        self._reports: dict[str, deque[Report]] = {}

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        spec = trial.config
        if "margin" not in result or "stage" not in spec:
            return TrialScheduler.CONTINUE  # a warm-up has no teacher yet, so no margin
        reports = self._reports.get(trial.trial_id)
        if reports is None:  # its first report to this driver: a resumed trial brings its earlier ones
            reports = self._reports[trial.trial_id] = deque(maxlen=self._window)
            reports.extend(Report(*(float("nan") if v is None else float(v) for v in prior))
                           for prior in result.get(PRIOR_KEY, ()))
        reports.append(Report(float(result["margin"]), float(result.get("G_lower", "nan")),
                              float(result.get("G_upper", "nan"))))
        decision = decide(spec["stage"], list(reports), float(result["lam"]), self._rules, self._train)
        if decision.action == CONTINUE:
            return TrialScheduler.CONTINUE
        self._log({"trial": spec["trial"], "step": int(result["step"]), "margin": reports[-1].margin,
                   "action": decision.action, "reason": decision.reason, "used": decision.used})
        if decision.action == GUARD:
            return TrialScheduler.CONTINUE
        if decision.action == FORK:
            with STOP.absorbing():  # plan.jsonl on a full disk: the sweep stops, resume decides again
                self._fork(spec["trial"], decision.reason)
        return TrialScheduler.STOP

    def _forget(self, trial: Trial) -> None:
        self._reports.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._forget(trial)
