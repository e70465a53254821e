"""The Ray Tune engine: the only package of certsweep that imports Ray, so Ray's API churn stays here.

  objects.py     data sets and warm-ups in Ray's object store (a cache; storage stays the truth)
  trainable.py   the Tune function trainable: one spec of the plan, run by sweep/stage.py
  searcher.py    Tune's source of trials (the plan), its reactions carried out, DIR/plan.jsonl
  scheduler.py   the Tune adapter of the certificate scheduler's rule (sweep/rules.py)
  callbacks.py   rows and reactions when trials end, the decision log, the live table
  tune_state.py  the one adapter that touches Tune's private state
  driver.py      start Ray, the Tuner, segments, run and resume

Everything the two engines share lives outside, Ray-free: the plan (sweep/plan.py), the stages
(sweep/stage.py), the rules (sweep/rules.py), the pre-run checks (sweep/checks.py), results.csv
(sweep/results.py).
"""

from typing import Any

__all__ = ["run_sweep", "resume_sweep"]


def __getattr__(name: str) -> Any:
    """run_sweep and resume_sweep (sweep/engine/driver.py), imported on first use: importing a
    Ray-free room of this package (security.py) does not start importing Ray."""
    if name in __all__:
        from sweep.engine import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
