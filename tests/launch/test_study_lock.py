"""The study's lock (tracking.study_lock): one holder at a time, released however the holder ends."""
import subprocess
import sys
import time

import pytest

from pipelines.spec import SpecError
from pipelines.tracking import StudyLocked, study_lock


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    with study_lock(uri, "tiny-cpu"):
        with pytest.raises(StudyLocked, match=r"another launch of this study is running \(host .*, pid \d+"):
            with study_lock(uri, "tiny-cpu"):
                pass
        with study_lock(uri, "other-study"):  # another study of the same store runs beside it
            pass
    with study_lock(uri, "tiny-cpu"):  # released
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pipelines.tracking import study_lock
with study_lock({uri!r}, "tiny-cpu"):
    print("held", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked):
            with study_lock(uri, "tiny-cpu"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with study_lock(uri, "tiny-cpu"):  # SIGKILL released it: no stale lock to clear by hand
        pass


def test_a_launch_whose_checks_fail_leaves_nothing_written(tmp_path):
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    with pytest.raises(SpecError):
        with study_lock(uri, "tiny-cpu", discard_on=(SpecError,)):
            raise SpecError("grid: heads do not divide")
    assert not (tmp_path / "home").exists()


@pytest.mark.slow
def test_a_tracking_server_holds_the_lock_in_the_store_itself(tmp_path):
    """The lock of a study on a tracking server lives in the store (so it holds across machines): a second holder is
    refused naming the first, a dead holder's lock is taken over, and a released lock leaves the name free."""
    import os
    import signal
    import urllib.request

    from mlflow.tracking import MlflowClient

    from conftest import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'srv.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--default-artifact-root", (tmp_path / "art").as_uri()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(uri + "/health", timeout=2).status == 200:
                    break
            except OSError:
                assert time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pipelines.tracking import study_lock
with study_lock({uri!r}, "tiny-cpu"):
    print("held", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked, match=rf"another launch of this study is running \(host .*, pid {holder.pid}"):
            with study_lock(uri, "tiny-cpu"):
                pass
        with study_lock(uri, "other-study"):  # another study of the same store runs beside it
            pass
        holder.kill()  # dies holding it: its pid is gone on this host, so the next launch takes the lock over
        holder.wait()
        with study_lock(uri, "tiny-cpu"):
            with pytest.raises(StudyLocked, match=rf"pid {os.getpid()}"):
                with study_lock(uri, "tiny-cpu"):
                    pass
        with study_lock(uri, "tiny-cpu"):  # released
            pass
        c = MlflowClient(uri)
        assert c.get_experiment_by_name("tiny-cpu.aa-study-lock") is None  # nothing left in the experiment list
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
