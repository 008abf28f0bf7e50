"""How much of a GPU a trial asks Ray for: the study's cap on trials per GPU, spread evenly where GPUs are spare."""
import pytest

from conftest import small_study
from pipelines.launch.resources import gpu_share, local_gpus
from pipelines.spec import load_study


def _study(workdir, gpu, workers=1, cpu=1):
    return load_study(small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1,
                                  extra=f"resources: {{cpu: {cpu}, gpu: {gpu}, workers: {workers}}}"), "cpu")


@pytest.mark.parametrize("gpu,pending,have,share", [
    (0.16, 9, {"GPU": 2, "CPU": 32}, 0.2),      # 5 + 4, not Ray's 6 + 3
    (0.16, 9, {"GPU": 1, "CPU": 16}, 0.16),     # one GPU: the study's cap (6 at once)
    (0.16, 6, {"GPU": 2, "CPU": 32}, 0.3333),   # 3 + 3 (Ray counts shares in 1e-4: 3 x 0.3333 fit)
    (0.25, 3, {"GPU": 4, "CPU": 32}, 1.0),      # a GPU each
    (0.16, 20, {"GPU": 2, "CPU": 32}, 0.16),    # the GPUs are the limit
    (0.16, 9, {"GPU": 2, "CPU": 4}, 0.5),       # the CPUs run 4 at once: 2 + 2
    (0.5, 3, {"GPU": 2, "CPU": 8}, 0.5),        # 2 + 1 is as even as 3 gets
    (1, 9, {"GPU": 2, "CPU": 32}, 1),           # whole GPUs stand
])
def test_gpu_share_spreads_trials_evenly_within_the_studys_cap(workdir, gpu, pending, have, share):
    study = _study(workdir, gpu)
    got = gpu_share(study, pending, have)
    assert got == pytest.approx(share)
    assert got >= gpu  # never less than the study asked for
    per_gpu = int(1 / got + 1e-9)
    assert per_gpu * got <= 1  # as many trials as the share says fit on one GPU
    running = min(pending, have["CPU"], int(1 / gpu + 1e-9) * have["GPU"])
    assert per_gpu * have["GPU"] >= running  # all that can run at once, run at once


def test_trials_of_several_workers_keep_their_share(workdir):
    assert gpu_share(_study(workdir, 1, workers=2, cpu=0.5), 3, {"GPU": 8, "CPU": 32}) == 1


def test_local_gpus_counts_what_ray_would(monkeypatch):
    n = local_gpus()
    assert isinstance(n, int) and n >= 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus() == 0  # hidden GPUs are not counted, as Ray does not count them


def test_mps_is_refused_in_one_line_where_it_cannot_help(workdir, capsys):
    from aa_study.cli import main
    from conftest import store_files

    path = small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1)  # CPU trials
    before = store_files(workdir)
    assert main(["run", str(path), "--mps", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("aa-study run: error: --mps: helps trials that share a GPU; this study's trials take "
                   "resources.gpu 0 (x1 workers)"), err
    assert main(["run", str(path), "--mps", "--address", "127.0.0.1:1"]) == 2
    assert "--mps: for a local Ray only" in capsys.readouterr().err
    assert store_files(workdir) == before
    import ray
    assert not ray.is_initialized()


def test_mps_daemon_lives_exactly_as_long_as_the_launch(workdir, tmp_path, monkeypatch):
    """The daemon's lifecycle, with a stand-in nvidia-cuda-mps-control that logs how it is called (the real one
    needs an NVIDIA GPU; benchmarks/mps_packing.sh runs it on the GPU host)."""
    import os

    from pipelines.launch.resources import Mps

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-cuda-mps-control"
    fake.write_text(f'#!/bin/sh\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat -)" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    mps = Mps(None, _study(workdir, 0.25))
    with mps:
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]  # what the local Ray's processes inherit
        assert os.path.isdir(pipe) and os.path.isdir(os.environ["CUDA_MPS_LOG_DIRECTORY"])
    started, stopped = calls.read_text().splitlines()
    assert started.startswith(f"-d pipe={pipe}") and stopped == f" pipe={pipe} stdin=quit"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not os.path.exists(pipe)


def test_mps_daemon_is_stopped_when_the_launch_is_killed(workdir, tmp_path):
    """SIGKILL leaves no `finally` to run: the launch's watchdog, not the launch, stops the daemon."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-cuda-mps-control"
    fake.write_text(f'#!/bin/sh\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat -)" >> {calls}\n')
    fake.chmod(0o755)
    spec = small_study(workdir, kappa=[0.5], pos_enc=["none"], epochs=1,
                       extra="resources: {cpu: 1, gpu: 0.25, workers: 1}")
    code = ("import os, signal, sys\n"
            "from pipelines.launch.resources import Mps\n"
            "from pipelines.spec import load_study\n"
            "with Mps(None, load_study(sys.argv[1], 'cpu')):\n"
            "    print(os.environ['CUDA_MPS_PIPE_DIRECTORY'], flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("CUDA_MPS_PIPE_DIRECTORY", None)
    driver = subprocess.run([sys.executable, "-c", code, str(spec)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    pipe = driver.stdout.splitlines()[-1]
    deadline = time.time() + 30
    while time.time() < deadline and (os.path.exists(pipe) or len(calls.read_text().splitlines()) < 2):
        time.sleep(0.2)
    started, stopped = calls.read_text().splitlines()
    assert started.startswith(f"-d pipe={pipe}") and stopped == f" pipe={pipe} stdin=quit"
    assert not os.path.exists(os.path.dirname(pipe))  # the launch's folders are gone too


def test_stop_ray_stops_every_process_of_a_local_ray():
    """`driver.stop_ray` kills the autoscaler's monitor first (it takes Ray's whole 1 s grace otherwise), then Ray's
    own shutdown stops the rest: nothing of the local Ray is left running."""
    import ray

    from pipelines.launch.driver import stop_ray

    ray.init(include_dashboard=False, logging_level="ERROR", num_cpus=1)
    node = ray._private.worker._global_node
    procs = [info.process for infos in node.all_processes.values() for info in infos]
    kinds = set(node.all_processes)
    assert {"monitor", "raylet", "gcs_server"} <= kinds, kinds
    stop_ray()
    assert not ray.is_initialized()
    for p in procs:
        p.wait(timeout=10)  # each one exited (a process still running would time out here)
        assert p.poll() is not None


@pytest.mark.parametrize("workers, compile, reuse", [
    (1, False, True), (1, True, True), (1, "max-autotune-no-cudagraphs", True),
    (1, "reduce-overhead", False), (1, "max-autotune", False),  # CUDA graphs: a process per trial
    (2, False, False),  # Ray Train trials
])
def test_actors_are_reused_unless_trials_replay_cuda_graphs(workdir, workers, compile, reuse):
    from types import SimpleNamespace

    from pipelines.launch.driver import reuses_actors

    study = _study(workdir, 0, workers=workers)
    trials = [SimpleNamespace(config={**t.config, "compile": compile}) for t in study.trials]
    assert reuses_actors(study, trials) is reuse
