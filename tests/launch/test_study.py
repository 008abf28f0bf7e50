"""A real study: local Ray, sqlite MLflow, Lightning fits on CPU. Runs, params and tags in the store; a
relaunch creates no run; a failing cell is retried, recorded FAILED, and finished by `resume` in the
same run; status and report read the store."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import kill_env, small_study
from aa_study.cli import main
from pipelines.spec import load_study


def _runs(workdir, kind="trial"):
    c = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny-cpu")
    return c, exp, [r for r in c.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("kind") == kind]


@pytest.mark.slow
def test_study_runs_once_resumes_failed_cells_and_reports(tiny_study, workdir, capsys, monkeypatch):
    study = load_study(tiny_study, "cpu")
    bad_cell = study.trials[0].cell
    nan_cell = next(t.cell for t in study.trials if t.cell != bad_cell)

    # 1. One trial raises on every attempt and one produces a NaN loss (the test-only fault switch): each
    #    is retried once (max_failures: 1), then FAILED with its error; the other 6 trials finish.
    monkeypatch.setenv("AA_STUDY_FAULT", f"{bad_cell}:0,{nan_cell}:1=nan")
    assert main(["run", str(tiny_study), "--quiet", "--tracking-uri",
                 f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"]) == 1
    out = capsys.readouterr().out
    assert "6 finished, 2 failed" in out and "injected fault" in out and "loss is nan" in out
    c, exp, trials = _runs(workdir)
    assert len(trials) == 8
    failed = {(r.data.tags["cell"], r.data.tags["seed"]): r for r in trials if r.info.status == "FAILED"}
    assert set(failed) == {(bad_cell, "0"), (nan_cell, "1")}
    assert "injected fault" in failed[(bad_cell, "0")].data.tags["error"]
    assert "NonFiniteLossError: loss is nan at epoch" in failed[(nan_cell, "1")].data.tags["error"]
    assert all(r.data.tags.get("retries") == "1" for r in failed.values())
    _, _, launches = _runs(workdir, "launch")
    assert len(launches) == 1 and launches[0].info.status == "FAILED"
    assert not any(k.startswith(("AA_STUDY", "MLFLOW", "RAY")) for r in trials for k in r.data.params)

    # params and tags line the axes up for the MLflow UI; per-epoch metrics; params and GFLOPs
    parent = launches[0].info.run_id
    for r in trials:
        p, t = r.data.params, r.data.tags
        assert t["mlflow.parentRunId"] == parent and t["study"] == "tiny" and t["kind"] == "trial"
        assert {"arch", "kappa", "upsilon", "num_heads", "pos_enc", "seed"} <= set(p)
        assert p["seed"] == t["seed"] and p["cell"] == t["cell"] and t["ray_trial_id"]
        # readable in the MLflow runs table: a short run name, and a cell label to group by
        assert r.info.run_name == f"κ{float(p['kappa']):g}·h2·{p['pos_enc']}·s{t['seed']}", r.info.run_name
        assert t["cell_label"] == f"aa_resnet18·κ{float(p['kappa']):g}·h2·{p['pos_enc']}"
        if r.info.status == "FINISHED":
            assert t["node_id"]  # reported by the trial with its first epoch
            hist = c.get_metric_history(r.info.run_id, "val_top1")
            assert [m.step for m in hist] == [1, 2]
            assert r.data.metrics["params"] > 0 and r.data.metrics["gflops"] > 0
            # checkpoint_every's default (5m): a 2-epoch trial writes one checkpoint, of its last epoch
            assert t["checkpoint"].endswith("checkpoint_000000")
    cells = {(r.data.params["kappa"], r.data.params["pos_enc"]) for r in trials}
    assert cells == {("0.25", "none"), ("0.25", "relative"), ("0.5", "none"), ("0.5", "relative")}

    # 2. status shows the failed cell
    assert main(["status", str(tiny_study)]) == 0
    status = capsys.readouterr().out
    assert "total" in status and status.splitlines()[-1].split()[1:] == ["6", "0", "2", "0", "0"]

    # 3. resume without the fault: only the failed trial runs, in its own run (no duplicate)
    monkeypatch.delenv("AA_STUDY_FAULT")
    assert main(["resume", str(tiny_study), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 already finished, 2 to run" in out and "2 finished, 0 failed" in out
    # the console: one line per finished trial, then each cell's finished seeds with a CI, the report command
    assert out.count("\nfinished aa_resnet18·κ") == 2 and "(2 of 2," in out
    assert "val_top1 % (mean ± 95% CI, Student t)" in out and "aa_resnet18·κ0.25·h2·relative" in out
    assert "report: aa-study report" in out and "MLflow UI: aa-study ui" in out
    _, _, trials = _runs(workdir)
    assert len(trials) == 8 and all(r.info.status == "FINISHED" for r in trials)
    assert len({(r.data.tags["cell"], r.data.tags["seed"]) for r in trials}) == 8

    # 4. launching again creates no run at all
    assert main(["run", str(tiny_study), "--quiet"]) == 0
    assert "8 already finished, 0 to run" in capsys.readouterr().out
    _, _, trials_after = _runs(workdir)
    _, _, launches = _runs(workdir, "launch")
    assert len(trials_after) == 8 and len(launches) == 2
    # the same cells with fewer seeds (a study sharing the experiment): status counts this study's seeds only
    fewer = workdir / "fewer.yaml"
    fewer.write_text(tiny_study.read_text().replace("seeds: 2", "seeds: 1"))
    assert main(["status", str(fewer)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[1:] == ["4", "0", "0", "0", "0"]

    # 5. the report reads MLflow only
    assert main(["report", str(tiny_study), "--out", str(workdir / "report")]) == 0
    md = (workdir / "report" / "report.md").read_text()
    assert "Table 6" in md and "Figure 5" in md and "PROXY" in md
    assert (workdir / "report" / "figure5.png").stat().st_size > 1000
    assert (workdir / "report" / "table6.tex").read_text().startswith("\\begin{table}")


@pytest.mark.slow
def test_resume_continues_a_failed_trial_from_its_checkpoint(workdir, capsys, monkeypatch):
    path = small_study(workdir, kappa=[0.5], pos_enc=["relative"], epochs=3, extra="checkpoint_every: 1")
    monkeypatch.setenv("AA_STUDY_FAULT", "*")
    monkeypatch.setenv("AA_STUDY_FAULT_AFTER_EPOCH", "2")
    assert main(["run", str(path), "--quiet"]) == 1
    c, _, (run,) = _runs(workdir)
    assert run.info.status == "FAILED" and run.data.tags["checkpoint"].endswith("checkpoint_000001")
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]

    monkeypatch.delenv("AA_STUDY_FAULT")
    assert main(["resume", str(path), "--quiet"]) == 0
    _, _, (again,) = _runs(workdir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed_by"] != run.data.tags["mlflow.parentRunId"]
    # epochs 1 and 2 were not trained again: one value per epoch, epoch 3 added
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_top1")] == [1, 2, 3]


@pytest.mark.slow
def test_driver_sigkilled_mid_study_then_resume_finishes_exactly_once(tiny_study, workdir):
    """A real `aa-study run` process is SIGKILLed while trials run; `aa-study resume` finishes the study:
    exactly cells x seeds FINISHED, none duplicated, none RUNNING, the dead launch closed as KILLED, and
    interrupted trials continued in their own runs."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    tiny_study.write_text(tiny_study.read_text().replace("epochs: 2", "epochs: 3") + "checkpoint_every: 1\n")
    ray_tmp = tempfile.mkdtemp(prefix="aar", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "aa_study.cli"]
    output = workdir / "driver-output.txt"  # shown if no trial starts: why the driver stopped or hung
    driver = subprocess.Popen(cmd + ["run", str(tiny_study), "--quiet"], env=env, cwd=workdir,
                              stdout=output.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until some trial has reported an epoch
            time.sleep(1)
            if driver.poll() is not None:
                pytest.fail(f"the driver ended (exit {driver.returncode}) before any trial reported an epoch: "
                            f"{output.read_text()[-3000:]}")
            # the driver names the store once it is open (its launch run started)
            if "MLflow: " in output.read_text():
                _, _, trials = _runs(workdir)
                if any(r.info.status == "RUNNING" and r.data.metrics.get("epoch") for r in trials):
                    break
        else:
            log = next(iter(sorted((workdir / "runs" / "logs").glob("*.log"))), None)
            pytest.fail(f"no trial started within 240 s; driver output: {output.read_text()[-2000:]}; launch log: "
                        f"{log.read_text()[-3000:] if log else 'none'}")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _, _, before = _runs(workdir)
        assert any(r.info.status == "RUNNING" for r in before)

        done = subprocess.run(cmd + ["resume", str(tiny_study), "--quiet"], env=env, cwd=workdir,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        # through a pipe: the launch's own lines only; Ray's, Tune's and Lightning's output went to the log it named
        log = next(ln for ln in done.stdout.splitlines() if ln.startswith("log: ")).split()[1]
        assert "Trial status" not in done.stdout and "LOCAL_RANK" not in done.stdout
        assert "finished aa_resnet18" in done.stdout and "mean ± 95% CI" in done.stdout
        assert "GPU available" in Path(log).read_text()  # Lightning's banner, forwarded from the trial's worker
        assert "launch phases (s): ray start" in Path(log).read_text()  # where the launch's time went
    finally:
        driver.kill()
        kill_env(f"RAY_TMPDIR={ray_tmp}")  # Ray agents that the killed driver left behind
    _, _, trials = _runs(workdir)
    finished = [r for r in trials if r.info.status == "FINISHED"]
    keys = [(r.data.tags["cell"], r.data.tags["seed"]) for r in finished]
    assert len(finished) == 8 and len(set(keys)) == 8
    assert not [r for r in trials if r.info.status == "RUNNING"]
    _, _, launches = _runs(workdir, "launch")
    assert sorted(r.info.status for r in launches) == ["FINISHED", "KILLED"]
    c = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    for r in finished:  # every epoch recorded, also for the trials continued from a checkpoint
        assert sorted({m.step for m in c.get_metric_history(r.info.run_id, "val_top1")}) == [1, 2, 3]
    assert any(r.data.tags.get("resumed_by") for r in finished)  # interrupted trials continued in their runs



@pytest.mark.slow
def test_asha_scheduler_warns_and_records_early_stops(workdir, capsys):
    path = small_study(workdir, kappa=[0.25], pos_enc=["none", "relative"], epochs=3, extra="""
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
        checkpoint_every: 0
    """)
    assert main(["run", str(path), "--quiet"]) == 0
    assert "early; cells of an ablation are then compared at different budgets" in capsys.readouterr().err
    c, _, trials = _runs(workdir)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        epochs = int(r.data.metrics["epoch"])
        assert ("stopped_early" in r.data.tags) == (epochs < 3)
        assert "checkpoint" not in r.data.tags  # checkpoint_every: 0


@pytest.mark.slow
def test_a_second_launch_of_a_running_study_is_refused(tiny_study, workdir, capsys):
    """Two drivers on one study would take over each other's runs: the second exits 2 before writing."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    ray_tmp = tempfile.mkdtemp(prefix="aad", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    output = workdir / "driver-output.txt"
    driver = subprocess.Popen([sys.executable, "-m", "aa_study.cli", "run", str(tiny_study), "--quiet"], env=env,
                              cwd=workdir, stdout=output.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            time.sleep(1)
            if driver.poll() is not None:
                pytest.fail(f"the first launch ended (exit {driver.returncode}): {output.read_text()[-3000:]}")
            # not before the driver names its store (open, its launch run started)
            if "MLflow: " in output.read_text() and _runs(workdir, "launch")[2]:
                break
        else:
            pytest.fail(f"the first launch never started: {output.read_text()[-3000:]}")
        _, _, before = _runs(workdir)
        assert main(["run", str(tiny_study), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "another launch of this study is running" in err and f"pid {driver.pid}" in err
        _, _, launches = _runs(workdir, "launch")
        assert len(launches) == 1  # the refused launch wrote nothing
    finally:
        driver.kill()
        driver.wait(timeout=30)
        kill_env(f"RAY_TMPDIR={ray_tmp}")


@pytest.mark.slow
def test_resume_sets_a_damaged_checkpoint_aside_and_trains_from_the_first_epoch(workdir, capsys, monkeypatch):
    """A truncated checkpoint (a full disk, a killed copy) no longer fails every resume: the trial trains from its
    first epoch, finishes, and its run says which checkpoint was set aside and why."""
    path = small_study(workdir, kappa=[0.5], pos_enc=["relative"], epochs=3, extra="checkpoint_every: 1")
    monkeypatch.setenv("AA_STUDY_FAULT", "*")
    monkeypatch.setenv("AA_STUDY_FAULT_AFTER_EPOCH", "2")
    assert main(["run", str(path), "--quiet"]) == 1
    c, _, (run,) = _runs(workdir)
    ckpt = Path(run.data.tags["checkpoint"]) / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])

    monkeypatch.delenv("AA_STUDY_FAULT")
    assert main(["resume", str(path), "--quiet"]) == 0
    _, _, (again,) = _runs(workdir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert "not a readable checkpoint" in again.data.tags["checkpoint_discarded"]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_top1")][-3:] == [1, 2, 3]


@pytest.mark.slow
def test_two_launches_started_a_second_apart_run_each_trial_once(workdir):
    """Two `aa-study run` processes of one study, started a second apart: the first takes the study's lock before
    it plans, the second is refused in one line (exit 2) before it writes anything, and the store ends with each
    cell x seed once."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    path = small_study(workdir, kappa=[0, 0.5], pos_enc=["relative"], epochs=2)
    ray_tmp = tempfile.mkdtemp(prefix="aar", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "aa_study.cli", "run", str(path), "--quiet"]
    try:
        first = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        second = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=600)
        out, err = first.communicate(timeout=600)
    finally:
        kill_env(f"RAY_TMPDIR={ray_tmp}")
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2, (second.stdout[-1000:], second.stderr[-1000:])
    assert second.stderr.strip().count("\n") == 0 and "another launch of this study is running" in second.stderr
    _, _, trials = _runs(workdir)
    keys = sorted((r.data.tags["cell"], r.data.tags["seed"]) for r in trials)
    assert len(keys) == 2 and len(set(keys)) == 2 and all(r.info.status == "FINISHED" for r in trials)
