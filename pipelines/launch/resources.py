"""What one trial holds (all its workers), how many trials fit at once, and the refusals of a launch that asks for
more than the machine or cluster has: one line each, before Ray starts or anything is written."""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, Optional

from ..spec import Study
from .outcome import LaunchError

TRIAL_CPU = 0.01  # what a Tune trial of several workers holds itself while its workers train (it only waits)


def check_local_resources(address: Optional[str], study: Study) -> None:
    """Without a cluster, a local Ray would hold this machine's devices: refuse what it cannot give, before Ray
    starts or anything (the launch's log included) is written."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    gpus = local_gpus()
    gpu = study.resources["gpu"]
    if gpu > 0 and gpus == 0:
        raise LaunchError(f"resources.gpu: {gpu:g} GPU per trial requested but this machine has no GPU and no "
                          "Ray cluster was given (--address): use the cpu profile or resources: {gpu: 0}")
    _check_fits(study, {"CPU": os.cpu_count() or 1, "GPU": gpus}, "this machine",
                " (give --address of a larger Ray cluster)")


def local_gpus() -> int:
    """The GPUs a local Ray would see here: Ray's own count (NVML, CUDA_VISIBLE_DEVICES), which needs no torch import
    (seconds); torch's where Ray's private helper is not there."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        n = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        return n if visible is None else min(n, len(visible))
    except Exception:  # noqa: BLE001 - a Ray without that helper
        import torch

        return torch.cuda.device_count()


def trial_needs(study: Study) -> Dict[str, float]:
    """The CPUs and GPUs one trial holds while it runs (all its workers)."""
    r = study.resources
    if r["workers"] == 1:
        return {"CPU": r["cpu"], "GPU": r["gpu"]}
    return {"CPU": r["workers"] * r["cpu"] + TRIAL_CPU, "GPU": r["workers"] * r["gpu"]}


def _check_fits(study: Study, have: Dict[str, float], where: str, hint: str = ""):
    r, need = study.resources, trial_needs(study)
    per = f" ({r['workers']} workers x {r['cpu']:g})" if r["workers"] > 1 else ""
    if need["CPU"] > have.get("CPU", 0) + 1e-9:
        raise LaunchError(f"resources.cpu: a trial needs {need['CPU']:g} CPUs{per} but {where} has "
                          f"{have.get('CPU', 0):g}{hint}")
    if r["workers"] > 1 and need["GPU"] > have.get("GPU", 0):
        raise LaunchError(f"resources.workers: a trial needs {need['GPU']:g} GPUs ({r['workers']} workers x 1) but "
                          f"{where} has {have.get('GPU', 0):g}{hint}")


def concurrent_trials(study: Study, have: Optional[Dict[str, float]] = None) -> Optional[int]:
    """How many trials of several workers run at once (None: Tune's own placement decides, for one-worker
    trials). Set, because such a trial holds almost nothing itself: Tune would otherwise start every trial
    and leave their worker groups waiting for each other's GPUs."""
    if study.resources["workers"] == 1:
        return None
    if have is None:
        import ray
        have = ray.cluster_resources()
    return max(1, trials_that_fit(study, have))


def trials_that_fit(study: Study, have: Dict[str, float]) -> int:
    """How many trials the CPUs and GPUs in `have` hold at once."""
    need = trial_needs(study)
    fits = [int(have.get(k, 0) // need[k]) for k in ("CPU", "GPU") if need[k] > 0]
    return max(0, min(fits)) if fits else 0


def gpu_share(study: Study, pending: int, have: Optional[Dict[str, float]] = None) -> float:
    """The GPU share each one-worker trial asks Ray for. `resources.gpu` below 1 says how many trials may share a
    GPU at most (0.16: six); Ray fills one GPU before the next, so with GPUs to spare the share grows to spread
    the trials evenly: 9 trials at 0.16 on 2 GPUs ask 0.2 each (5 + 4, not 6 + 3). Where the GPUs are the limit,
    or a trial takes whole GPUs, the study's share stands. Trials see one GPU either way: results do not change."""
    r = study.resources
    if r["workers"] > 1 or not 0 < r["gpu"] < 1 or pending < 1:
        return r["gpu"]
    if have is None:
        import ray
        have = ray.cluster_resources()
    gpus = int(have.get("GPU", 0))
    most = int(1 / r["gpu"] + 1e-9)  # trials per GPU the study allows
    running = min(pending, int(have.get("CPU", 0) // r["cpu"])) if r["cpu"] > 0 else pending  # CPUs may limit
    per_gpu = min(most, -(-max(running, 1) // gpus)) if gpus else most
    if per_gpu >= most:  # no GPU to spare
        return r["gpu"]
    return max(r["gpu"], math.floor(10000 / per_gpu) / 10000)  # Ray counts GPU shares in 1e-4


class Mps:
    """`aa-study run --mps`: an NVIDIA MPS control daemon for the launch, so that the processes of trials sharing a
    GPU run their kernels side by side instead of taking turns (time-slicing). Measured on an H100: the quickstart
    gpu study, six trials at a time, 188 s with MPS against 238 s without, each trial's top-1 the same to the last
    digit (benchmarks/results/h100-2026-11-26-launch.md). Refused in one line, before Ray starts, where it cannot
    help; its pipe and log folders are the launch's own (a temporary folder), its environment is the Ray
    processes' (set before Ray starts), and it is stopped (`quit`) when the launch ends, however it ends: a
    watchdog process, in a session of its own, holds the read end of a pipe whose write end only the driver
    holds; when the driver closes it or dies (SIGKILL included), the watchdog stops the daemon and removes its
    folders."""

    # the watchdog: wait for the driver's end of stdin to close, then quit the daemon and remove its folders
    WATCHDOG = ("import os, shutil, subprocess, sys\n"
                "sys.stdin.buffer.read()\n"
                "exe, d = sys.argv[1], sys.argv[2]\n"
                "env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=os.path.join(d, 'pipe'),"
                " CUDA_MPS_LOG_DIRECTORY=os.path.join(d, 'log'))\n"
                "try:\n"
                "    subprocess.run([exe], input='quit\\n', env=env, capture_output=True, text=True, timeout=60)\n"
                "finally:\n"
                "    shutil.rmtree(d, ignore_errors=True)\n")

    def __init__(self, address: Optional[str], study: Optional[Study]):
        """study None: the study server's daemon, for whatever launches it runs."""
        import shutil

        if address or os.environ.get("RAY_ADDRESS"):
            raise LaunchError("--mps: for a local Ray only (on a cluster, run nvidia-cuda-mps-control -d on each node)")
        if study is not None and (not 0 < study.resources["gpu"] < 1 or study.resources["workers"] > 1):
            raise LaunchError(f"--mps: helps trials that share a GPU; this study's trials take resources.gpu "
                              f"{study.resources['gpu']:g} (x{study.resources['workers']} workers)")
        self.exe = shutil.which("nvidia-cuda-mps-control")
        if self.exe is None:
            raise LaunchError("--mps: nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA driver)")
        self.env: Dict[str, str] = {}

    def __enter__(self):
        import subprocess
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="aa-study-mps-")
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(self.dir, "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": os.path.join(self.dir, "log")}
        for d in self.env.values():
            os.makedirs(d)
        self.saved = {k: os.environ.get(k) for k in self.env}
        started = subprocess.run([self.exe, "-d"], env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        if started.returncode != 0:
            self._cleanup()
            raise LaunchError(f"--mps: nvidia-cuda-mps-control -d failed ({(started.stderr or '').strip()[:200]})")
        # stdin's write end stays with this process only (pipes are not inherited across exec: Ray's and the
        # trials' processes do not hold it)
        self.watchdog = subprocess.Popen([sys.executable, "-c", self.WATCHDOG, self.exe, self.dir],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        os.environ.update(self.env)  # inherited by the local Ray's processes, hence by every trial
        print(f"MPS: a daemon for this launch ({self.env['CUDA_MPS_PIPE_DIRECTORY']})", flush=True)
        return self

    def __exit__(self, *exc):
        import subprocess

        self.watchdog.stdin.close()  # the watchdog quits the daemon, as it would if this process were killed
        try:
            self.watchdog.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            subprocess.run([self.exe], input="quit\n", env={**os.environ, **self.env}, capture_output=True,
                           text=True, timeout=60)
        self._cleanup()
        return False

    def _cleanup(self):
        import shutil

        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.dir, ignore_errors=True)
