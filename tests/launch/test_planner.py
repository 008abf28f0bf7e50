"""The planner (pipelines/launch/planner.py): every case of what a launch does with a trial, on in-memory records, and
the records read from a real sqlite MLflow store."""
from types import SimpleNamespace as T

import pytest

from pipelines.launch.planner import (STALE_S, Action, LaunchRecord, RunRecord, driver_alive, execute_closing,
                               make_plan, records_of)

TRIALS = [T(cell="a", seed=0), T(cell="a", seed=1), T(cell="b", seed=0)]


def _actions(plan):
    return {(p.trial.cell, p.trial.seed): (p.action, p.run_id, p.resume_from) for p in plan.trials}


def test_an_empty_store_runs_every_trial_fresh():
    plan = make_plan(TRIALS, [])
    assert [p.action for p in plan.trials] == [Action.FRESH] * 3
    assert plan.done == 0 and len(plan.pending) == 3 and plan.close == [] and plan.close_launches == []
    assert plan.reuse == {}


def test_finished_is_done_and_wins_over_later_attempts():
    runs = [RunRecord("r1", "a", 0, "FINISHED", 10), RunRecord("r2", "a", 0, "RUNNING", 20, "/ck/2"),
            RunRecord("r3", "a", 0, "FAILED", 30)]
    plan = make_plan(TRIALS, runs)
    assert _actions(plan)[("a", 0)] == (Action.DONE, "r1", None)
    assert plan.done == 1 and [p.trial.seed for p in plan.pending if p.trial.cell == "a"] == [1]
    assert plan.close == ["r2"]  # a RUNNING attempt of a done trial is an orphan; FAILED stays as it is


def test_the_oldest_finished_run_is_the_record():
    runs = [RunRecord("late", "a", 0, "FINISHED", 50), RunRecord("early", "a", 0, "FINISHED", 5)]
    assert _actions(make_plan(TRIALS, runs))[("a", 0)][1] == "early"


def test_an_unfinished_run_with_a_checkpoint_continues_from_it():
    runs = [RunRecord("r1", "a", 1, "KILLED", 10, "/ck/1")]
    plan = make_plan(TRIALS, runs)
    assert _actions(plan)[("a", 1)] == (Action.CONTINUE, "r1", "/ck/1")
    assert plan.reuse == {("a", 1): "r1"} and plan.count(Action.CONTINUE) == 1


def test_an_unfinished_run_without_a_checkpoint_is_retried_in_the_same_run():
    runs = [RunRecord("r1", "b", 0, "FAILED", 10)]
    assert _actions(make_plan(TRIALS, runs))[("b", 0)] == (Action.RETRY, "r1", None)


def test_only_the_latest_attempt_is_kept_and_older_running_ones_are_closed():
    runs = [RunRecord("old", "a", 0, "RUNNING", 10, "/ck/old"), RunRecord("older-failed", "a", 0, "FAILED", 5),
            RunRecord("new", "a", 0, "RUNNING", 20, "/ck/new")]
    plan = make_plan(TRIALS, runs)
    assert _actions(plan)[("a", 0)] == (Action.CONTINUE, "new", "/ck/new")
    assert plan.close == ["old"]


def test_running_runs_of_cells_the_study_no_longer_has_are_closed():
    runs = [RunRecord("gone", "z", 0, "RUNNING", 1), RunRecord("gone-killed", "z", 0, "KILLED", 2)]
    plan = make_plan(TRIALS, runs)
    assert plan.close == ["gone"] and len(plan.pending) == 3


def test_a_live_driver_refuses_the_launch_and_a_dead_one_is_closed():
    launches = [LaunchRecord("L1", "RUNNING", "h", "1"), LaunchRecord("L0", "FINISHED", "h", "2")]
    refused = make_plan(TRIALS, [RunRecord("r", "a", 0, "RUNNING", 1)], launches, alive=lambda l: True)
    assert refused.refused.startswith("another launch of this study is running (launch run L1, host h, pid 1)")
    assert refused.trials == [] and refused.close == []  # nothing is written
    dead = make_plan(TRIALS, [], launches, alive=lambda l: False)
    assert dead.refused is None and dead.close_launches == ["L1"]


def test_resume_of_a_study_never_launched_is_refused_and_run_is_not():
    assert make_plan(TRIALS, [], resume=True, launched=False, experiment="x-cpu").refused == (
        "nothing to resume: experiment 'x-cpu' is not in the store (start it with aa-study run)")
    assert make_plan(TRIALS, [], resume=False, launched=False).refused is None
    assert make_plan(TRIALS, [], resume=True, launched=True).refused is None


def test_driver_alive_by_pid_on_this_host_and_by_heartbeat_elsewhere():
    here = LaunchRecord("L", "RUNNING", "me", "42")
    assert driver_alive(here, host="me", pid_exists=lambda pid: pid == 42)
    assert not driver_alive(here, host="me", pid_exists=lambda pid: False)
    far = LaunchRecord("L", "RUNNING", "other", "42", heartbeat="1000")
    assert driver_alive(far, now=1000 + STALE_S - 1, host="me")
    assert not driver_alive(far, now=1000 + STALE_S + 1, host="me")
    assert not driver_alive(LaunchRecord("L", "RUNNING", "other", "42"), now=0, host="me")  # no heartbeat


def test_records_of_a_real_store_and_closing_the_orphans(tiny_study, workdir):
    from pipelines.spec import load_study
    from pipelines.tracking import Tracker

    study = load_study(tiny_study, "cpu")
    tracker = Tracker(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = tracker.experiment_id(study.experiment, create=True)
    assert records_of(tracker, None) == ([], [])
    parent = tracker.start_launch(exp, study, "aa-study run", None)
    t0, t1, t2 = study.trials[:3]
    done = tracker.start_trial(exp, parent, study, t0)
    tracker.end(done, "FINISHED")
    cont = tracker.start_trial(exp, parent, study, t1)
    tracker.set_tags(cont, {"checkpoint": "/ck/t1"})
    retry = tracker.start_trial(exp, parent, study, t2)
    tracker.end(retry, "FAILED")

    runs, launches = records_of(tracker, exp)
    assert {r.run_id: (r.cell, r.seed, r.status, r.checkpoint) for r in runs} == {
        done: (t0.cell, t0.seed, "FINISHED", None), cont: (t1.cell, t1.seed, "RUNNING", "/ck/t1"),
        retry: (t2.cell, t2.seed, "FAILED", None)}
    assert [(l.run_id, l.status) for l in launches] == [(parent, "RUNNING")] and launches[0].pid.isdigit()

    plan = make_plan(study.trials, runs, launches, alive=lambda l: False)
    acts = _actions(plan)
    assert acts[(t0.cell, t0.seed)][0] is Action.DONE and acts[(t1.cell, t1.seed)] == (Action.CONTINUE, cont, "/ck/t1")
    assert acts[(t2.cell, t2.seed)] == (Action.RETRY, retry, None)
    assert plan.count(Action.FRESH) == len(study.trials) - 3 and plan.close_launches == [parent]
    execute_closing(tracker, plan)
    assert tracker.client.get_run(parent).info.status == "KILLED"
    assert tracker.client.get_run(cont).info.status == "RUNNING"  # kept: the trial continues in it


@pytest.mark.parametrize("order", [0, 1])
def test_the_plan_does_not_depend_on_the_order_runs_are_read(order):
    runs = [RunRecord("x", "a", 0, "KILLED", 10, "/x"), RunRecord("y", "a", 0, "FAILED", 20)]
    plan = make_plan(TRIALS, runs if order else runs[::-1])
    assert _actions(plan)[("a", 0)] == (Action.RETRY, "y", None)  # the latest attempt decides


def test_the_sqlite_reader_reads_what_mlflow_reads(tiny_study, workdir):
    """The fast path (sqlite3, no MLflow import) against the reference (MLflow's client) on one real store: runs of
    both kinds, every status, tags, a deleted run, several metric steps, another experiment beside it."""
    from pipelines.spec import load_study
    from pipelines.tracking import SqliteReader, Tracker, open_reader

    study = load_study(tiny_study, "cpu")
    uri = f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"
    assert open_reader(uri) is None  # no store yet, and none is created
    tracker = Tracker(uri)
    exp = tracker.experiment_id(study.experiment, create=True)
    other = tracker.experiment_id("someone-else", create=True)
    parent = tracker.start_launch(exp, study, "aa-study run", None)
    for i, (t, status) in enumerate(zip(study.trials, ["FINISHED", "FAILED", "KILLED", "RUNNING", "FINISHED"])):
        rid = tracker.start_trial(exp, parent, study, t)
        for step in (1, 2):
            tracker.log_metrics(rid, {"val_top1": 0.1 * i + 0.01 * step, "val_loss": 2.0 - step}, step=step)
        if status != "RUNNING":
            tracker.end(rid, status)
    gone = tracker.start_trial(exp, parent, study, study.trials[0])
    tracker.client.delete_run(gone)
    tracker.start_trial(other, parent, study, study.trials[0])

    fast = open_reader(uri)
    assert isinstance(fast, SqliteReader)
    assert fast.experiment_id(study.experiment) == exp and fast.experiment_id("nope") is None
    for kind in ("trial", "launch"):
        assert fast.run_rows(exp, kind) == tracker.run_rows(exp, kind)
    assert gone not in {r.run_id for r in fast.run_rows(exp)}
    assert fast.latest_metrics(exp, ["val_top1"]) == tracker.latest_metrics(exp, ["val_top1"])
    assert records_of(fast, exp) == records_of(tracker, exp)


def test_a_store_appears_whole_or_not_at_all(workdir):
    """While a launch creates the embedded store (MLflow's tables and migrations, seconds), a reader polling it
    (`status`, a second launch) sees no store or a complete one, never a half-made file it would migrate too;
    a creator that loses the race keeps the winner's store and leaves nothing behind."""
    import threading

    from pipelines import tracking

    path = workdir / "runs" / "mlflow.db"
    uri = f"sqlite:///{path}"
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            reader = tracking.open_reader(uri)
            seen.append(type(reader).__name__)
            if reader is not None:
                assert reader.experiment_id("nope") is None  # a whole schema
                stop.set()

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        tracker = tracking.Tracker(uri)
    finally:
        watcher.join(timeout=60)
        stop.set()
    assert seen and set(seen) <= {"NoneType", "SqliteReader"}, seen
    exp = tracker.experiment_id("mine", create=True)
    tracking._create_sqlite_store(path)  # a second creator, finishing after the first
    assert tracking.open_reader(uri).experiment_id("mine") == exp
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlflow.db"]


def test_a_store_of_the_code_before_key_versions_is_recognised(workdir, capsys):
    """Runs as the code before key versions wrote them (no key_version tag, cells under the keys that code computed,
    pinned in golden_cell_keys.json): a relaunch runs nothing and the report shows them as the study's cells."""
    import json
    import re

    from mlflow.tracking import MlflowClient

    from aa_study.cli import main
    from conftest import ROOT

    golden = json.loads((ROOT / "tests" / "study_definition" / "golden_cell_keys.json").read_text())
    uri = f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"
    (workdir / "runs").mkdir()
    c = MlflowClient(uri)
    exp = c.create_experiment("quickstart-cpu")
    for n, key in enumerate(golden["quickstart.yaml:cpu"]):
        for seed in (0, 1):
            run = c.create_run(exp, tags={"kind": "trial", "cell": key, "seed": str(seed), "study": "quickstart"})
            c.log_metric(run.info.run_id, "val_top1", 0.4 + 0.1 * n + 0.01 * seed, step=1)
            c.set_terminated(run.info.run_id, "FINISHED")
    spec = str(ROOT / "studies" / "quickstart.yaml")
    assert main(["run", spec, "--profile", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "6 already finished, 0 to run" in out and "done: 0 finished" in out
    assert main(["report", spec, "--profile", "cpu", "--out", str(workdir / "rep")]) == 0
    md = (workdir / "rep" / "report.md").read_text()
    assert "Runs: 6 (6 FINISHED)" in md and "not shown" not in md
    cells = (workdir / "rep" / "cells.md").read_text().splitlines()
    for key in golden["quickstart.yaml:cpu"]:  # every cell with both seeds' mean ± CI
        assert any(l.startswith(f"| {key} |") and re.search(r"\d ± \d", l) for l in cells), key
