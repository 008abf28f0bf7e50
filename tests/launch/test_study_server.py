"""The study server (`aa-study serve`, pipelines/launch/server.py): launches handed to it run on its Ray, give the
result a launch on its own gives, and are sent back to the client where the server would run them differently."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import small_study
from pipelines.launch.server import Server, code_fingerprint

CLI = [sys.executable, "-m", "aa_study.cli"]


def _top1(home):
    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = [r for r in c.search_runs([c.get_experiment_by_name("tiny-cpu").experiment_id])
              if r.data.tags.get("kind") == "trial"]
    return run.info.status, run.data.metrics["val_top1"]


def _idle_workers(sid: int) -> list:
    idle = []
    for pid in _session_processes(sid):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::IDLE"):
                idle.append(pid)
        except OSError:
            pass
    return idle


def _session_processes(sid: int) -> list:
    out = []
    for proc in os.listdir("/proc"):
        try:
            if proc.isdigit() and os.getsid(int(proc)) == sid:
                out.append(int(proc))
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_a_served_launch_runs_on_the_servers_ray_with_the_result_of_a_launch_on_its_own(workdir):
    path = small_study(workdir, kappa=[0.5], pos_enc=["relative"], epochs=1)
    env = dict(os.environ, AA_STUDY_TIMING="1", RAY_DEDUP_LOGS="0")  # every process's stamps, not one of each kind
    env.pop("MLFLOW_TRACKING_URI", None)
    # a launch on its own, in another study folder
    alone = workdir / "alone"
    p = subprocess.run(CLI + ["run", str(path), "--quiet"], env=dict(env, AA_STUDY_HOME=str(alone)),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "study server" not in p.stdout + p.stderr  # none runs for that folder

    home = workdir / "served"
    env["AA_STUDY_HOME"] = str(home)
    out = workdir / "serve.out"
    server = subprocess.Popen(CLI + ["serve"], env=env, stdout=out.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while "ready" not in out.read_text() and server.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert "ready" in out.read_text(), out.read_text()[-3000:]
        second = subprocess.run(CLI + ["serve"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert "already running" in second.stderr
        # the worker processes its Ray started as it started (one per CPU) import a trial's modules, and are named
        # ray::IDLE once they have registered with Ray, after that
        while not _idle_workers(server.pid) and time.time() < deadline:
            time.sleep(0.5)
        p = subprocess.run(CLI + ["run", str(path), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert f"study server (pid {server.pid}) runs this launch" in p.stdout
        assert "done: 1 finished" in p.stdout and "log: " in p.stdout  # the client's terminal got the launch's lines
        (log,) = (home / "logs").glob("*.log")
        text = log.read_text(errors="replace")
        # (pid, what) -> when; Ray prefixes each forwarded line with its process, e.g. "(run_trial pid=123)"; a
        # worker's stamps before the launch went to the server's own output
        stamps = {(m.group(1), m.group(3)): float(m.group(2))
                  for m in re.finditer(r"pid=(\d+)\)\S* \[aa-study timing\] ([\d.]+) (.*)",
                                       out.read_text(errors="replace") + text)}
        (trial_pid,) = {pid for pid, what in stamps if what == "trial function entered"}
        begun = float(re.search(r"\[aa-study timing\] ([\d.]+) driver: launch begins", text).group(1))
        # the trial ran in a process that Ray had started before the launch began, and that had imported torch and
        # Lightning before it was given the trial
        assert stamps[trial_pid, "trial process started"] < begun, stamps
        assert (trial_pid, "trial's imports were done ahead") in stamps, stamps
        assert re.search(r"launch phases \(s\): ray start 0\.0\d, .* ray stop 0\.00,", text)  # the server's Ray, kept
        assert _top1(home) == _top1(alone)

        # Ctrl-C in the client stops the launch it handed over, as it stops its own; the server stays up
        (workdir / "longer").mkdir()
        longer = small_study(workdir / "longer", kappa=[0.5], pos_enc=["relative"], epochs=60)
        before = set((home / "logs").glob("*.log"))
        c = subprocess.Popen(CLI + ["run", str(longer), "--quiet"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        limit = time.time() + 300
        while time.time() < limit and not any("fit entered" in f.read_text(errors="replace")
                                              for f in set((home / "logs").glob("*.log")) - before):
            time.sleep(0.5)
        c.send_signal(signal.SIGINT)
        stdout, _ = c.communicate(timeout=120)
        assert c.returncode == 1 and "done: 0 finished, 0 failed, 1 killed" in stdout, stdout[-2000:]
        assert server.poll() is None

        # a relaunch with other trial variables: the client runs it itself, saying why (nothing left to run)
        p = subprocess.run(CLI + ["run", str(path), "--quiet"], env=dict(env, AA_STUDY_TIMING="0"),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "0 to run" in p.stdout
        assert "study server: AA_STUDY_TIMING differ from its own" in p.stderr
        p = subprocess.run(CLI + ["run", str(path), "--quiet", "--mps"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0 and "0 to run" in p.stdout
        assert "study server: it runs without MPS (aa-study serve --mps)" in p.stderr
        p = subprocess.run(CLI + ["run", str(path), "--quiet"], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "0 to run" in p.stdout and "runs this launch" in p.stdout

        # the store deleted under the server (`rm aa-study-runs/mlflow.db`), then a trial of two Ray Train workers
        (home / "mlflow.db").unlink()
        (workdir / "group").mkdir()
        group = small_study(workdir / "group", kappa=[0.5], pos_enc=["relative"], epochs=1,
                            extra="resources: {cpu: 0.5, gpu: 0, workers: 2}\n")
        p = subprocess.run(CLI + ["run", str(group), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert "runs this launch" in p.stdout and "done: 1 finished" in p.stdout
        with sqlite3.connect(home / "mlflow.db") as db:  # read afresh (this process's MLflow cached the old file)
            trials = db.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                "WHERE t.key = 'kind' AND t.value = 'trial'").fetchall()
        assert trials == [("FINISHED",)]  # the new store's one trial: the deleted one's two are gone with it
        assert "no actor-class cache" not in out.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0
    deadline = time.time() + 20
    while _session_processes(server.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _session_processes(server.pid)  # its Ray and workers stopped with it


def test_the_server_refuses_launches_it_would_run_differently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AA_STUDY_TIMING", raising=False)
    server = Server(tmp_path)
    ok = {"code": server.code, "cwd": str(tmp_path), "same": dict(server.same)}
    assert server._refusal(ok) is None
    assert "code changed" in server._refusal(dict(ok, code="x"))
    assert "serves launches from" in server._refusal(dict(ok, cwd="/"))
    assert "CUDA_VISIBLE_DEVICES differ" in server._refusal(dict(ok, same=dict(ok["same"], CUDA_VISIBLE_DEVICES="7")))


def test_the_code_fingerprint_follows_every_module_file(tmp_path):
    import shutil
    from pathlib import Path

    import pipelines

    root = Path(pipelines.__file__).resolve().parents[1]
    for pkg in ("aa_modules", "aa_study", "pipelines", "reports"):
        shutil.copytree(root / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint(tmp_path)
    assert code_fingerprint(tmp_path) == before
    f = tmp_path / "aa_modules" / "__init__.py"
    f.write_text(f.read_text() + "\n")
    assert code_fingerprint(tmp_path) != before


def test_serve_refuses_in_one_line_what_it_cannot_do(workdir):
    import shutil

    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")
    p = subprocess.run(CLI + ["serve"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "RAY_ADDRESS is set" in p.stderr
    if shutil.which("nvidia-cuda-mps-control") is None:
        p = subprocess.run(CLI + ["serve", "--mps"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nvidia-cuda-mps-control is not on PATH" in p.stderr


def test_a_store_deleted_or_replaced_under_a_long_lived_process_is_opened_anew(tmp_path):
    """The server's process outlives the stores it opens: MLflow's cached store and engine for a deleted sqlite file
    would write into the deleted file ("attempt to write a readonly database"); a replaced one, into the old file."""
    from pipelines.tracking import Tracker, _create_sqlite_store

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    first = Tracker(uri)
    exp = first.experiment_id("before", create=True)
    first.client.create_run(exp)
    path.unlink()  # `rm -rf aa-study-runs` while the server runs
    again = Tracker(uri)
    assert again.experiment_id("before") is None  # the new, empty store, not the cached view of the deleted one
    exp = again.experiment_id("after", create=True)
    run = again.client.create_run(exp)
    again.client.set_terminated(run.info.run_id)
    other = tmp_path / "other.db"  # another store moved into place (a backup restored)
    _create_sqlite_store(other)
    other.replace(path)
    third = Tracker(uri)
    assert third.experiment_id("after") is None
    third.client.create_run(third.experiment_id("restored", create=True))
    assert [e.name for e in third.client.search_experiments()] == ["restored", "Default"]


def test_the_server_says_where_its_trials_cannot_get_the_warm_processes(monkeypatch):
    """The warm path swaps a private Tune class: where this Tune has it, trial actors are plain `ray.remote` classes
    (no runtime_env of Tune's) and Tune's variables are in the environment; where it has not, the server says so
    (start_local_ray's answer, printed beside its ready line) instead of starting trials cold in silence."""
    import ray
    from ray.tune.execution import class_cache

    from pipelines.launch import driver

    class Trainable:  # what Tune registers: a class (a function trainable is wrapped in one)
        pass

    tunes = class_cache._ActorClassCache.get
    assert tunes(class_cache._ActorClassCache(), Trainable)._default_options["runtime_env"]  # Tune's own
    monkeypatch.setattr(class_cache._ActorClassCache, "get", tunes)  # restored after the test
    for k in list(class_cache.DEFAULT_ENV_VARS) + ["RAY_CHDIR_TO_TRIAL_DIR"]:
        monkeypatch.delenv(k, raising=False)  # restored after, as it was
    assert driver._plain_trial_actors() is True
    assert all(os.environ[k] == v for k, v in class_cache.DEFAULT_ENV_VARS.items())
    actor = class_cache._ActorClassCache().get(Trainable)
    assert isinstance(actor, ray.actor.ActorClass)
    assert not actor._default_options.get("runtime_env")
    monkeypatch.delattr(class_cache, "_ActorClassCache")
    assert driver._plain_trial_actors() is False


@pytest.mark.slow
def test_no_client_can_stall_or_stop_the_server(workdir):
    """A client that connects and sends nothing does not hold the server up; a client killed mid-launch with its
    output pipe closed (a closed ssh session) stops its launch, and the server carries on to the next one."""
    import socket

    from pipelines.launch.server import address

    env = dict(os.environ, AA_STUDY_TIMING="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    home = workdir / "served"
    env["AA_STUDY_HOME"] = str(home)
    (workdir / "long").mkdir()
    longer = small_study(workdir / "long", kappa=[0.5], pos_enc=["relative"], epochs=60)
    short = small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1)
    out = workdir / "serve.out"
    server = subprocess.Popen(CLI + ["serve"], env=env, stdout=out.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.time() + 180
        while "ready" not in out.read_text() and server.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert "ready" in out.read_text(), out.read_text()[-3000:]
        silent.connect(address(home))  # and says nothing, for the rest of the test
        c = subprocess.Popen(CLI + ["run", str(longer), "--quiet"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        limit = time.time() + 300
        while time.time() < limit and not any("fit entered" in f.read_text(errors="replace")
                                              for f in (home / "logs").glob("*.log")):
            time.sleep(0.5)
        c.kill()  # the client and the reading end of its output go away together
        c.wait(timeout=30)
        c.stdout.close()
        limit = time.time() + 120
        while time.time() < limit and "ended after" not in out.read_text():
            time.sleep(0.5)
        text = out.read_text()
        assert "its client went away" in text, text[-3000:]
        assert server.poll() is None and "BrokenPipeError" not in text, text[-3000:]
        # the next launch is taken and runs, the silent client still connected
        p = subprocess.run(CLI + ["run", str(short), "--quiet"], env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0 and "runs this launch" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
        with sqlite3.connect(home / "mlflow.db") as db:
            status = dict(db.execute("SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                     "WHERE t.key = 'cell_label'").fetchall())
        assert sorted(status.values()) == ["FINISHED", "KILLED"], status  # nothing left RUNNING
    finally:
        silent.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0
