"""The one adapter over Ray Tune's private state (sweep/engine/tune_state.py): it must fail loudly,
not silently keep memory or start every trial actor in a new process, when Tune changes what it
relies on."""

from __future__ import annotations

import importlib

import pytest
from ray.tune.experiment import Trial

from sweep.engine.tune_state import FIELDS, KEEP, TUNE_DEFAULT_ENV, forget_results, plain_trial_actors


def test_forget_results_empties_an_ended_trials_statistics() -> None:
    trial = Trial("__fake", config={"trial": "seed_0/full"}, stub=True)
    meta = trial.run_metadata
    assert all(hasattr(meta, name) for name in FIELDS), "Tune's trial metadata changed: update tune_state.py"
    for step in (1, 2, 3):
        meta.update_metric("margin", 0.1 * step, step)
    meta.last_result = {"margin": 0.3, "G_tau": 0.3, "trial": "seed_0/full", "step": 30, "status": "finished"}
    forget_results(trial)
    assert meta.metric_analysis == {} and meta.metric_n_steps == {}
    assert set(meta.last_result) <= set(KEEP) and meta.last_result["status"] == "finished"
    assert trial.last_result["step"] == 30  # what the live table and Tune's own loop still read


def test_forget_results_names_a_missing_attribute() -> None:
    class Changed:
        run_metadata = object()

    with pytest.raises(AttributeError, match="update sweep/engine/tune_state.py"):
        forget_results(Changed())


class Trainable:
    """Stands for the trainable class Tune wraps into a Ray actor class."""


def actor_runtime_env(class_cache) -> dict:
    return class_cache._ActorClassCache().get(Trainable)._default_options.get("runtime_env", {})


def test_plain_trial_actors_drops_tunes_default_runtime_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution import class_cache

    class_cache = importlib.reload(class_cache)  # Tune's own default, whatever a sweep in this process dropped
    for name in class_cache.ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    assert class_cache.DEFAULT_ENV_VARS == TUNE_DEFAULT_ENV, "Tune's default changed: update tune_state.py"
    assert actor_runtime_env(class_cache) == {"env_vars": TUNE_DEFAULT_ENV}
    plain_trial_actors()
    assert not actor_runtime_env(class_cache).get("env_vars")  # Ray's idle workers fit the actor
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")  # what Tune copies from the driver still goes
    assert actor_runtime_env(class_cache) == {"env_vars": {"AWS_ACCESS_KEY_ID": "key"}}


def test_plain_trial_actors_leaves_a_changed_default_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", {"PL_DISABLE_FORK": "0", "NEW_IN_TUNE": "1"})
    plain_trial_actors()
    assert class_cache.DEFAULT_ENV_VARS == {"PL_DISABLE_FORK": "0", "NEW_IN_TUNE": "1"}
