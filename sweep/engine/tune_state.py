"""The one place certsweep touches Ray Tune's private state: `forget_results` and
`plain_trial_actors`.

Tune keeps a Trial object for every trial of an experiment, and with it running statistics (max /
min / avg / last-5 / last-10) of every numeric key it was sent, the last result and a cached JSON
copy of them. Tune offers no public way to drop them for a trial that has ended, so a sweep of
thousands of trials would keep all of it in the driver. Once an ended trial's row is in
results.csv nothing of it is read again (a resumed sweep reads DIR/plan.jsonl, not Tune's state),
so `forget_results` empties it. It relies on attributes of ray.tune.trainable.metadata
._TrainingRunMetadata (Ray 2.60); tests/test_tune_state.py fails loudly when Tune changes them.

Tune gives every trial actor a runtime environment, `{"env_vars": {"PL_DISABLE_FORK": "1"}}`
(ray.tune.execution.class_cache.DEFAULT_ENV_VARS, for PyTorch Lightning, which certsweep does not
use). Ray starts an actor with a runtime environment in a new worker process, never on the idle
workers it starts with `ray.init`, so each trial actor paid a process start of its own before it
imported the trainable. `plain_trial_actors` drops that default; the env vars Tune copies from the
driver (cloud credentials, Ray Train's settings) still go with the actors when set. The test checks
the default is still the one it drops.
"""

from __future__ import annotations

from typing import Any

KEEP = ("trial", "stage", "seed", "status", "reason", "step", "epoch", "done", "trial_id", "training_iteration")
"""What an ended trial's last result keeps: the live table's and Tune's own loop's keys."""
FIELDS = ("metric_analysis", "metric_n_steps", "last_result", "invalidate_cache")
"""The private attributes of Trial.run_metadata used here."""


def forget_results(trial: Any) -> None:
    """Drop an ended trial's metric statistics and all but `KEEP` of its last result."""
    meta = trial.run_metadata
    missing = [name for name in FIELDS if not hasattr(meta, name)]
    if missing:
        raise AttributeError(f"Ray Tune's trial metadata no longer has {missing}: update sweep/engine/tune_state.py")
    meta.metric_analysis, meta.metric_n_steps = {}, {}
    meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if k in KEEP}
    meta.invalidate_cache()


TUNE_DEFAULT_ENV = {"PL_DISABLE_FORK": "1"}
"""The env vars Tune gives every trial actor by default (Ray 2.60), which `plain_trial_actors` drops."""


def plain_trial_actors() -> None:
    """Tune's trial actors without Tune's default runtime environment, so that Ray may start them on
    its idle workers. A Tune whose default is gone or different is left as it is (the actors then
    start as before); tests/test_tune_state.py fails on it."""
    from ray.tune.execution import class_cache

    env = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(env, dict):
        for name, value in TUNE_DEFAULT_ENV.items():
            if env.get(name) == value:
                del env[name]
