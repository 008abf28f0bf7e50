"""The launch driver's MLflow writer: a Ray Tune callback fed by Tune's result stream, so the driver is the store's
only writer (pipelines/launch/driver.py). Its own module so that reading a study, or a relaunch with nothing to run,
never imports Ray."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List

from ray import tune

from ..spec import Study, Trial
from .planner import HEARTBEAT_S
from .outcome import Background, LaunchResult, one_line
from ..tracking import Tracker

from ..settings import METRICS as _METRICS


def _error_text(trial) -> str:
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return msg
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    getter = getattr(trial, "get_error", None)
    if callable(getter):
        try:
            return repr(getter())
        except Exception:  # noqa: BLE001 - best effort
            pass
    return "unknown error"


class MlflowRecorder(tune.Callback):
    """A Ray Tune callback that writes each trial's MLflow run from the driver. `opening`: the store being opened in
    the background (`outcome.Background` returning (tracker, experiment id, parent run id)). Tune's events that come
    before it is open (a trial's start, while its process imports) wait in order and are written as soon as it is;
    `finish` waits for it."""

    def __init__(self, opening: Background, study: Study, reuse: Dict[tuple, str], result: LaunchResult,
                 on_open=None):
        self.opening, self.on_open = opening, on_open
        self.tracker, self.exp, self.parent = None, None, None
        self.study, self.reuse, self.result = study, reuse, result
        self.run_of: Dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.nodes: Dict[str, List[str]] = {}
        self.open: set = set()
        self._waiting: List[tuple] = []  # (handler, args) of events before the store was open

    def __getstate__(self):  # Tune pickles its callbacks into the experiment's state: not the thread
        return {**self.__dict__, "opening": None, "on_open": None}

    def _ready(self, block: bool) -> bool:
        if self.tracker is not None:
            return True
        if self.opening is None or not (block or self.opening.ready()):
            return False
        if not block and self.opening.error is not None:  # raised by finish(), in the driver's own frame
            return False
        self.tracker, self.exp, self.parent = self.opening.get()
        self.result.experiment_id, self.result.parent_run_id = self.exp, self.parent
        if self.on_open:
            self.on_open(self.exp, self.parent)
        waiting, self._waiting = self._waiting, []
        for handler, args in waiting:
            handler(*args)
        return True

    def _event(self, handler, *args):
        if self._ready(block=False):
            handler(*args)
        else:
            self._waiting.append((handler, args))

    def finish(self, status: str) -> None:
        """The launch's end: the store open (waited for), runs still open closed as KILLED, the parent run's
        counts and status."""
        self._ready(block=True)
        if self.open:  # interrupted (Ctrl-C, SIGINT): the launch did not finish its trials
            status = "KILLED"
        self.close_open("KILLED")
        if self.result.failed:
            status = "FAILED" if status == "FINISHED" else status
        r = self.result
        self.tracker.set_tags(self.parent, {"finished": r.finished, "failed": r.failed, "killed": r.killed,
                                            "skipped": r.skipped})
        self.tracker.end(self.parent, status)

    def _run(self, trial) -> str:
        if trial.trial_id in self.run_of:
            return self.run_of[trial.trial_id]
        t = trial.config["trial"]
        key = (t["cell"], t["seed"])
        if key in self.reuse:
            rid = self.reuse.pop(key)
            self.tracker.reopen(rid, self.parent)
        else:
            spec_trial = Trial(cell=t["cell"], seed=t["seed"], config=t["config"])
            rid = self.tracker.start_trial(self.exp, self.parent, self.study, spec_trial)
        self.tracker.set_tags(rid, {"ray_trial_id": trial.trial_id})
        self.run_of[trial.trial_id] = rid
        self.open.add(rid)
        return rid

    def on_step_begin(self, iteration, trials, **info):
        if not self._ready(block=False):
            return
        now = time.time()
        if now - getattr(self, "_beat", 0) >= HEARTBEAT_S:
            self._beat = now
            self.tracker.set_tags(self.parent, {"heartbeat": str(int(now))})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(self._on_trial_start, trial)

    def _on_trial_start(self, trial):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._event(self._on_trial_result, trial, result)

    def _on_trial_result(self, trial, result):
        rid = self._run(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k in _METRICS and isinstance(v, (int, float))}
        self.tracker.log_metrics(rid, metrics, step=epoch)
        node = result.get("node_id")
        seen = self.nodes.setdefault(rid, [])
        if node and node not in seen:
            seen.append(node)
            self.tracker.set_tags(rid, {"node_id": node, "nodes": ",".join(seen)})

        if result.get("checkpoint_discarded"):  # the trial's checkpoint was unusable: it trains from epoch 1
            self.tracker.set_tags(rid, {"checkpoint_discarded": str(result["checkpoint_discarded"])})
        if result.get("checkpoint_path"):  # a trial of several workers: Ray Train stored rank 0's checkpoint
            self.tracker.set_tags(rid, {"checkpoint": result["checkpoint_path"]})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._event(self._on_checkpoint, trial, checkpoint)

    def _on_checkpoint(self, trial, checkpoint):
        rid = self._run(trial)
        fs = getattr(checkpoint, "filesystem", None)
        path = checkpoint.path
        if fs is not None and getattr(fs, "type_name", "local") != "local":
            path = f"{fs.type_name}://{path}"
        self.tracker.set_tags(rid, {"checkpoint": path})

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._event(self._on_trial_recover, trial)

    def _on_trial_recover(self, trial):
        rid = self._run(trial)
        retries = getattr(trial, "num_failures", 0)
        self.tracker.set_tags(rid, {"retries": retries, "last_error": one_line(_error_text(trial))})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._event(self._on_trial_complete, trial)

    def _on_trial_complete(self, trial):
        rid = self._run(trial)
        epochs = trial.last_result.get("epoch") if trial.last_result else None
        want = trial.config["trial"]["config"]["epochs"]
        if epochs is not None and epochs < want:
            self.tracker.set_tags(rid, {"stopped_early": f"epoch {epochs} of {want}"})
        self.tracker.end(rid, "FINISHED")
        self.open.discard(rid)
        self.result.finished += 1

    def on_trial_error(self, iteration, trials, trial, **info):
        self._event(self._on_trial_error, trial)

    def _on_trial_error(self, trial):
        rid = self._run(trial)
        err = one_line(_error_text(trial))
        self.tracker.set_tags(rid, {"error": err})
        self.tracker.end(rid, "FAILED")
        self.open.discard(rid)
        self.result.failed += 1
        self.result.errors[trial.config["trial"]["name"]] = err

    def close_open(self, status: str = "KILLED"):
        for rid in list(self.open):
            self.tracker.set_tags(rid, {"killed_reason": "the launch ended before this trial finished"})
            self.tracker.end(rid, status)
            self.result.killed += 1
        self.open.clear()
