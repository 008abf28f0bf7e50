"""A real `mlflow server` as the tracking URI, stopped mid-study and started again: after resume no run and
no final metric is missing, and nothing is duplicated."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from mlflow.tracking import MlflowClient

from conftest import free_port


def _server(db, port, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--default-artifact-root", (cwd / "srv-artifacts").as_uri()],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not start")


def _stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_tracking_server_restarted_mid_study(tiny_study, workdir):
    tiny_study.write_text(tiny_study.read_text().replace("epochs: 2", "epochs: 3"))
    port, db = free_port(), workdir / "srv.db"
    uri = f"http://127.0.0.1:{port}"
    server = _server(db, port, workdir)
    cmd = [sys.executable, "-m", "aa_study.cli"]
    try:
        driver = subprocess.Popen(cmd + ["run", str(tiny_study), "--quiet", "--tracking-uri", uri], cwd=workdir,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        c = MlflowClient(uri)
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(1)
            exp = c.get_experiment_by_name("tiny-cpu")
            if exp and any(r.data.metrics.get("epoch") for r in c.search_runs([exp.experiment_id])):
                break
        _stop(server)  # the store goes away while trials report
        time.sleep(8)
        server = _server(db, port, workdir)
        out, _ = driver.communicate(timeout=900)
        # the driver either rode out the outage (MLflow's HTTP retries) or stopped; resume finishes the study
        done = subprocess.run(cmd + ["resume", str(tiny_study), "--quiet", "--tracking-uri", uri], cwd=workdir,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (out[-2000:], done.stdout[-2000:], done.stderr[-2000:])
        exp = c.get_experiment_by_name("tiny-cpu")
        trials = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
        assert len(trials) == 8 and all(r.info.status == "FINISHED" for r in trials)
        assert len({(r.data.tags["cell"], r.data.tags["seed"]) for r in trials}) == 8
        for r in trials:  # final metrics and every epoch present
            assert r.data.metrics["epoch"] == 3 and "val_top1" in r.data.metrics and r.data.metrics["gflops"] > 0
            assert sorted({m.step for m in c.get_metric_history(r.info.run_id, "val_top1")}) == [1, 2, 3]
    finally:
        if "driver" in locals() and driver.poll() is None:
            driver.kill()
        _stop(server)
