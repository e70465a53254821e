"""Carrying out the plan's reaction to an ended trial (sweep/plan.py), for both engines (imports no Ray).

The plan says what follows (PUBLISH, RESCUE, SKIP, DROP); `carry_out` does it with the two things
that differ between the engines, passed in: how a warm-up is made readable by its trials
(`publish`: kept in memory by the sequential runner, put into Ray's object store by the engine)
and how it is forgotten (`drop`). A fork pins the noalign trial's checkpoint under a name nothing
overwrites, `<trial>/checkpoint-step<N>.pt`, reading the step from the checkpoint's manifest (no
weights are loaded), and plans the rescue from it.
"""

from __future__ import annotations

from typing import Callable

from sweep.checkpoint import LATEST, CheckpointError, kept_name, manifest_path, read_manifest
from sweep.plan import DROP, PUBLISH, RESCUE, SKIP, Reaction, SweepPlan
from sweep.storage import Storage
from teachers.artifact import TeacherCacheError

Log = Callable[[str], None]


def pin_checkpoint(storage: Storage, trial_id: str) -> tuple[str, int]:
    """Keep a trial's last checkpoint (and manifest) as <trial>/checkpoint-step<N>.pt (a hard link
    in a directory, a copy at a URI): a fork starts from this file whatever happens later.

    Returns:
        The pinned file relative to the sweep directory, and its step.
    """
    src = f"{trial_id}/{LATEST}"
    storage.pull(manifest_path(src).as_posix())
    step = int(read_manifest(storage.path(src))["step"])
    rel = f"{trial_id}/{kept_name(step)}"
    if not storage.exists(rel):
        storage.copy(f"{src}.json", f"{rel}.json")
        storage.copy(src, rel)
    return rel, step


def carry_out(plan: SweepPlan, reactions: list[Reaction], storage: Storage, publish: Callable[[str], None],
              drop: Callable[[str], None], log: Log) -> None:
    """Do what the plan says, and feed back what came of it (a failed publish skips the warm-up's
    trials, a failed pin plans no rescue), until nothing is left to do.

    Args:
        plan: The sweep's plan.
        reactions: What `plan.end` (or a replay) returned.
        storage: The sweep directory.
        publish: Makes a finished warm-up (by id) readable by its trials; raises on a bad artifact.
        drop: Forgets a published warm-up nothing will read again.
        log: One line per fork, skip and failure.
    """
    todo = list(reactions)
    while todo:
        r = todo.pop(0)
        if r.kind == PUBLISH:
            try:
                publish(r.trial)
                plan.mark_ready(r.trial)
            except (TeacherCacheError, CheckpointError, OSError) as err:
                log(f"error: warm-up {r.trial} cannot be published ({err})")
                todo += plan.publish_failed(r.trial, str(err))
        elif r.kind == RESCUE:
            todo += fork(plan, storage, r.trial, log)
        elif r.kind == SKIP:
            log(f"skipped {r.trial}: {r.reason}")
        elif r.kind == DROP:
            drop(r.trial)


def fork(plan: SweepPlan, storage: Storage, noalign_id: str, log: Log) -> list[Reaction]:
    """Pin a noalign trial's checkpoint and plan its rescue from it."""
    try:
        rel, step = pin_checkpoint(storage, noalign_id)
    except (CheckpointError, OSError) as err:
        log(f"error: no rescue for {noalign_id}: its checkpoint cannot be pinned ({err})")
        return plan.fork_failed(noalign_id, str(err))
    for spec in plan.rescued(noalign_id, rel, step):
        log(f"fork {spec.trial} from {rel} (step {step}, {spec.parent['reason']})")
    return []
