"""Trials of several workers (`resources.workers`): DDP over Ray Train workers inside the Tune trial, on CPU
with gloo. A real local Ray, a real MLflow store, real Lightning fits."""
import pytest
from mlflow.tracking import MlflowClient

from conftest import small_study
from aa_study.cli import main
from pipelines.data import EpochSampler, batch_slices
from pipelines.spec import SpecError, load_study

WORKERS = """
resources: {cpu: 0.5, gpu: 0, workers: 2}
max_failures: 1
checkpoint_every: 1
"""


def test_batch_slices_cut_each_global_batch_between_the_ranks():
    one = batch_slices(10, 4, False)
    assert one == [(0, 4), (4, 8), (8, 10)]
    for train in (True, False):
        parts = [batch_slices(10, 4, False, (r, 3), train=train) for r in range(3)]
        # together the ranks see what one device sees, batch by batch (train drops a tail smaller than the group)
        got = sorted(i for p in parts for a, b in p for i in range(a, b))
        assert got == (list(range(8)) if train else list(range(10)))
        if train:
            assert len({len(p) for p in parts}) == 1  # every rank takes the same number of steps
    assert batch_slices(8, 4, True, (1, 2)) == [(2, 4), (6, 8)]


def test_epoch_sampler_shards_partition_the_one_device_order():
    whole = list(EpochSampler(12, seed=3, shuffle=True, batch_size=4))
    parts = [list(EpochSampler(12, seed=3, shuffle=True, batch_size=4, shard=(r, 2))) for r in range(2)]
    assert [i for b in range(3) for p in parts for i in p[2 * b:2 * b + 2]] == whole


def test_spec_refuses_impossible_worker_requests(workdir):
    for extra, field in [("resources: {gpu: 0.5, workers: 2}", "resources.gpu"),
                         ("resources: {workers: 0}", "resources.workers"),
                         ("resources: {workers: 3}", "train.batch_size")]:  # 64 is not a multiple of 3
        path = small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1, extra=extra)
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            load_study(path, "cpu")


def test_launch_refuses_more_workers_than_the_machine_has(workdir, capsys):
    path = small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1,
                       extra="resources: {cpu: 1, gpu: 0, workers: 16}")
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resources.cpu: a trial needs 16.01 CPUs (16 workers x 1)" in err
    assert not (workdir / "runs" / "mlflow.db").exists()


@pytest.mark.slow
def test_two_worker_trials_finish_once_and_a_killed_worker_resumes_from_the_checkpoint(workdir, capsys,
                                                                                       monkeypatch, tmp_path):
    path = small_study(workdir, kappa=[0.5], pos_enc=["none", "relative"], epochs=3, extra=WORKERS)
    study = load_study(path, "cpu")
    victim = study.trials[1].cell
    marks = tmp_path / "faults"
    marks.mkdir()
    # rank 1 of one trial dies (os._exit) after epoch 1, once: Tune retries the trial, whose new worker group
    # starts from the epoch-1 checkpoint
    monkeypatch.setenv("AA_STUDY_FAULT", f"{victim}:0=exit@1")
    monkeypatch.setenv("AA_STUDY_FAULT_AFTER_EPOCH", "1")
    monkeypatch.setenv("AA_STUDY_FAULT_ONCE", str(marks))
    assert main(["run", str(path), "--quiet"]) == 0
    assert "2 finished, 0 failed" in capsys.readouterr().out
    c = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny-cpu")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["cell"] for r in runs} == {t.cell for t in study.trials}
    for r in runs:
        hist = c.get_metric_history(r.info.run_id, "val_top1")
        assert [m.step for m in hist] == [1, 2, 3]  # each epoch once: the retry did not train epoch 1 again
        assert r.data.tags["workers"] == "2" and r.data.tags["checkpoint"] and r.data.tags["key_version"] == "1"
        assert 0 <= r.data.metrics["val_top1"] <= 1 and r.data.metrics["images_per_s"] > 0
    hit = next(r for r in runs if r.data.tags["cell"] == victim)
    assert hit.data.tags.get("retries") == "1" and (marks / f"{victim}-0").exists()
    assert all("retries" not in r.data.tags for r in runs if r is not hit)

    # a relaunch runs nothing
    assert main(["run", str(path), "--quiet"]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out


def test_dry_run_plans_without_starting_or_writing_anything(workdir, capsys):
    path = small_study(workdir, kappa=[0.5], pos_enc=["none", "relative"], epochs=3,
                       extra="resources: {cpu: 0.5, gpu: 0, workers: 2}")
    assert main(["run", str(path), "--dry-run", "--rate", "100"]) == 0
    out = capsys.readouterr().out
    assert "2 trials, 0 already finished, 2 to run" in out
    assert "each trial: 2 workers x (cpu 0.5, gpu 0), DDP over 2 processes" in out
    assert "2 CPUs" in out or "trial" in out
    # 3 epochs x 128 images at 100 img/s per worker x 2 workers: 1.92 s a trial
    assert out.count("(rate given, x2 workers; 128 train images)") == 2
    assert "total: 0.0 trial-hours" in out
    assert not (workdir / "runs").exists()  # no store, no Ray storage
    assert main(["run", str(path), "--dry-run"]) == 0  # a rate measured here, on the CPU
    assert "measured on CPU" in capsys.readouterr().out
    assert main(["run", str(path), "--rate", "5"]) == 2
    assert "--rate goes with --dry-run" in capsys.readouterr().err
