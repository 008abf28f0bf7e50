"""What a launch does with each trial, decided in one place from the spec's trials and the store's runs.

`make_plan` is a pure function of plain records (no MLflow, no Ray): the driver reads the store into records
(`records_of`), asks for the plan and only executes it. For each cell × seed of the study:

- **done**: a FINISHED run exists (the oldest such run is the trial's record); nothing runs.
- **continue**: no FINISHED run, and the latest unfinished run recorded a checkpoint: that run is reopened and
  the trial continues from the checkpoint.
- **retry**: no FINISHED run, and the latest unfinished run has no checkpoint (it failed or was killed before its
  first one): that run is reopened and the trial starts from its first epoch.
- **fresh**: no run at all: a new run.

Every other unfinished run of the experiment that is still RUNNING (an older attempt of a trial, a trial of a cell
the study no longer has) is closed as KILLED, and so is every RUNNING launch run: their drivers are gone. A plan
is **refused** (nothing is written) when another launch of the study is alive (`alive` decides: same host, its pid
exists; another host, its heartbeat is recent), or when `resume` asks to continue a study never launched.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..tracking import HEARTBEAT_S, STALE_S, holder_alive  # noqa: F401  (HEARTBEAT_S, STALE_S: the launch's)

Key = Tuple[str, int]  # (cell key, seed)


class Action(str, enum.Enum):
    DONE = "done"
    CONTINUE = "continue"
    RETRY = "retry"
    FRESH = "fresh"


@dataclass(frozen=True)
class RunRecord:
    """What the planner needs of one trial run in the store."""
    run_id: str
    cell: Optional[str]
    seed: int
    status: str  # MLflow's: RUNNING, SCHEDULED, FINISHED, FAILED, KILLED
    start_time: int = 0
    checkpoint: Optional[str] = None

    @property
    def key(self) -> Key:
        return (self.cell, self.seed)


@dataclass(frozen=True)
class LaunchRecord:
    """One launch run (a driver) in the store."""
    run_id: str
    status: str
    host: str = ""
    pid: str = ""
    heartbeat: str = ""


@dataclass
class TrialPlan:
    trial: object  # a spec.Trial (anything with .cell and .seed)
    action: Action
    run_id: Optional[str] = None  # the run it keeps writing (done/continue/retry); None: a new run
    resume_from: Optional[str] = None  # continue: the checkpoint


@dataclass
class Plan:
    trials: List[TrialPlan]
    close: List[str] = field(default_factory=list)  # trial runs to end as KILLED (orphans)
    close_launches: List[str] = field(default_factory=list)  # launch runs to end as KILLED (dead drivers)
    refused: Optional[str] = None  # one line: why nothing may run

    @property
    def pending(self) -> List[TrialPlan]:
        return [p for p in self.trials if p.action is not Action.DONE]

    @property
    def done(self) -> int:
        return sum(p.action is Action.DONE for p in self.trials)

    def count(self, action: Action) -> int:
        return sum(p.action is action for p in self.trials)

    @property
    def reuse(self) -> Dict[Key, str]:
        """{(cell, seed): run id} of the trials that keep an earlier run."""
        return {(p.trial.cell, p.trial.seed): p.run_id for p in self.pending if p.run_id}


def make_plan(trials: Sequence, runs: Iterable[RunRecord], launches: Iterable[LaunchRecord] = (),
              alive: Callable[[LaunchRecord], bool] = lambda launch: False, resume: bool = False,
              launched: bool = True, experiment: str = "") -> Plan:
    """The plan of a launch. `launched`: whether the study's experiment exists in the store."""
    if resume and not launched:
        return Plan([], refused=f"nothing to resume: experiment {experiment!r} is not in the store "
                                "(start it with aa-study run)")
    launches = list(launches)
    for l in launches:
        if l.status == "RUNNING" and alive(l):
            return Plan([], refused=f"another launch of this study is running (launch run {l.run_id}, host "
                                    f"{l.host or '?'}, pid {l.pid or '?'}); wait for it, or stop it and use "
                                    "aa-study resume")
    finished: Dict[Key, RunRecord] = {}
    unfinished: Dict[Key, List[RunRecord]] = {}
    for r in sorted(runs, key=lambda r: (r.start_time or 0, r.run_id)):
        if r.status == "FINISHED":
            finished.setdefault(r.key, r)
        else:
            unfinished.setdefault(r.key, []).append(r)
    plans, kept = [], set()
    for t in trials:
        key = (t.cell, t.seed)
        if key in finished:
            plans.append(TrialPlan(t, Action.DONE, finished[key].run_id))
        elif key in unfinished:
            last = unfinished[key][-1]
            kept.add(last.run_id)
            if last.checkpoint:
                plans.append(TrialPlan(t, Action.CONTINUE, last.run_id, last.checkpoint))
            else:
                plans.append(TrialPlan(t, Action.RETRY, last.run_id))
        else:
            plans.append(TrialPlan(t, Action.FRESH))
    close = [r.run_id for rs in unfinished.values() for r in rs if r.status == "RUNNING" and r.run_id not in kept]
    return Plan(plans, close=close, close_launches=[l.run_id for l in launches if l.status == "RUNNING"])


def driver_alive(launch: LaunchRecord, now: Optional[float] = None, host: Optional[str] = None,
                 pid_exists: Optional[Callable[[int], bool]] = None) -> bool:
    """Whether a launch's driver still runs (`tracking.holder_alive`: on this host its pid decides, elsewhere a
    heartbeat younger than STALE_S)."""
    return holder_alive(launch.host, launch.pid, launch.heartbeat, now, host, pid_exists)


# ------------------------------------------------------------------------------------------ the store
def records_of(reader, experiment_id: Optional[str]) -> Tuple[List[RunRecord], List[LaunchRecord]]:
    """The trial and launch runs of an experiment, as the planner's records (reading only). `reader`: a
    `tracking.SqliteReader` or a `tracking.Tracker` (anything with `run_rows`)."""
    if experiment_id is None:
        return [], []
    runs = []
    for r in reader.run_rows(experiment_id, "trial"):
        seed = r.tags.get("seed", "")
        runs.append(RunRecord(r.run_id, r.tags.get("cell"), int(seed) if seed.lstrip("-").isdigit() else -1,
                              r.status, r.start_time, r.tags.get("checkpoint") or None))
    launches = [LaunchRecord(r.run_id, r.status, r.tags.get("host", ""), r.tags.get("pid", ""),
                             r.tags.get("heartbeat", ""))
                for r in reader.run_rows(experiment_id, "launch")]
    return runs, launches


def execute_closing(tracker, plan: Plan) -> None:
    """End the orphans a plan names (the only writes a plan makes before its trials run)."""
    for rid in plan.close:
        tracker.set_tags(rid, {"killed_reason": "orphaned: its launch ended without finishing it"})
        tracker.end(rid, "KILLED")
    for rid in plan.close_launches:
        tracker.end(rid, "KILLED")
