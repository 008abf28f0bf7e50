"""The study driver: a validated spec → the trials not yet FINISHED in MLflow → Ray Tune → MLflow.

Order of a launch (`aa-study run` / `resume`), so that a mistake is named before anything is written:
  1. the spec is validated (pipelines.spec; data opened, networks built on the meta device);
  2. the tracking URI is checked (a server answers /health; a sqlite path is creatable);
  3. Ray starts (local, dashboard off) or joins `--address`; GPU requests are checked against the cluster;
  4. MLflow: the planner (pipelines/planner.py) reads the store and decides each trial: done (FINISHED,
     skipped), continue (from its run's last checkpoint), retry, fresh, or the whole launch refused (another live
     driver); runs left RUNNING by a launch that died are closed as KILLED;
  5. one parent run for the launch; Tune runs the rest, one trial per cell × seed, and the driver's
     callback writes each trial's run (the only writer of the store).

Resume does not call `Tuner.restore`: MLflow is the record of what finished, and each trial's last
checkpoint path is a tag on its run, so any launch continues any unfinished trial from where it stopped,
whichever launch (or machine) started it. Inside one launch, Tune's own retries (max_failures) resume
from `tune.get_checkpoint()`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .spec import Study, check_deep, load_study
from .tracking import (Tracker, check_tracking_uri, default_home, redact, resolve_tracking_uri,
                       store_exists, ui_url)


class LaunchError(ValueError):
    """A launch that cannot start (cluster, resources, nothing to resume); one line."""


@dataclass
class LaunchResult:
    experiment_id: Optional[str]
    parent_run_id: Optional[str]
    skipped: int  # cell × seed already FINISHED
    finished: int = 0
    failed: int = 0
    killed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)


def _one_line(text: str, limit: int = 500) -> str:
    lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
    # the last line of a traceback names the exception; prefer it
    line = lines[-1] if lines else ""
    return line[:limit]


# ------------------------------------------------------------------------------------------- launch
def prepare(spec_path: str, profile: Optional[str], tracking_uri: Optional[str], deep: bool = True) -> tuple:
    """Steps 1-2: (study, tracking uri). Raises SpecError / TrackingError; writes nothing. deep=False leaves the
    checks that build networks and open datasets to `spec.check_deep` (a launch runs them once it knows that
    something is left to run)."""
    study = load_study(spec_path, profile, deep=deep)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    return study, uri


def check_local_resources(address: Optional[str], study: Study) -> None:
    """Without a cluster, a local Ray would hold this machine's devices: refuse what it cannot give, before Ray
    starts or anything (the launch's log included) is written."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    gpu = study.resources["gpu"]
    if gpu > 0 and torch.cuda.device_count() == 0:
        raise LaunchError(f"resources.gpu: {gpu:g} GPU per trial requested but this machine has no GPU and no "
                          "Ray cluster was given (--address): use the cpu profile or resources: {gpu: 0}")
    _check_fits(study, {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}, "this machine",
                " (give --address of a larger Ray cluster)")


def init_ray(address: Optional[str], study: Study):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # the test-only fault switch travels to the trials (pipelines/trial.py)
    env = {k: v for k, v in os.environ.items() if k.startswith("AA_STUDY_FAULT")}
    runtime_env = {"env_vars": env} if env else None
    gpu = study.resources["gpu"]  # the local machine was checked by check_local_resources (launch)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LaunchError(f"address: cannot join the Ray cluster at {address!r} ({_one_line(e)})") from None
    res = ray.cluster_resources()
    if gpu > 0 and res.get("GPU", 0) <= 0:
        ray.shutdown()
        raise LaunchError(f"resources.gpu: {gpu:g} GPU per trial requested but the Ray cluster has no GPU "
                          "(use the cpu profile or resources: {gpu: 0})")
    try:
        _check_fits(study, res, "the Ray cluster")
    except LaunchError:
        ray.shutdown()
        raise
    if gpu == 0 and study.train.get("device") == "cuda":
        ray.shutdown()
        raise LaunchError("train.device: cuda needs resources.gpu > 0 (Ray hides GPUs from trials that ask for none)")


def trial_needs(study: Study) -> Dict[str, float]:
    """The CPUs and GPUs one trial holds while it runs (all its workers)."""
    r = study.resources
    if r["workers"] == 1:
        return {"CPU": r["cpu"], "GPU": r["gpu"]}
    from .distributed import TRIAL_CPU
    return {"CPU": r["workers"] * r["cpu"] + TRIAL_CPU, "GPU": r["workers"] * r["gpu"]}


def _check_fits(study: Study, have: Dict[str, float], where: str, hint: str = ""):
    r, need = study.resources, trial_needs(study)
    per = f" ({r['workers']} workers x {r['cpu']:g})" if r["workers"] > 1 else ""
    if need["CPU"] > have.get("CPU", 0) + 1e-9:
        raise LaunchError(f"resources.cpu: a trial needs {need['CPU']:g} CPUs{per} but {where} has "
                          f"{have.get('CPU', 0):g}{hint}")
    if r["workers"] > 1 and need["GPU"] > have.get("GPU", 0):
        raise LaunchError(f"resources.workers: a trial needs {need['GPU']:g} GPUs ({r['workers']} workers x 1) but "
                          f"{where} has {have.get('GPU', 0):g}{hint}")


def concurrent_trials(study: Study, have: Optional[Dict[str, float]] = None) -> Optional[int]:
    """How many trials of several workers run at once (None: Tune's own placement decides, for one-worker
    trials). Set, because such a trial holds almost nothing itself: Tune would otherwise start every trial
    and leave their worker groups waiting for each other's GPUs."""
    if study.resources["workers"] == 1:
        return None
    if have is None:
        import ray
        have = ray.cluster_resources()
    return max(1, trials_that_fit(study, have))


def trials_that_fit(study: Study, have: Dict[str, float]) -> int:
    """How many trials the CPUs and GPUs in `have` hold at once."""
    need = trial_needs(study)
    fits = [int(have.get(k, 0) // need[k]) for k in ("CPU", "GPU") if need[k] > 0]
    return max(0, min(fits)) if fits else 0


def read_plan(study: Study, uri: str, resume: bool = False) -> tuple:
    """(tracker or None, experiment id or None, the launch's `planner.Plan`); reading only: no store is created."""
    from .planner import driver_alive, make_plan, records_of

    tracker = Tracker(uri) if store_exists(uri) else None
    exp_id = tracker.experiment_id(study.experiment) if tracker else None
    runs, launches = records_of(tracker, exp_id)
    return tracker, exp_id, make_plan(study.trials, runs, launches, driver_alive, resume=resume,
                                      launched=exp_id is not None, experiment=study.experiment)


def plan(spec_path: str, profile: Optional[str] = None, tracking_uri: Optional[str] = None,
         address: Optional[str] = None, rate: Optional[float] = None, prepared=None) -> List[str]:
    """`aa-study run --dry-run`: the launch's trials, resources and an estimate; nothing started or written."""
    from .estimate import dry_run

    study, uri = prepared or prepare(spec_path, profile, tracking_uri)
    _, _, the_plan = read_plan(study, uri)
    return dry_run(study, [p.trial for p in the_plan.pending], the_plan.done, address, rate)


def launch(spec_path: str, profile: Optional[str] = None, tracking_uri: Optional[str] = None,
           storage: Optional[str] = None, address: Optional[str] = None, resume: bool = False,
           command: str = "", verbose: int = 1, prepared=None, console: str = "verbose") -> LaunchResult:
    """console: "verbose" (Ray's, Tune's and Lightning's own output on the terminal, Tune's table if verbose),
    "live" (a table of the cells, live on a terminal, one line per finished trial elsewhere) or "lines" (those
    lines only); in both of the latter everything else the launch writes goes to a log file it names.

    The planner (pipelines/planner.py) decides what each trial is; this function only executes its plan."""
    from .planner import Action, execute_closing

    study, uri = prepared or prepare(spec_path, profile, tracking_uri, deep=False)
    tracker, exp_id, the_plan = read_plan(study, uri, resume)
    if the_plan.refused:
        raise LaunchError(the_plan.refused)
    pending = the_plan.pending
    result = LaunchResult(exp_id, None, skipped=the_plan.done)
    again = the_plan.count(Action.CONTINUE) + the_plan.count(Action.RETRY)
    print(f"study {study.name} (profile {study.profile or '-'}): {len(study.cells)} cells x {len(study.seeds)} "
          f"seeds = {len(study.trials)} trials; {result.skipped} already finished, {len(pending)} to run"
          + (f" ({the_plan.count(Action.CONTINUE)} from a checkpoint, {the_plan.count(Action.RETRY)} again "
             "from epoch 1)" if again else ""))
    if not pending:
        if tracker is not None:
            execute_closing(tracker, the_plan)
        return result
    check_deep(study)  # networks and data, before Ray starts or anything is written
    check_local_resources(address, study)

    if study.scheduler["type"] == "asha":
        print("warning: scheduler asha stops weak trials early; cells of an ablation are then compared at "
              "different budgets (use fifo for ablation tables)", file=sys.stderr)
    log = None
    if console != "verbose":
        log = default_home() / "logs" / f"{study.experiment}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"log: {log} (Ray, Tune and Lightning output; --verbose shows it here)", flush=True)
    from .progress import quiet_output
    with (quiet_output(str(log)) if log else contextlib.nullcontext(sys.stdout)) as out:
        _launch_trials(study, uri, tracker, exp_id, the_plan, result, storage, address, command,
                       verbose if console == "verbose" else 0, None if console == "verbose" else (out, console))
    return result


def _launch_trials(study, uri, tracker, exp_id, the_plan, result, storage, address, command, verbose, view):
    from .planner import execute_closing

    init_ray(address, study)
    try:
        tracker = tracker or Tracker(uri)
        exp_id = exp_id or tracker.experiment_id(study.experiment, create=True,
                                                   tags={"study": study.name, "profile": study.profile})
        result.experiment_id = exp_id
        spec_text = Path(study.path).read_text() if study.path else None
        execute_closing(tracker, the_plan)
        parent = tracker.start_launch(exp_id, study, command, spec_text)
        result.parent_run_id = parent
        where = view[0] if view else sys.stdout
        print(f"MLflow: {redact(uri)}  experiment {study.experiment!r} (id {exp_id}), launch run {parent}", file=where)
        if uri.startswith("http"):
            print(f"  open {ui_url(uri, exp_id)}", file=where)
        _run_tune(study, the_plan.pending, tracker, exp_id, parent, result, storage, verbose, view)
    finally:
        import ray
        ray.shutdown()


def _run_tune(study: Study, pending: list, tracker: Tracker, exp_id: str, parent: str, result: LaunchResult,
              storage: Optional[str], verbose: int, view=None):
    """Tune runs the plan's pending trials (`planner.TrialPlan`s); the recorder reopens the runs they keep."""
    from ray import tune

    from .trial import run_trial

    storage_path = storage or str(default_home() / "ray")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    res = study.resources
    trials = []
    for p in pending:
        t = p.trial
        trials.append({"cell": t.cell, "seed": t.seed, "name": t.name, "config": t.config,
                       "checkpoint_every": study.checkpoint_every, "resume_from": p.resume_from,
                       "workers": res["workers"], "cpu": res["cpu"], "gpu": res["gpu"], "storage": storage_path})
    from .recorder import MlflowRecorder

    recorder = MlflowRecorder(tracker, exp_id, parent, study,
                              {(p.trial.cell, p.trial.seed): p.run_id for p in pending if p.run_id}, result)
    progress = None
    if view is not None:
        from .progress import Progress
        progress = Progress(study.cells, trials, result.skipped, "map" if study.task == "detection" else "val_top1",
                            stream=view[0], live=False if view[1] == "lines" else None)
    scheduler = None
    if study.scheduler["type"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        scheduler = ASHAScheduler(time_attr="epoch", metric="map" if study.task == "detection" else "val_top1", mode="max",
                                  max_t=max(p.trial.config["epochs"] for p in pending),
                                  grace_period=study.scheduler.get("grace_period", 1),
                                  reduction_factor=study.scheduler.get("reduction_factor", 3))
    if res["workers"] > 1:  # the trial only waits for its Ray Train workers, which hold the CPUs and GPUs
        from .distributed import TRIAL_CPU
        trainable = tune.with_resources(run_trial, {"cpu": TRIAL_CPU})
    else:
        trainable = tune.with_resources(run_trial, {"cpu": res["cpu"], "gpu": res["gpu"]})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(num_samples=1, scheduler=scheduler, reuse_actors=res["workers"] == 1,
                                    max_concurrent_trials=concurrent_trials(study),
                                    trial_name_creator=lambda tr: tr.config["trial"]["name"],
                                    trial_dirname_creator=lambda tr: f"{tr.config['trial']['name']}-{tr.trial_id}"),
        run_config=tune.RunConfig(
            name=f"{study.experiment}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[recorder] + ([progress] if progress else []), verbose=verbose),
    )
    status = "FINISHED"
    try:
        with progress or contextlib.nullcontext():
            tuner.fit()
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if recorder.open:  # interrupted (Ctrl-C, SIGINT): the launch did not finish its trials
            status = "KILLED"
        recorder.close_open("KILLED")
        if result.failed:
            status = "FAILED" if status == "FINISHED" else status
        tracker.set_tags(parent, {"finished": result.finished, "failed": result.failed,
                                  "killed": result.killed, "skipped": result.skipped})
        tracker.end(parent, status)


# ------------------------------------------------------------------------------------------- status
def status(spec_path: str, profile: Optional[str], tracking_uri: Optional[str]) -> Dict[str, Any]:
    study = load_study(spec_path, profile, deep=False)  # reading the store needs no network or dataset
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    rows = {c: {"finished": 0, "running": 0, "failed": 0, "killed": 0} for c in study.cells}
    exp_id = None
    if store_exists(uri):
        tracker = Tracker(uri)
        exp_id = tracker.experiment_id(study.experiment)
    if exp_id is not None:
        from .planner import records_of

        best: Dict[tuple, str] = {}
        rank = {"FINISHED": 3, "RUNNING": 2, "FAILED": 1, "KILLED": 0, "SCHEDULED": 0}
        seeds = set(study.seeds)  # a cell's runs of other seeds (a study sharing the experiment) are not this study's
        for r in records_of(tracker, exp_id)[0]:
            key = r.key
            if key[0] in rows and key[1] in seeds and rank.get(r.status, 0) >= rank.get(best.get(key, "KILLED"), -1):
                best[key] = r.status
        for (cell, _), st in best.items():
            rows[cell][st.lower() if st.lower() in rows[cell] else "killed"] += 1
    n_seeds = len(study.seeds)
    for c, row in rows.items():
        row["pending"] = n_seeds - row["finished"] - row["running"] - row["failed"] - row["killed"]
    return {"study": study, "experiment_id": exp_id, "uri": uri, "rows": rows}
