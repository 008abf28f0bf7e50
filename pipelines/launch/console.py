"""The launch's console: one line per cell, live, instead of Ray's and Lightning's own output.

`Progress` is a Ray Tune callback kept by the driver beside the MLflow recorder. It counts, per cell, the seeds
done, running and failed, and shows the running trials' epoch and latest validation top-1 (mAP for detection),
with the elapsed time and an ETA from the epochs done so far. On a terminal it is a rich `Live` table redrawn
once a second; elsewhere (a pipe, CI, a log) one plain line per finished or failed trial. Everything else the
process writes goes to the launch's log (`output.quiet_output`). Imported once Ray is up: `from ray import tune`
takes seconds, which the driver spends beside Ray's start.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ray import tune

from ..spec import cell_label


@dataclass
class _Cell:
    label: str
    seeds: int
    done: int = 0
    failed: int = 0
    running: Dict[str, tuple] = field(default_factory=dict)  # Tune trial id -> (seed, epoch, metric or None)
    scores: List[float] = field(default_factory=list)


class Progress(tune.Callback):
    def __init__(self, cells: Dict[str, dict], trials: List[dict], skipped: int, metric: str = "val_top1",
                 stream=None, live: Optional[bool] = None):
        self.metric = metric
        self.cells: Dict[str, _Cell] = {}
        for t in trials:
            c = self.cells.setdefault(t["cell"], _Cell(cell_label(cells.get(t["cell"], t["config"])), 0))
            c.seeds += 1
        self.total_epochs = sum(int(t["config"]["epochs"]) for t in trials)
        self.epochs_of = {t["name"]: int(t["config"]["epochs"]) for t in trials}
        self.epochs_done: Dict[str, int] = {}
        self.skipped, self.start = skipped, time.time()
        self.stream = stream or sys.stdout
        self.live_mode = self.stream.isatty() if live is None else live
        self._live = None

    def __getstate__(self):  # Tune pickles its callbacks into the experiment's state: not the console
        return {**self.__dict__, "stream": None, "_live": None}

    # ------------------------------------------------------------------------------------------ view
    def _eta(self) -> str:
        done = sum(self.epochs_done.values())
        if not done or not self.total_epochs:
            return "ETA —"
        left = (time.time() - self.start) * (self.total_epochs - done) / done
        return f"ETA {_hms(left)}"

    def _pct(self, v) -> str:
        return "—" if v is None else f"{v * 100:.1f}"  # top-1 and mAP are fractions; shown in %, as reports do

    def table(self):
        from rich.table import Table

        name = "val top-1 %" if self.metric == "val_top1" else self.metric
        t = Table(title=f"{_hms(time.time() - self.start)} elapsed · {self._eta()}"
                        + (f" · {self.skipped} trials already finished" if self.skipped else ""),
                  title_justify="left", box=None, pad_edge=False)
        for col, just in (("cell", "left"), ("done", "right"), ("running", "right"), ("failed", "right"),
                          (f"finished {name}", "left"), (f"running: seed epoch {name}", "left")):
            t.add_column(col, justify=just)
        for c in self.cells.values():
            run = ", ".join(f"s{s} e{e} {self._pct(m)}" for s, e, m in sorted(c.running.values()))
            fin = " ".join(self._pct(v) for v in c.scores)
            t.add_row(c.label, f"{c.done}/{c.seeds}", str(len(c.running)), str(c.failed) if c.failed else "",
                      fin, run)
        return t

    def __enter__(self):
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self.table, console=Console(file=self.stream), refresh_per_second=1,
                              transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.table(), refresh=True)
            self._live.stop()
        return False

    def _line(self, text: str):
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    # -------------------------------------------------------------------------------------- callback
    def _cell(self, trial) -> _Cell:
        return self.cells[trial.config["trial"]["cell"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._cell(trial).running[trial.trial_id] = (trial.config["trial"]["seed"], 0, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        t = trial.config["trial"]
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.epochs_done[t["name"]] = min(epoch, self.epochs_of.get(t["name"], epoch))
        self._cell(trial).running[trial.trial_id] = (t["seed"], epoch, result.get(self.metric))

    def on_trial_complete(self, iteration, trials, trial, **info):
        c, t = self._cell(trial), trial.config["trial"]
        c.running.pop(trial.trial_id, None)
        c.done += 1
        self.epochs_done[t["name"]] = self.epochs_of.get(t["name"], 0)
        score = (trial.last_result or {}).get(self.metric)
        if score is not None:
            c.scores.append(score)
        finished = sum(x.done for x in self.cells.values())
        total = sum(x.seeds for x in self.cells.values())
        self._line(f"finished {c.label}·s{t['seed']}: {self.metric} {self._pct(score)} % "
                   f"({finished} of {total}, {_hms(time.time() - self.start)} elapsed, {self._eta()})")

    def on_trial_error(self, iteration, trials, trial, **info):
        c, t = self._cell(trial), trial.config["trial"]
        c.running.pop(trial.trial_id, None)
        c.failed += 1
        self.epochs_done[t["name"]] = self.epochs_of.get(t["name"], 0)
        self._line(f"FAILED {c.label}·s{t['seed']} (the error is in its MLflow run and the log)")


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
