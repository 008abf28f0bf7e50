"""What one trial holds (all its workers), how many trials fit at once, and the refusals of a launch that asks for
more than the machine or cluster has: one line each, before Ray starts or anything is written."""
from __future__ import annotations

import os
from typing import Dict, Optional

from ..spec import Study
from .outcome import LaunchError

TRIAL_CPU = 0.01  # what a Tune trial of several workers holds itself while its workers train (it only waits)


def check_local_resources(address: Optional[str], study: Study) -> None:
    """Without a cluster, a local Ray would hold this machine's devices: refuse what it cannot give, before Ray
    starts or anything (the launch's log included) is written."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    gpu = study.resources["gpu"]
    if gpu > 0 and torch.cuda.device_count() == 0:
        raise LaunchError(f"resources.gpu: {gpu:g} GPU per trial requested but this machine has no GPU and no "
                          "Ray cluster was given (--address): use the cpu profile or resources: {gpu: 0}")
    _check_fits(study, {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}, "this machine",
                " (give --address of a larger Ray cluster)")


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
