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


def test_a_server_store_takes_no_lock_here():
    with study_lock("http://127.0.0.1:5000", "tiny-cpu"):
        with study_lock("http://127.0.0.1:5000", "tiny-cpu"):
            pass
