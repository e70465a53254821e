"""Tune's source of trials: the sweep's plan (sweep/plan.py), and the plan's reactions carried out.

`PlanSearcher.suggest` hands Tune the plan's next spec as its warm-up becomes ready, at most
`sweep.trials_per_segment` per Tune experiment (segment). When a trial ends, `ended` records it
in the plan and carries out the plan's reaction (sweep/reactions.py) with the object store
(sweep/engine/objects.py): a finished warm-up is read back from storage and published once, a
noalign trial's checkpoint is pinned and its rescue planned, a warm-up nothing will read again
leaves the object store.

The plan's events go to DIR/plan.jsonl (`PlanLog`), which is what `resume` replays: Tune's own
experiment state is never restored, so the searcher's `save` writes nothing of the plan.
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.search import Searcher

from sweep.checks import data_key
from sweep.config import RunConfig, to_flat
from sweep.engine import objects
from sweep.plan import FINISHED, SweepPlan
from sweep.reactions import carry_out
from sweep.stage import read_warmup
from sweep.storage import Storage

Log = Callable[[str], None]


class PlanSearcher(Searcher):
    """Hands out the plan's specs; carries out its reactions when trials end.

    Args:
        cfg: The sweep's config.
        plan: The plan (shared with the driver across segments).
        storage: The sweep directory.
        store: Name of the sweep's WarmupStore actor.
        fingerprints: Data fingerprint by `data_key`.
        log: Where fork, skip and failure lines go.
    """

    def __init__(self, cfg: RunConfig, plan: SweepPlan, storage: Storage, store: str, fingerprints: dict[str, str],
                 log: Log = print) -> None:
        super().__init__()
        self.base, self.plan, self.storage, self.store = to_flat(cfg), plan, storage, store
        self.fingerprints, self.log = fingerprints, log
        self.budget, self.started = cfg.sweep.trials_per_segment, 0  # trials this segment may / did start
        self.running = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # trials come from the plan; there is no search space

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.budget and self.started >= self.budget:  # this segment is full: it ends with its trials
            return None if self.running else Searcher.FINISHED
        spec = self.plan.next_spec()
        if spec == FINISHED:
            return Searcher.FINISHED
        if spec is None:
            return None
        self.started += 1
        self.running += 1
        return spec.to_dict()  # Tune's trial config: the spec's JSON form (the trainable types it again)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running -= 1

    def ended(self, trial_id: str, status: str) -> None:
        """A trial ended (its row is written): the plan records it, and its reaction is carried out."""
        self.react(self.plan.end(trial_id, status))

    def react(self, reactions: list) -> None:
        carry_out(self.plan, reactions, self.storage, self.publish, lambda w: objects.drop(self.store, w), self.log)

    def publish(self, warm_id: str) -> None:
        """Read a finished (or cached) warm-up back from storage, hash-checked, and publish it."""
        spec = self.plan.warmup(warm_id)
        cfg = spec.config(self.base)
        objects.publish(self.store, read_warmup(cfg, spec, self.storage, self.fingerprints[data_key(cfg.data)]))

    def fork_pending(self, trial_id: str, reason: str) -> None:
        """The scheduler's fork of a collapsed noalign trial."""
        self.plan.fork_pending(trial_id, reason)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:  # the plan's truth is DIR/plan.jsonl
            f.write("{}")

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from DIR/plan.jsonl: python -m sweep resume DIR")
