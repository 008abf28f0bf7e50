"""The study driver: a validated spec → the trials not yet FINISHED in MLflow → Ray Tune → MLflow.

Order of a launch (`aa-study run` / `resume`), so that a mistake is named before anything is written:
  1. the spec is parsed (pipelines.spec) and the tracking URI checked (a server answers /health; a sqlite path is
     creatable); the planner (pipelines/launch/planner.py) reads the store without MLflow and decides each trial:
     done (FINISHED, skipped), continue (from its run's last checkpoint), retry, fresh, or the whole launch refused
     (another live driver). Nothing left to run: the launch ends here, in about a second;
  2. this machine's GPUs (as Ray counts them) against the study's request, for a local Ray;
  3. three things at once: Ray starts (local, dashboard off) or joins `--address`; the deep checks import torch and
     Lightning, build every network on the meta device and open every dataset; MLflow and Tune are imported. A
     failed check stops Ray and removes the launch's log: nothing stays written;
  4. Tune starts the trials' processes while the store is opened (created if new), runs left RUNNING by a launch
     that died are closed as KILLED and one parent run is started for the launch (in the background); the
     driver's callback writes each trial's run (the only writer of the store), Tune's first events waiting for
     the store if they come before it is open;
  5. Ray stops; the log's last line gives each phase's seconds.

With a study server (`aa-study serve`, pipelines/launch/server.py) the same steps run in the server's process, where
Ray is up already and stays up (`serving()`), and the deep checks run in a thread.

Resume does not call `Tuner.restore`: MLflow is the record of what finished, and each trial's last
checkpoint path is a tag on its run, so any launch continues any unfinished trial from where it stopped,
whichever launch (or machine) started it. Inside one launch, Tune's own retries (max_failures) resume
from `tune.get_checkpoint()`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..settings import CUDA_GRAPH_MODES, process_started, timing_stamp
from ..spec import SpecError, Study, load_study
from .outcome import Background, LaunchError, LaunchResult, one_line  # noqa: F401  (LaunchError: the cli's)
from .resources import Mps, _check_fits, check_local_resources, concurrent_trials, gpu_share
from ..tracking import (StudyLocked, Tracker, check_tracking_uri, default_home, open_reader, redact,
                       resolve_tracking_uri, study_lock, ui_url)


TRIAL_ENV = ("AA_STUDY_FAULT", "AA_STUDY_TIMING")  # the variables that travel from the driver to the trials
_SERVED = False  # set by the study server (pipelines/launch/server.py) in its own process


def serving() -> bool:
    """Whether this process is the study server: Ray is up for good, the deep checks run in a thread."""
    return _SERVED


# ------------------------------------------------------------------------------------------- launch
def prepare(spec_path: str, profile: Optional[str], tracking_uri: Optional[str], deep: bool = False) -> tuple:
    """Steps 1-2: (study, tracking uri). Raises SpecError / TrackingError; writes nothing. The checks that build
    networks and open datasets (`training.checks.check_deep`) run with deep=True, else once a launch knows that
    something is left to run."""
    study = load_study(spec_path, profile)
    if deep:
        check_deep(study)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    return study, uri


def check_deep(study: Study) -> None:
    from ..training.checks import check_deep as deep_checks  # torch: imported once something is left to run

    deep_checks(study)


def init_ray(address: Optional[str], study: Study):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = trial_runtime_env()
    gpu = study.resources["gpu"]  # the local machine was checked by check_local_resources (launch)
    try:
        if address:
            private_ray_token()
            ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env)
        elif not serving():  # the study server's Ray is up already
            start_local_ray(runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LaunchError(f"address: cannot join the Ray cluster at {address!r} ({one_line(e)})") from None
    res = ray.cluster_resources()
    if gpu > 0 and res.get("GPU", 0) <= 0:
        release_ray()
        raise LaunchError(f"resources.gpu: {gpu:g} GPU per trial requested but the Ray cluster has no GPU "
                          "(use the cpu profile or resources: {gpu: 0})")
    try:
        _check_fits(study, res, "the Ray cluster")
    except LaunchError:
        release_ray()
        raise
    if gpu == 0 and study.train.get("device") == "cuda":
        release_ray()
        raise LaunchError("train.device: cuda needs resources.gpu > 0 (Ray hides GPUs from trials that ask for none)")


def private_ray_token(create: bool = False) -> Optional[Path]:
    """Ray's token file (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) readable by its owner only. Ray writes it
    with the process's umask (0644 by default: every user of the node could read the cluster's token); this
    narrows an existing file this user owns to 0600 and, with ``create`` (a local Ray starting with token
    authentication, Ray's default), makes a missing one 0600 before Ray would write it. A token given in
    RAY_AUTH_TOKEN needs no file. Returns the file, or None."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            return None
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another launch made it meanwhile
            return private_ray_token()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return path
    except OSError:
        return None
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        with contextlib.suppress(OSError):
            path.chmod(0o600)
    return path


def trial_runtime_env() -> Optional[dict]:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # the test-only fault switch and the benchmarks' timing switch travel to the trials (launch/trial_fit.py)
    env = {k: v for k, v in os.environ.items() if k.startswith(TRIAL_ENV)}
    return {"env_vars": env} if env else None


def start_local_ray(runtime_env: Optional[dict] = None, warm: bool = False) -> bool:
    """A local Ray, dashboard off. warm (the study server): every Python process of this Ray starts with
    `warm_site` first on its path, whose sitecustomize has Ray's worker processes import what a trial imports before
    they register (AA_STUDY_WARM_WORKERS=1), and Ray starts one idle worker per CPU for its first driver (the
    server), so Tune hands trials processes that have torch and Lightning loaded. The trials' variables
    (AA_STUDY_FAULT*, AA_STUDY_TIMING) then travel in the environment Ray's processes inherit, not in a
    runtime_env: Ray prestarts workers only for a job without one. A launch on its own prestarts none: they would
    start as Tune asks for its trials anyway, and compete with them for the cores. Returns whether Tune's trials can
    get those processes (`_plain_trial_actors`); False without warm."""
    import ray

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "AA_STUDY_WARM_WORKERS")}
    if warm:
        site = str(Path(__file__).with_name("warm_site"))
        os.environ["PYTHONPATH"] = os.pathsep.join([site] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
        os.environ["AA_STUDY_WARM_WORKERS"] = "1"
        trial_runtime_env()  # its variables and defaults (RAY_CHDIR_TO_TRIAL_DIR) go in the inherited environment
        runtime_env = None
        plain = _plain_trial_actors()
    # Ray's notice that token authentication is on, at every start of a local Ray: it would be the one line on
    # stderr beside a deep check's error
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    private_ray_token(create=True)
    try:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env,
                 _system_config={"prestart_worker_first_driver": warm})
    finally:  # Ray's processes have inherited them; the driver's own children (the MPS watchdog, ...) do not
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return warm and plain


def _plain_trial_actors() -> bool:
    """The study server: Tune's trial actors without the runtime_env Tune gives them (ray.tune.execution.class_cache:
    a few variables it sets or passes on), whose variables go instead into the environment that the local Ray's
    processes inherit. Ray gives an actor only an idle process started with the same runtime_env as the actor's, and
    the processes it starts idle for its first driver have none: with Tune's, no trial ever got one (measured here).
    The trials' environment is the same either way. False where this Ray's Tune has no such cache (a trial then
    starts a process of its own, as without the server)."""
    try:
        import ray
        from ray.tune.execution import class_cache
    except ImportError:
        return False
    if not hasattr(class_cache, "_ActorClassCache") or not isinstance(getattr(class_cache, "DEFAULT_ENV_VARS", None),
                                                                      dict):
        return False
    for k, v in class_cache.DEFAULT_ENV_VARS.items():
        os.environ.setdefault(k, v)

    def get(self, trainable_cls):
        if trainable_cls not in self._cache:
            self._cache[trainable_cls] = ray.remote(trainable_cls)
        return self._cache[trainable_cls]

    class_cache._ActorClassCache.get = get
    return True


def idle_workers() -> Optional[int]:
    """The worker processes the local Ray holds idle (named ray::IDLE, children of its raylet); None where unknown."""
    try:
        from ray._private import worker

        raylet = worker._global_node.all_processes["raylet"][0].process.pid
        n = 0
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    if ppid == raylet and (proc / "cmdline").read_bytes().startswith(b"ray::IDLE"):
                        n += 1
                except (OSError, ValueError, IndexError):
                    pass
        return n
    except Exception:  # noqa: BLE001 - Ray's private node handle
        return None


def release_ray() -> None:
    """A launch that refuses after Ray's start: its own local Ray stops; the study server's stays up."""
    import ray

    if not serving() and ray.is_initialized():
        ray.shutdown()


def stop_ray(own: bool = False) -> None:
    """ray.shutdown(), less the second it waits on the local Ray's autoscaler monitor: Ray stops each process it
    started with SIGTERM and waits up to 1 s before SIGKILL, and the monitor takes that whole second (measured here:
    raylet 0.03 s, GCS 0.02 s, monitor 1.02 s of a 1.37 s shutdown). For a local Ray of our own, the monitor has
    nothing to save (no autoscaling, no cluster to hand over): it is killed first. Ray's private node handle; where
    it is missing, the plain shutdown."""
    import ray

    if serving() and not own:  # the study server's Ray outlives its launches (own: the server stops it)
        return
    try:
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.is_head():
            for info in node.all_processes.get("monitor", []):
                info.process.kill()
    except Exception:  # noqa: BLE001 - another Ray's internals: the plain shutdown below does it all
        pass
    ray.shutdown()


def read_plan(study: Study, uri: str, resume: bool = False) -> tuple:
    """(store reader or None, experiment id or None, the launch's `planner.Plan`); reading only: no store is
    created, and an embedded store is read without MLflow (`tracking.open_reader`)."""
    from .planner import driver_alive, make_plan, records_of

    reader = open_reader(uri)
    exp_id = reader.experiment_id(study.experiment) if reader else None
    runs, launches = records_of(reader, exp_id)
    return reader, exp_id, make_plan(study.trials, runs, launches, driver_alive, resume=resume,
                                      launched=exp_id is not None, experiment=study.experiment)


def plan(spec_path: str, profile: Optional[str] = None, tracking_uri: Optional[str] = None,
         address: Optional[str] = None, rate: Optional[float] = None, prepared=None) -> List[str]:
    """`aa-study run --dry-run`: the launch's trials, resources and an estimate; nothing started or written."""
    from .estimate import dry_run

    study, uri = prepared or prepare(spec_path, profile, tracking_uri, deep=True)
    _, _, the_plan = read_plan(study, uri)
    return dry_run(study, [p.trial for p in the_plan.pending], the_plan.done, address, rate)


def launch(spec_path: str, profile: Optional[str] = None, tracking_uri: Optional[str] = None,
           storage: Optional[str] = None, address: Optional[str] = None, resume: bool = False,
           command: str = "", verbose: int = 1, prepared=None, console: str = "verbose",
           mps: bool = False) -> LaunchResult:
    """console: "verbose" (Ray's, Tune's and Lightning's own output on the terminal, Tune's table if verbose),
    "live" (a table of the cells, live on a terminal, one line per finished trial elsewhere) or "lines" (those
    lines only); in both of the latter everything else the launch writes goes to a log file it names. mps: an
    NVIDIA MPS daemon for the launch (`resources.Mps`), so that trials sharing a GPU run kernels side by side.

    The planner (pipelines/launch/planner.py) decides what each trial is; this function only executes its plan."""
    study, uri = prepared or prepare(spec_path, profile, tracking_uri)
    _, exp_id, the_plan = read_plan(study, uri, resume)
    if the_plan.refused:
        raise LaunchError(the_plan.refused)
    if not the_plan.pending:  # nothing to run: answered from the store alone, nothing written
        return _launch_planned(study, uri, exp_id, the_plan, resume, storage, address, command, verbose, console,
                               mps)
    _check_writable(default_home(), "AA_STUDY_HOME (the launch's logs and Ray's trial folders)")
    if storage and "://" not in storage:
        _check_writable(Path(storage).expanduser().resolve(), "--storage")
    # something to run: the study's lock, then the plan again under it (a launch that held it meanwhile may have
    # finished some of these trials); a second launch of the study is refused here, before it writes anything
    try:
        # a launch that ends in an error (a failed check, a refusal of its resources, Ctrl-C) removes the lock file
        # it created, so that a refused launch leaves nothing written
        with study_lock(uri, study.experiment, discard_on=(BaseException,)):
            _, exp_id, the_plan = read_plan(study, uri, resume)
            if the_plan.refused:
                raise LaunchError(the_plan.refused)
            return _launch_planned(study, uri, exp_id, the_plan, resume, storage, address, command, verbose,
                                   console, mps)
    except StudyLocked as e:
        raise LaunchError(str(e)) from None


def _check_writable(folder: Path, what: str) -> None:
    """The folder (or, where it does not exist yet, its nearest existing parent) may be written, or one line
    (LaunchError) before the plan prints or anything starts."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise LaunchError(f"{what}: {folder} cannot be written ({existing} is not a writable folder)")


def _launch_planned(study: Study, uri: str, exp_id, the_plan, resume: bool, storage, address, command: str,
                    verbose: int, console: str, mps: bool) -> LaunchResult:
    """`launch` once its plan is read (under the study's lock where something is to run)."""
    from .planner import Action, execute_closing

    pending = the_plan.pending
    result = LaunchResult(exp_id, None, skipped=the_plan.done)
    again = the_plan.count(Action.CONTINUE) + the_plan.count(Action.RETRY)
    print(f"study {study.name} (profile {study.profile or '-'}): {len(study.cells)} cells x {len(study.seeds)} "
          f"seeds = {len(study.trials)} trials; {result.skipped} already finished, {len(pending)} to run"
          + (f" ({the_plan.count(Action.CONTINUE)} from a checkpoint, {the_plan.count(Action.RETRY)} again "
             "from epoch 1)" if again else ""))
    if not pending:
        if the_plan.close or the_plan.close_launches:
            execute_closing(Tracker(uri), the_plan)
        return result
    check_local_resources(address, study)  # this machine's GPUs as Ray counts them: before Ray starts
    # refused in one line before Ray starts, or started; the study server's (serve --mps) is up already
    daemon = Mps(address, study) if mps and not serving() else None

    if study.scheduler["type"] == "asha":
        print("warning: scheduler asha stops weak trials early; cells of an ablation are then compared at "
              "different budgets (use fifo for ablation tables)", file=sys.stderr)
    home = default_home()
    fresh = [d for d in (home / "logs", home / "ray", home) if not d.exists()]  # removed again if a check fails
    written: List[Path] = []  # what this launch wrote before its checks passed: its log, Tune's folder
    log = None
    if console != "verbose":
        log = home / "logs" / f"{study.experiment}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        written.append(log)
    from .output import quiet_output
    try:
        with (quiet_output(str(log)) if log else contextlib.nullcontext(sys.stdout)) as out, \
                (daemon or contextlib.nullcontext()):
            _launch_trials(study, uri, exp_id, the_plan, result, storage, address, command,
                           verbose if console == "verbose" else 0, None if console == "verbose" else (out, console),
                           log, written)
    except SpecError:  # a deep check failed (Ray had started, Tune perhaps too): nothing stays written
        import shutil

        for path in written + fresh:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return result


def _import_late() -> None:
    """What the launch imports after Ray's start (seconds), in a thread while Ray starts: Tune (needed first), then
    MLflow (needed once the store opens, in the store opening's thread; Tune does not wait for it)."""
    from ray import tune  # noqa: F401
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


class _Checks:
    """The deep checks (`check_deep`) in a process of their own, started before Ray: importing torch and Lightning
    is seconds of Python that, in a thread, would hold the interpreter lock that Ray's start needs (measured on
    the GPU host: Ray's start 3 s alone, 9 s beside the checks in a thread). The driver itself never imports torch."""

    def __init__(self, study: Study, t0: float):
        import multiprocessing as mp
        import threading

        self.t0, self.outcome, self.seconds = t0, None, None
        self._done = threading.Event()
        self._proc = None
        if serving():  # the study server has torch imported and Ray up: a thread, no second interpreter
            conn, child = mp.Pipe(duplex=False)
            threading.Thread(target=_checks_child, args=(study, child), daemon=True, name="aa-study-checks").start()
        else:
            ctx = mp.get_context("spawn")  # a fresh interpreter: no fork of a process that may hold Ray's threads
            conn, child = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(target=_checks_child, args=(study, child), daemon=True, name="aa-study-checks")
            self._proc.start()
            child.close()
        threading.Thread(target=self._wait, args=(conn,), daemon=True).start()  # the pipe's only reader

    def _wait(self, conn) -> None:
        try:
            outcome, ended = conn.recv()
            self.seconds = ended - self.t0
        except (EOFError, OSError):  # the process died without a word (killed, out of memory)
            self._proc.join()
            outcome = ("error", f"the checks' process ended with exit code {self._proc.exitcode}")
        self.outcome = outcome
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def failed(self) -> bool:
        return self.done() and self.outcome[0] != "ok"

    def join(self) -> None:
        self._done.wait()
        kind, msg = self.outcome
        if kind == "spec":
            raise SpecError(msg)
        if kind == "error":
            raise LaunchError(f"the checks of the study failed: {msg}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()


def _checks_child(study: Study, conn) -> None:
    try:
        check_deep(study)
        outcome = ("ok", "")
    except SpecError as e:
        outcome = ("spec", str(e))
    except BaseException as e:  # noqa: BLE001 - sent to the driver, which raises it as one line
        outcome = ("error", one_line(f"{type(e).__name__}: {e}"))
    conn.send((outcome, time.time()))
    conn.close()


def _launch_trials(study, uri, exp_id, the_plan, result, storage, address, command, verbose, view, log=None,
                   written=None):
    """Ray's start, the deep checks (torch: networks on the meta device, datasets opened; in `_Checks`' process) and
    the late imports overlap. Tune starts the trials once Ray is up, the checks perhaps still running (the trials'
    processes then import torch while the checks' process does): the store is opened only once they pass, and a
    failed one stops Tune (`_checks_stop`) and raises its SpecError, after which `launch` removes what was
    written."""
    import ray  # imported here first: the threads below then share none of its imports half-done

    phases = result.phases
    t0 = time.time()
    timing_stamp("driver: process started", process_started())
    timing_stamp("driver: launch begins", t0)
    checks = _Checks(study, t0)
    Background(_import_late, name="aa-study-imports")
    try:
        init_ray(address, study)
        phases["ray start"] = time.time() - t0
        timing_stamp("driver: ray up")
        if checks.done():
            checks.join()  # failed already: a SpecError before Tune starts
        from ray import tune  # noqa: F401  (waits for the thread's import of it, not for MLflow's)
    except BaseException:
        checks.stop()
        release_ray()
        raise
    where = view[0] if view else sys.stdout
    if log:
        print(f"log: {log} (Ray, Tune and Lightning output; --verbose shows it here)", file=where, flush=True)
    try:
        _run_tune(study, uri, exp_id, the_plan, command, result, storage, verbose, view, checks,
                  written if written is not None else [])
    finally:
        checks.stop()
        if serving():  # Ray forwards the trials' last lines to the launch's log within a moment; its stop waits
            time.sleep(0.5)
        if checks.seconds is not None:
            phases["checks"] = checks.seconds
        t = time.time()
        stop_ray()
        phases["ray stop"] = time.time() - t
        phases["launch"] = time.time() - t0
        order = ("ray start", "checks", "store", "trials", "ray stop", "launch")
        print("launch phases (s): " + ", ".join(f"{k} {phases[k]:.2f}" for k in order if k in phases), flush=True)


def _open_store(uri: str, exp_id: Optional[str], study: Study, the_plan, command: str, phases: dict):
    """(tracker, experiment id, parent run id): the store opened, the plan's closings done, the launch run
    started; in the background, while Tune starts the trials."""
    from .planner import execute_closing

    t = time.time()
    tracker = Tracker(uri)
    exp_id = exp_id or tracker.experiment_id(study.experiment, create=True,
                                               tags={"study": study.name, "profile": study.profile})
    execute_closing(tracker, the_plan)
    spec_text = Path(study.path).read_text() if study.path else None
    parent = tracker.start_launch(exp_id, study, command, spec_text)
    phases["store"] = time.time() - t
    timing_stamp("driver: store open")
    return tracker, exp_id, parent


def _run_tune(study: Study, uri: str, exp_id: Optional[str], the_plan, command: str, result: LaunchResult,
              storage: Optional[str], verbose: int, view=None, checks: Optional[_Checks] = None,
              written: Optional[List[Path]] = None):
    """Tune runs the plan's pending trials; the recorder reopens the runs they keep (`Plan.reuse`). `checks`: the
    deep checks, perhaps still running: the store opens after them, and Tune stops if one fails."""
    from ray import tune

    from .recorder import MlflowRecorder
    from .tune_trial import run_trial

    storage_path = storage or str(default_home() / "ray")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    res = study.resources
    pending = the_plan.pending
    trials = []
    for p in pending:
        t = p.trial
        trials.append({"cell": t.cell, "seed": t.seed, "name": t.name, "config": t.config,
                       "checkpoint_every": study.checkpoint_every, "resume_from": p.resume_from,
                       "workers": res["workers"], "cpu": res["cpu"], "gpu": res["gpu"], "storage": storage_path})
    progress = None
    where = view[0] if view else sys.stdout
    if view is not None:
        from .console import Progress
        progress = Progress(study.cells, trials, result.skipped, study.metric,
                            stream=view[0], live=False if view[1] == "lines" else None)

    def opened(exp, parent):
        line = f"MLflow: {redact(uri)}  experiment {study.experiment!r} (id {exp}), launch run {parent}"
        if uri.startswith("http"):
            line += f"\n  open {ui_url(uri, exp)}"
        progress._line(line) if progress else print(line, file=where, flush=True)

    def open_store():
        if checks is not None:
            checks.join()  # its SpecError: raised by the recorder, in the driver's thread; nothing was written
        return _open_store(uri, exp_id, study, the_plan, command, result.phases)

    opening = Background(open_store, name="aa-study-store")
    recorder = MlflowRecorder(opening, study, the_plan.reuse, result, on_open=opened)
    scheduler = None
    if study.scheduler["type"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        scheduler = ASHAScheduler(time_attr="epoch", metric=study.metric, mode="max",
                                  max_t=max(p.trial.config["epochs"] for p in pending),
                                  grace_period=study.scheduler.get("grace_period", 1),
                                  reduction_factor=study.scheduler.get("reduction_factor", 3))
    if res["workers"] > 1:  # the trial only waits for its Ray Train workers, which hold the CPUs and GPUs
        from .resources import TRIAL_CPU
        trainable = tune.with_resources(run_trial, {"cpu": TRIAL_CPU})
    else:
        share = gpu_share(study, len(pending))
        if share != res["gpu"]:
            print(f"GPU share per trial {res['gpu']:g} -> {share:g}: {len(pending)} trials spread evenly over the "
                  f"GPUs (resources.gpu caps the trials per GPU)", file=where, flush=True)
        trainable = tune.with_resources(run_trial, {"cpu": res["cpu"], "gpu": share})
    reuse = reuses_actors(study, [p.trial for p in pending])
    name = f"{study.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    if written is not None and "://" not in storage_path:
        written.append(Path(storage_path) / name)  # removed if a deep check fails
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(num_samples=1, scheduler=scheduler, reuse_actors=reuse,
                                    max_concurrent_trials=concurrent_trials(study),
                                    trial_name_creator=lambda tr: tr.config["trial"]["name"],
                                    trial_dirname_creator=lambda tr: f"{tr.config['trial']['name']}-{tr.trial_id}"),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, stop=_checks_stop(checks),
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[recorder] + ([progress] if progress else []), verbose=verbose),
    )
    # Tune's warning, as fit returns, that the trials a failed deep check stopped left no metrics: several lines on
    # stderr before the check's one-line error, where stderr is not redirected to the launch's log (quiet_output)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    status = "FINISHED"
    t = time.time()
    timing_stamp("driver: tuner.fit called")
    try:
        with progress or contextlib.nullcontext():
            tuner.fit()
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        result.phases["trials"] = time.time() - t
        recorder.finish(status)  # a failed deep check: its SpecError, and nothing written to the store


def reuses_actors(study: Study, trials) -> bool:
    """Whether Tune may run a trial in the process of a finished one (imports and CUDA context kept). Not for Ray Train
    trials (workers > 1), nor where a trial's network replays CUDA graphs (compile: reduce-overhead, max-autotune):
    with torch 2.11, a reused actor's next such trial died once in each of two 9-trial studies (H200, --mps;
    benchmarks/results/compile-studies-2026-11-26)."""
    return study.resources["workers"] == 1 and not any(t.config.get("compile") in CUDA_GRAPH_MODES for t in trials)


def _checks_stop(checks: Optional[_Checks]):
    """A Tune stopper that ends the launch at once if the deep checks, still running when Tune started, fail."""
    from ray import tune

    class ChecksStop(tune.Stopper):
        def __getstate__(self):  # Tune keeps its stopper in the experiment's state: not the thread
            return {}

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            c = getattr(self, "checks", None)
            return c is not None and c.failed()

    stop = ChecksStop()
    stop.checks = checks
    return stop


# ------------------------------------------------------------------------------------------- status
def status(spec_path: str, profile: Optional[str], tracking_uri: Optional[str]) -> Dict[str, Any]:
    study = load_study(spec_path, profile)  # reading the store needs no network or dataset
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, readonly=True)
    rows = {c: {"finished": 0, "running": 0, "failed": 0, "killed": 0} for c in study.cells}
    reader = open_reader(uri)
    exp_id = reader.experiment_id(study.experiment) if reader else None
    if exp_id is not None:
        from .planner import records_of

        best: Dict[tuple, str] = {}
        rank = {"FINISHED": 3, "RUNNING": 2, "FAILED": 1, "KILLED": 0, "SCHEDULED": 0}
        seeds = set(study.seeds)  # a cell's runs of other seeds (a study sharing the experiment) are not this study's
        for r in records_of(reader, exp_id)[0]:
            key = r.key
            if key[0] in rows and key[1] in seeds and rank.get(r.status, 0) >= rank.get(best.get(key, "KILLED"), -1):
                best[key] = r.status
        for (cell, _), st in best.items():
            rows[cell][st.lower() if st.lower() in rows[cell] else "killed"] += 1
    n_seeds = len(study.seeds)
    for c, row in rows.items():
        row["pending"] = n_seeds - row["finished"] - row["running"] - row["failed"] - row["killed"]
    return {"study": study, "experiment_id": exp_id, "uri": uri, "rows": rows}
