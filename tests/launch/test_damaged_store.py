"""A damaged store is one line and exit 2 from every command; a store that may only be read serves the commands
that only read it."""
import os
import sqlite3

import pytest

from conftest import TINY_STUDY
from aa_study.cli import main
from pipelines import tracking


def _store_with_rows(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (run_uuid TEXT, status TEXT, payload TEXT)")
    db.executemany("INSERT INTO runs VALUES (?, ?, ?)", [(f"r{i}", "FINISHED", "x" * 500) for i in range(2000)])
    db.commit()
    db.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_one_line_and_exit_2(workdir, capsys, damage):
    home = workdir / "runs"
    home.mkdir()
    db = home / "mlflow.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(5000))
    else:  # a full disk or a killed copy: the first part of a real database
        _store_with_rows(db)
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    before = db.read_bytes()
    (workdir / "tiny.yaml").write_text(TINY_STUDY)
    for argv in (["status"], ["run", "--dry-run"], ["report", "--no-log"], ["run"]):
        assert main([argv[0], str(workdir / "tiny.yaml"), *argv[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert str(db) in err and ("not a readable MLflow store" in err or "damaged" in err), err
    assert db.read_bytes() == before  # looked at, never written


def test_status_reads_a_store_it_may_not_write(workdir, capsys, monkeypatch):
    """A colleague's store or a read-only mount: status answers; run, which writes, is refused in one line. (As root
    every file is writable, so the permission is taken away where the check asks for it.)"""
    import mlflow
    home = workdir / "runs"
    home.mkdir()
    mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").create_experiment("tiny-cpu")  # a real, empty store
    (workdir / "tiny.yaml").write_text(TINY_STUDY)
    real = os.access
    monkeypatch.setattr(tracking.os, "access",
                        lambda p, mode: False if mode == os.W_OK and str(p).startswith(str(home)) else real(p, mode))
    assert main(["status", str(workdir / "tiny.yaml")]) == 0
    capsys.readouterr()
    assert main(["run", str(workdir / "tiny.yaml")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_checkpoint_problem_finds_truncated_and_damaged_checkpoints(tmp_path):
    import torch
    from pipelines.launch.trial_fit import checkpoint_problem
    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(256, 256)}, "epoch": 2}, good)
    assert checkpoint_problem(str(good)) is None
    data = good.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    assert "not a readable checkpoint" in checkpoint_problem(str(cut))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # one bit pattern inside the tensor's bytes: its CRC fails
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(flipped))
    assert "damaged" in checkpoint_problem(str(bad))
    assert checkpoint_problem(str(tmp_path / "missing.ckpt")) == "no last.ckpt in it"


def test_a_home_that_cannot_be_written_is_one_line_before_the_plan(workdir, capsys, monkeypatch):
    """A read-only AA_STUDY_HOME beside a writable store: refused before the plan prints or Ray starts, not a
    PermissionError traceback after it. (As root every folder is writable: the check's answer is taken away.)"""
    from pipelines.launch import driver
    store = workdir / "store"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    home = workdir / "runs"
    real = os.access
    monkeypatch.setattr(driver.os, "access",
                        lambda p, mode: False if str(p).startswith(str(workdir)) and str(p) != str(store)
                        and mode & os.W_OK else real(p, mode))
    (workdir / "tiny.yaml").write_text(TINY_STUDY)
    assert main(["run", str(workdir / "tiny.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "study tiny" not in out, out  # no plan printed
    assert err.strip().count("\n") == 0 and "AA_STUDY_HOME" in err and str(home) in err, err
    assert not home.exists()
