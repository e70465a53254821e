"""The one adapter over Ray Tune's private trial state (sweep/engine/tune_state.py): it must fail
loudly, not silently keep memory, when Tune changes the attributes it relies on."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial

from sweep.engine.tune_state import FIELDS, KEEP, forget_results


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
