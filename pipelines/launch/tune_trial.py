"""The Ray Tune trainable: one trial, on one device (`trial_fit.train_trial`) or as a Ray Train worker group
(`workers.run_workers`). Its own module so that Tune pickles a function whose imports are light."""
from __future__ import annotations

from typing import Any, Dict


def run_trial(config: Dict[str, Any]) -> None:
    from ..settings import process_started, timing_stamp

    timing_stamp("trial process started", process_started())
    timing_stamp("trial function entered")
    import sys

    if "pipelines.launch.trial_fit" in sys.modules:  # imported ahead (the study server's warm_site)
        timing_stamp("trial's imports were done ahead")
    from ray import tune

    t = config["trial"]
    if t["workers"] > 1:
        from .workers import run_workers
        return run_workers(t)
    from .trial_fit import train_trial
    train_trial(t, tune.get_checkpoint(), tune.Checkpoint)
