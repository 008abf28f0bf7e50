"""The Ray Tune trainable: one trial, on one device (`trial_fit.train_trial`) or as a Ray Train worker group
(`workers.run_workers`). Its own module so that Tune pickles a function whose imports are light."""
from __future__ import annotations

from typing import Any, Dict


def run_trial(config: Dict[str, Any]) -> None:
    import os
    import time

    if os.environ.get("AA_STUDY_TIMING"):
        print(f"[aa-study timing] {time.time():.3f} trial function entered", flush=True)
    from ray import tune

    t = config["trial"]
    if t["workers"] > 1:
        from .workers import run_workers
        return run_workers(t)
    from .trial_fit import train_trial
    train_trial(t, tune.get_checkpoint(), tune.Checkpoint)
