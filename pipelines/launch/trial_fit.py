"""The fit of one trial, in whatever process runs it: `train_trial` runs `pipelines.training.fit.fit` (the same code
path as `aa-study train`) and reports each epoch's metrics, with a checkpoint, to Tune (pipelines/launch/
tune_trial.py calls it) or, in each worker of a Ray Train group, to Ray Train (pipelines/launch/workers.py).

It writes nothing to MLflow: the driver does (pipelines/launch/driver.py, MlflowRecorder). `config["trial"]` holds the
trial's training config, its cell key and seed, and where to resume from (a checkpoint of an earlier
launch); a retry inside one launch resumes from `tune.get_checkpoint()` (several workers: from the Train run's
latest checkpoint).

Fault switch for tests: `AA_STUDY_FAULT="cell[:seed][=kind][@rank],..."` makes the matching trials raise
(kind `raise`, the default), produce a NaN loss (kind `nan`) or kill their process (kind `exit`), in every
worker or only the one of that rank; `AA_STUDY_FAULT_AFTER_EPOCH=N` delays the fault until N epochs have been
reported; with `AA_STUDY_FAULT_ONCE=DIR` a trial's fault fires once (a marker file in DIR), not on its retries.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch

from ..settings import CHECKPOINT_EVERY, checkpoint_policy, timing_stamp
from .outcome import one_line


class InjectedFault(RuntimeError):
    pass


def fault_for(cell: str, seed: int, rank: int = 0):
    spec = os.environ.get("AA_STUDY_FAULT", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, kind = item.partition("=")
        kind, _, on_rank = kind.partition("@")
        c, _, s = target.partition(":")
        if c in (cell, "*") and (not s or int(s) == seed) and (not on_rank or int(on_rank) == rank):
            once = os.environ.get("AA_STUDY_FAULT_ONCE")
            if once:
                marker = os.path.join(once, f"{cell}-{seed}")
                if os.path.exists(marker):
                    return None
                return (kind or "raise", marker)
            return kind or "raise"
    return None


class EpochReport(pl.callbacks.Checkpoint):
    """Reports the epoch's metrics (after the module has logged them) and, as the study's `checkpoint_every` says
    (every n epochs, or at the first epoch end after a duration; always the last epoch), a Lightning checkpoint,
    through `report(metrics, checkpoint_dir, rank)` (Tune's by default; a worker of a
    group reports to Ray Train). A `Checkpoint` subclass so that Lightning calls it after the module's own
    on_train_epoch_end hook, when train_loss and images/s exist."""

    def __init__(self, every, extra: Dict[str, Any], fault=None, fault_after: int = 0, report=None):
        self.policy = checkpoint_policy(every)  # ("epochs", n) or ("seconds", s): settings.checkpoint_policy
        self.since = time.monotonic()
        self.extra, self.fault_after = extra, fault_after
        self.fault, self.marker = fault if isinstance(fault, tuple) else (fault, None)
        self.report = report or _tune_report

    def _fire(self, epoch):
        if self.marker:
            open(self.marker, "w").close()
        if self.fault == "exit":
            os._exit(1)  # a process that dies (a lost node, the OOM killer), not an exception
        raise InjectedFault(f"injected fault (AA_STUDY_FAULT) after epoch {epoch}")

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics.update(epoch=epoch, params=pl_module.profile.params, gflops=pl_module.profile.gflops,
                       gflops_conv=pl_module.profile.gflops_conv, **self.extra)
        if "num_classes" in getattr(pl_module, "hparams", {}):  # classification: reports draw chance level
            metrics["num_classes"] = float(pl_module.hparams["num_classes"])
        if self._due(trainer, epoch):
            self.since = time.monotonic()
            with tempfile.TemporaryDirectory() as d:
                # every rank takes part (Lightning synchronises); rank 0 writes; optimizer too: resumable
                trainer.save_checkpoint(os.path.join(d, "last.ckpt"), weights_only=False)
                self.report(metrics, d, trainer.global_rank)
        else:
            self.report(metrics, None, trainer.global_rank)
        timing_stamp(f"epoch {epoch} reported")
        if self.fault in ("raise", "exit") and epoch >= self.fault_after:
            self._fire(epoch)

    def _due(self, trainer, epoch: int) -> bool:
        kind, every = self.policy
        if not every:
            return False
        if epoch >= trainer.max_epochs:
            return True
        due = epoch % int(every) == 0 if kind == "epochs" else time.monotonic() - self.since >= every
        # every rank of a group must take the same decision (saving is collective): rank 0's clock decides
        return bool(trainer.strategy.broadcast(due, src=0)) if trainer.world_size > 1 else due

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fault == "nan" and trainer.current_epoch >= self.fault_after:
            for p in pl_module.parameters():
                p.data.fill_(float("nan"))
                break


def _tune_report(metrics, checkpoint_dir, rank):
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def train_trial(t: Dict[str, Any], ckpt, checkpoint_cls, rank: int = 0, report=None, placement=None):
    """What trains, in a one-worker trial's process or in each worker of a group: the fit of t, reporting each
    epoch through `report` (Tune's by default), from `ckpt` (a retry's latest) if given, else from the
    checkpoint an earlier launch recorded (opened as `checkpoint_cls`), else from its first epoch."""
    import ray

    from ..training.fit import fit

    torch.set_num_threads(max(1, int(t["cpu"])))
    callback = EpochReport(t.get("checkpoint_every", CHECKPOINT_EVERY),
                           {"node_id": ray.get_runtime_context().get_node_id()},
                           fault_for(t["cell"], t["seed"], rank),
                           int(os.environ.get("AA_STUDY_FAULT_AFTER_EPOCH", "0")), report=report)
    if ckpt is None and t.get("resume_from"):
        path = t["resume_from"]
        if "://" in path or os.path.isdir(path):
            ckpt = checkpoint_cls(path)
        elif rank == 0:  # e.g. a study moved to another machine without its Ray storage
            print(f"checkpoint {path} no longer exists: training {t['name']} from its first epoch")
    if ckpt is None:
        fit(t["config"], callbacks=[callback], placement=placement)
        return
    with ckpt.as_directory() as d:
        problem = checkpoint_problem(os.path.join(d, "last.ckpt"))
        if problem is None:
            fit(t["config"], callbacks=[callback], ckpt_path=os.path.join(d, "last.ckpt"), placement=placement)
            return
    # a truncated or damaged checkpoint (a full disk, a killed copy) would fail every resume the same way: it is
    # set aside, the trial trains from its first epoch, and its run's tags say why (checkpoint_discarded)
    if rank == 0:
        print(f"checkpoint of {t['name']} is unusable ({problem}): training from its first epoch")
    callback.extra["checkpoint_discarded"] = one_line(f"{getattr(ckpt, 'path', ckpt)}: {problem}")
    fit(t["config"], callbacks=[callback], placement=placement)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why a Lightning checkpoint file cannot be resumed from (missing, not a torch zip archive, an entry whose CRC
    fails), or None. Reads the file once; loads nothing."""
    import zipfile

    if not os.path.isfile(path):
        return "no last.ckpt in it"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a readable checkpoint: {e}"
    return None if bad is None else f"entry {bad} is damaged"
