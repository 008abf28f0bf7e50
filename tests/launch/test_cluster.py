"""A two-node Ray cluster on this machine (head and worker started with `ray start` as separate processes on
loopback): a study launched with --address places trials on both nodes; the worker is killed mid-trial;
the trial finishes on the head from its last checkpoint and the run count stays exact."""
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, kill_env, small_study
from pipelines.tracking import SqliteReader

HEAD_PORT, WORKER_NM_PORT = free_port(), free_port()  # Ray's GCS and the worker raylet


def _ray(args, env):
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts"] + args, env=env, capture_output=True,
                          text=True, timeout=120)


def _worker_raylet_pid():
    out = subprocess.run(["pgrep", "-f", f"raylet.*node_manager_port={WORKER_NM_PORT}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, "worker raylet not found"
    return pids[0]


@pytest.mark.slow
def test_two_node_cluster_survives_losing_the_worker(workdir):
    path = small_study(workdir, kappa=[0.25], pos_enc=["none", "relative"], epochs=4, train_samples=768, extra="""
        resources: {cpu: 1, gpu: 0}
        max_failures: 2
        checkpoint_every: 1
    """)
    ray_tmp = tempfile.mkdtemp(prefix="aac", dir="/tmp")
    # Ray 2.60 token auth: a head started with RAY_AUTH_MODE=token needs a token to exist already (it no longer
    # creates ~/.ray/auth_token); give every process of the cluster the same one, as a user must.
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    store = workdir / "runs" / "mlflow.db"
    try:
        head = _ray(["start", "--head", f"--port={HEAD_PORT}", "--num-cpus=1", "--include-dashboard=false",
                     "--disable-usage-stats"], env)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = _ray(["start", f"--address=127.0.0.1:{HEAD_PORT}", "--num-cpus=1",
                       f"--node-manager-port={WORKER_NM_PORT}", "--disable-usage-stats"], env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        driver = subprocess.Popen([sys.executable, "-m", "aa_study.cli", "run", str(path), "--quiet",
                                   "--address", f"127.0.0.1:{HEAD_PORT}"], env=env, cwd=workdir,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # wait until both trials run, on two nodes, and one has a checkpoint; then kill the worker node
        deadline, killed_node = time.time() + 300, None
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            if not store.exists():
                continue
            try:  # read-only, as `aa-study status` reads it, beside the driver that writes it
                reader = SqliteReader(store)
                exp = reader.experiment_id("tiny-cpu")
                runs = reader.run_rows(exp, "trial") if exp else []
            except sqlite3.Error:  # busy: the driver is writing it
                continue
            nodes = {r.tags.get("node_id") for r in runs if r.tags.get("node_id")}
            if len(nodes) == 2 and all(r.status == "RUNNING" and r.tags.get("checkpoint") for r in runs):
                os.kill(_worker_raylet_pid(), signal.SIGKILL)
                killed_node = True
                break
        assert killed_node, "both trials never ran at once on two nodes"
        out, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, out[-3000:]
    finally:
        if "driver" in locals() and driver.poll() is None:
            driver.kill()
        _ray(["stop", "--force"], env)
        kill_env(f"RAY_TMPDIR={ray_tmp}")

    c = MlflowClient(f"sqlite:///{store}")
    exp = c.get_experiment_by_name("tiny-cpu")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    moved = [r for r in runs if len(r.data.tags["nodes"].split(",")) == 2]
    assert len(moved) == 1, [r.data.tags for r in runs]  # the worker's trial finished on the head
    assert moved[0].data.tags["retries"] == "1"
    steps = [m.step for m in c.get_metric_history(moved[0].info.run_id, "val_top1")]
    assert sorted(set(steps)) == [1, 2, 3, 4] and len(steps) <= 5  # continued from its checkpoint
