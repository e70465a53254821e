"""The sweep's trial graph: which trials a config asks for, when each may start, and what follows
when one ends (imports no torch or Ray).

docs/method.md, "Protocol": per seed, warm-up + teacher search come first; every downstream variant of
that seed (full, noalign, prefit, the baselines, and every grid point that leaves the warm-up alone)
starts once its teacher is ready; a rescue starts from a noalign trial's checkpoint. Both engines
drive the same plan: `next_spec` hands out the next trial, `end` records how one ended and returns
the plan's reaction as data, which the engine carries out:

  PUBLISH  a warm-up finished: make its state and teacher readable by its trials (then `ready`,
           or `publish_failed`)
  RESCUE   a noalign trial ended: pin its checkpoint and plan its rescue (then `rescued`, or
           `fork_failed`); a fork the scheduler decided while it ran (`fork_pending`) waits here
  SKIP     a trial that can never start (its warm-up failed); it gets no row
  DROP     no trial will read this warm-up again: free its published objects

Every change is reported to `record` as one JSON-able event, which the Ray engine appends to
DIR/plan.jsonl; `replay` rebuilds the plan of a killed driver from the config and those events.
Every operation costs O(1) (amortised), whatever the size of the sweep.

A trial is a `TrialSpec` (sweep/spec.py: its id, stage, seed, grid point, warm-up, teacher, parent
and fork label); plan.jsonl's events hold it as a JSON object.

A fork by hand (`python -m sweep fork`, sweep/grow.py) is `add`ed to the plan: one `add` event
with its spec. A sweep extended (`python -m sweep extend`) is planned from its grown config.yaml;
its `extend` event records what changed (no replay needs it).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sweep.config import RunConfig
from sweep.files import append_line, cut_partial_line
from sweep.schema import PLAN_FILE
from sweep.spec import TrialSpec
from sweep.grid import grid_points, suffixed, warm_relevant
from sweep.variants import VARIANTS, WARMUP, effective_point

if TYPE_CHECKING:
    from sweep.storage import Storage

FINISHED = "FINISHED"
PUBLISH, RESCUE, SKIP, DROP = "publish", "rescue", "skip", "drop"
Record = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Reaction:
    """What the engine does after a trial ended: `kind` (PUBLISH, RESCUE, SKIP, DROP) on `trial`."""

    kind: str
    trial: str
    reason: str = ""


class SweepPlan:
    """Specs of one sweep and where each stands: waiting, issued, ended or skipped.

    Args:
        cfg: The sweep's config.
        warm_cached: Warm-up and teacher come from an earlier run (fixed target with a cache): no
            warm-up trials; the engine publishes every warm-up before the first trial.
        record: Receives every event (see the module docstring); None records nothing.
    """

    def __init__(self, cfg: RunConfig, warm_cached: bool = False, record: Record | None = None) -> None:
        self.cfg, self.warm_cached, self.record = cfg, warm_cached, record or (lambda event: None)
        self.specs: dict[str, TrialSpec] = {}
        self.ended: dict[str, str] = {}  # trial -> finished | stopped | error
        self.skipped: dict[str, str] = {}  # trial -> why it can never start
        self.ready: set[str] = set()  # published warm-ups
        self.issued: set[str] = set()
        self.forking: dict[str, str] = {}  # noalign trial -> reason, its rescue not planned yet
        self._warm_specs: dict[str, TrialSpec] = {}  # one per distinct warm-up, cached ones too
        self._warmups: deque[str] = deque()  # warm-up trials not issued yet
        self._queues: dict[str, deque[str]] = {}  # warm-up -> its downstream trials not issued yet
        self._active: OrderedDict[str, None] = OrderedDict()  # ready warm-ups with trials waiting
        self._open: Counter[str] = Counter()  # warm-up -> downstream trials not ended, pending forks
        self._rescues: dict[str, dict[str, TrialSpec]] = {}  # noalign -> its rescues (no parent yet), by id
        self._build()

    def _point(self, variant: str, point: dict[str, Any]) -> dict[str, Any]:
        """The grid point as the variant's trial is named and configured: its effective point
        (sweep.variants.effective_point) when trials are shared, else the whole point."""
        return effective_point(variant, point) if self.cfg.sweep.share_trials else point

    def _build(self) -> None:
        variants = [v for v in VARIANTS if v in self.cfg.variants and v != "rescue"]  # a rescue waits for a fork
        for seed, point in itertools.product(self.cfg.seeds, grid_points(self.cfg)):
            warm_point = {k: v for k, v in point.items() if warm_relevant(k)}
            warm = suffixed(f"seed_{seed}/{WARMUP}", warm_point)
            if warm not in self._queues:
                self._queues[warm] = deque()
                spec = TrialSpec(warm, WARMUP, seed, warm_point, warm, suffixed(f"seed_{seed}/teacher", warm_point))
                self._warm_specs[warm] = spec
                if not self.warm_cached:
                    self._add(spec)
                    self._warmups.append(warm)
            teacher = self._warm_specs[warm].teacher
            for v in variants:
                own = self._point(v, point)
                trial = suffixed(f"seed_{seed}/{v}", own)
                if trial not in self.specs:  # else another grid point asked for the same trial
                    self._add_downstream(TrialSpec(trial, v, seed, own, warm, teacher))
            if "noalign" in variants:  # each grid point's rescue forks from its (maybe shared) noalign
                noalign, own = suffixed(f"seed_{seed}/noalign", self._point("noalign", point)), self._point("rescue", point)
                rescue = TrialSpec(suffixed(f"seed_{seed}/rescue", own), "rescue", seed, own, warm, teacher)
                self._rescues.setdefault(noalign, {})[rescue.trial] = rescue

    def _add(self, spec: TrialSpec) -> None:
        self.specs[spec.trial] = spec

    def _add_downstream(self, spec: TrialSpec) -> None:
        self._add(spec)
        self._queues[spec.warm].append(spec.trial)
        self._open[spec.warm] += 1
        if spec.warm in self.ready:
            self._active[spec.warm] = None

    # --- what the engines ask ----------------------------------------------------------------------

    def warmups(self) -> list[TrialSpec]:
        """One spec per distinct warm-up (also when they come from a cache)."""
        return list(self._warm_specs.values())

    def warmup(self, warm_id: str) -> TrialSpec:
        """The spec of one warm-up (also one that comes from a cache)."""
        return self._warm_specs[warm_id]

    @property
    def wants_rescue(self) -> bool:
        return "rescue" in self.cfg.variants

    def spec(self, trial_id: str) -> TrialSpec | None:
        return self.specs.get(trial_id)

    def max_trials(self) -> int:
        """An upper bound of the trials the sweep can make: its specs and one rescue per noalign."""
        rescues = sum(len(self._rescues.get(t, {})) for t, s in self.specs.items()
                      if s.stage == "noalign" and not self.rescue_planned(t))
        return len(self.specs) + rescues

    def knows(self, trial_id: str) -> bool:
        """Whether the plan names this trial: one of its specs, or a rescue it plans on a fork."""
        return trial_id in self.specs or any(trial_id in rescues for rescues in self._rescues.values())

    def rescue_planned(self, noalign_id: str) -> bool:
        """Whether the rescues of a noalign trial are in the plan already."""
        return any(trial in self.specs for trial in self._rescues.get(noalign_id, {}))

    def next_spec(self) -> TrialSpec | str | None:
        """The next spec to start, FINISHED when nothing is left, None while trials must end first.
        Trials of a ready warm-up go before new warm-ups: whole seeds end sooner, and few published
        warm-ups wait in the object store for their trials."""
        while self._active:
            warm = next(iter(self._active))
            queue = self._queues[warm]
            if queue:
                return self._issue(queue.popleft())
            del self._active[warm]
        if self._warmups:
            return self._issue(self._warmups.popleft())
        return FINISHED if self.finished() else None

    def _issue(self, trial_id: str) -> TrialSpec:
        self.issued.add(trial_id)
        return self.specs[trial_id]

    def requeue(self, trial_id: str) -> None:
        """Hand an issued trial out again, first: its attempt was lost with its node (it continues
        from its own checkpoint). Nothing is recorded: a replay hands out unended trials anyway."""
        if trial_id in self.ended or trial_id not in self.issued:
            raise ValueError(f"{trial_id} is not a running trial of this sweep")
        self.issued.discard(trial_id)
        spec = self.specs[trial_id]
        if spec.stage == WARMUP:
            self._warmups.appendleft(trial_id)
            return
        self._queues[spec.warm].appendleft(trial_id)
        if spec.warm in self.ready:
            self._active[spec.warm] = None
            self._active.move_to_end(spec.warm, last=False)

    def finished(self) -> bool:
        """Every spec has ended or been skipped, and no fork is waiting for its rescue."""
        return len(self.ended) + len(self.skipped) >= len(self.specs) and not self.forking

    def waiting(self, warm_id: str) -> bool:
        """Whether trials of this warm-up are still to run (or to end): its objects are needed."""
        return self._open[warm_id] > 0

    # --- what the engines report -------------------------------------------------------------------

    def end(self, trial_id: str, status: str) -> list[Reaction]:
        """Record that a trial ended (finished, stopped or error); returns the plan's reaction."""
        spec = self.specs[trial_id]
        if trial_id in self.ended:
            return []
        self.ended[trial_id] = status
        self.record({"event": "end", "trial": trial_id, "status": status})
        warm, out = spec.warm, []
        if spec.stage == WARMUP:
            out += [Reaction(PUBLISH, warm)] if status == "finished" else self._skip(warm, f"its warm-up ended as {status}")
            return out
        self._open[warm] -= 1
        if spec.stage == "noalign" and not self.rescue_planned(trial_id):
            if trial_id not in self.forking and self.wants_rescue and status != "error":
                self.forking[trial_id] = "endpoint" if status == "finished" else status
                self._open[warm] += 1
            if trial_id in self.forking:
                out.append(Reaction(RESCUE, trial_id, self.forking[trial_id]))
        return out + self._drop_if_done(warm)

    def mark_ready(self, warm_id: str) -> None:
        """A warm-up's state and teacher are published: its trials may start."""
        if warm_id not in self.ready:
            self.ready.add(warm_id)
            self.record({"event": "ready", "warm": warm_id})
            if self._queues[warm_id]:
                self._active[warm_id] = None

    def publish_failed(self, warm_id: str, reason: str) -> list[Reaction]:
        """A finished warm-up could not be published (a broken teacher or checkpoint)."""
        self.ended[warm_id] = "error"
        self.record({"event": "publish_failed", "warm": warm_id, "reason": reason})
        return self._skip(warm_id, f"its warm-up cannot be published ({reason})")

    def fork_pending(self, noalign_id: str, reason: str) -> None:
        """The scheduler stopped a collapsed noalign trial to fork it: its rescue is planned when the
        trial has ended (its last checkpoint is then final)."""
        if noalign_id not in self.forking and not self.rescue_planned(noalign_id):
            self.forking[noalign_id] = reason
            self._open[self.specs[noalign_id].warm] += 1
            self.record({"event": "fork", "trial": noalign_id, "reason": reason})

    def rescued(self, noalign_id: str, checkpoint: str, step: int) -> list[TrialSpec]:
        """Plan the rescues of a forked noalign trial from `checkpoint` (relative to the sweep
        directory), which holds its state at `step`: one per grid point that shares the noalign,
        each at its own lambda. Returns their specs."""
        parent = self.specs.get(noalign_id)
        if parent is None or parent.stage != "noalign" or noalign_id not in self.forking:
            raise ValueError(f"{noalign_id} is no forked noalign trial of this sweep")
        reason = self.forking.pop(noalign_id)
        lineage = {"trial": noalign_id, "checkpoint": checkpoint, "step": step, "reason": reason}
        specs = [rescue.replace(parent=lineage) for rescue in self._rescues[noalign_id].values()]
        self._open[parent.warm] -= 1  # the pending fork becomes the rescues' own counts
        for spec in specs:
            self._add_downstream(spec)
            self.record({"event": "rescue", "spec": spec.to_dict()})
        return specs

    def add(self, spec: TrialSpec) -> None:
        """Add a trial to the plan by hand (a fork, sweep/grow.py: a spec with a parent checkpoint),
        ahead of its warm-up's trials still waiting; the warm-up must have finished (its teacher
        is the fork's). Add several in reverse order to have them run in order."""
        warm = spec.warm
        if spec.trial in self.specs:
            raise ValueError(f"{spec.trial} is a trial of this sweep already")
        if self.ended.get(warm) != "finished" and not self.warm_cached:
            raise ValueError(f"{spec.trial}: its warm-up {warm} has not finished")
        self._add(spec)
        self._queues[warm].appendleft(spec.trial)
        self._open[warm] += 1
        if warm in self.ready:
            self._active[warm] = None
            self._active.move_to_end(warm, last=False)
        self.record({"event": "add", "spec": spec.to_dict()})

    def fork_failed(self, noalign_id: str, reason: str) -> list[Reaction]:
        """No rescue: the noalign trial's checkpoint could not be pinned."""
        self.forking.pop(noalign_id, None)
        warm = self.specs[noalign_id].warm
        self._open[warm] -= 1
        self.record({"event": "fork_failed", "trial": noalign_id, "reason": reason})
        return self._drop_if_done(warm)

    def _skip(self, warm_id: str, reason: str) -> list[Reaction]:
        queue, out = self._queues[warm_id], []
        while queue:
            trial = queue.popleft()
            self.skipped[trial] = reason
            self._open[warm_id] -= 1
            out.append(Reaction(SKIP, trial, reason))
        self._active.pop(warm_id, None)
        return out

    def _drop_if_done(self, warm_id: str) -> list[Reaction]:
        return [Reaction(DROP, warm_id)] if warm_id in self.ready and not self.waiting(warm_id) else []

    # --- a killed driver's plan --------------------------------------------------------------------

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply recorded events (DIR/plan.jsonl) to a plan freshly built from the same config.
        Trials that were issued but did not end are handed out again; reactions are not re-run,
        see `catch_up`."""
        record, self.record = self.record, lambda event: None
        try:
            for e in events:
                kind = e["event"]
                if kind == "end":
                    self._replay_end(e["trial"], e["status"])
                elif kind == "ready":
                    self.mark_ready(e["warm"])
                elif kind == "publish_failed":
                    self.publish_failed(e["warm"], e["reason"])
                elif kind == "fork":
                    self.fork_pending(e["trial"], e["reason"])
                elif kind == "rescue" and e["spec"]["trial"] not in self.specs:  # one event per rescue
                    self.forking.setdefault(e["spec"]["parent"]["trial"], e["spec"]["parent"]["reason"])
                    self.rescued(e["spec"]["parent"]["trial"], e["spec"]["parent"]["checkpoint"],
                                 e["spec"]["parent"]["step"])
                elif kind == "fork_failed":
                    self.fork_failed(e["trial"], e["reason"])
                elif kind == "add":
                    self.add(TrialSpec.from_dict(e["spec"]))
        finally:
            self.record = record

    def _replay_end(self, trial_id: str, status: str) -> None:
        warm = self.specs[trial_id].warm
        queue = self._queues.get(warm)
        if trial_id in self._warmups:
            self._warmups.remove(trial_id)
        elif queue is not None and trial_id in queue:
            queue.remove(trial_id)
        self.end(trial_id, status)

    def pending_forks(self) -> list[tuple[str, str]]:
        """(noalign trial, reason) of ended trials whose rescue is not planned yet (after a replay)."""
        return [(t, r) for t, r in self.forking.items() if t in self.ended]

    def catch_up(self) -> list[Reaction]:
        """What a new driver does before its first trial: publish every cached warm-up (fixed
        target with a cache); after a replay, publish every finished warm-up with trials left:
        again those that were ready (a new process, a new Ray: nothing is published), and those a
        killed driver had not published yet (it ended, but was never ready); and fork the rescues
        a killed driver had not planned yet."""
        if self.warm_cached:
            needed = [s.warm for s in self.warmups()]
        else:
            needed = [w for w in self._queues if self.waiting(w) and self.ended.get(w) == "finished"]
        return [Reaction(PUBLISH, w) for w in needed] + [Reaction(RESCUE, t, r) for t, r in self.pending_forks()]


class PlanLog:
    """Appends the plan's events to DIR/plan.jsonl, each whole and synced to disk (sweep/files.py);
    at a URI a fork or a rescue is uploaded at once (the rest with results.csv, every
    sweep.sync_every_s)."""

    URGENT = ("fork", "rescue", "publish_failed", "add", "extend")

    def __init__(self, storage: Storage) -> None:
        self.storage, self.path = storage, storage.path(PLAN_FILE)

    def __call__(self, event: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(event) + "\n")
        if event["event"] in self.URGENT:
            self.storage.push(PLAN_FILE)

    def events(self) -> list[dict[str, Any]]:
        """The events recorded so far ([] for a new sweep); a line cut off by a kill is cut from the
        file, so the next event starts on a line of its own."""
        if not self.path.exists():
            return []
        cut_partial_line(self.path)
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out
