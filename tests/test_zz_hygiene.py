"""Runs last (file order): the suite left no Ray or MLflow server process behind."""
import subprocess
import time


def _leftovers():
    out = subprocess.run(["pgrep", "-af", "raylet|gcs_server|mlflow.server|mlflow server"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_no_ray_or_mlflow_process_left():
    deadline = time.time() + 30  # processes of the last test may take a moment to exit
    while _leftovers() and time.time() < deadline:
        time.sleep(1)
    assert not _leftovers()
