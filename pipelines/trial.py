"""The Ray Tune trainable: one function of `config`, running `pipelines.train.fit` (the same code path as
`aa-study train`) and reporting each epoch's metrics, with a checkpoint, to Tune.

It writes nothing to MLflow: the driver does (see pipelines/tracking.py). `config["trial"]` holds the
trial's training config, its cell key and seed, and where to resume from (a checkpoint of an earlier
launch); a retry inside one launch resumes from `tune.get_checkpoint()`.

Fault switch for tests: `AA_STUDY_FAULT="cell[:seed][=kind],..."` makes the matching trials raise
(kind `raise`, the default) or produce a NaN loss (kind `nan`); `AA_STUDY_FAULT_AFTER_EPOCH=N` delays the
fault until N epochs have been reported.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import pytorch_lightning as pl
import torch


class InjectedFault(RuntimeError):
    pass


def _fault_for(cell: str, seed: int):
    spec = os.environ.get("AA_STUDY_FAULT", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, kind = item.partition("=")
        c, _, s = target.partition(":")
        if c in (cell, "*") and (not s or int(s) == seed):
            return kind or "raise"
    return None


class TuneReport(pl.callbacks.Checkpoint):
    """Reports the epoch's metrics (after the module has logged them) and every `every` epochs a
    Lightning checkpoint. A `Checkpoint` subclass so that Lightning calls it after the module's own
    on_train_epoch_end hook, when train_loss and images/s exist."""

    def __init__(self, every: int, extra: Dict[str, Any], fault=None, fault_after: int = 0):
        self.every, self.extra, self.fault, self.fault_after = every, extra, fault, fault_after

    def on_train_epoch_end(self, trainer, pl_module):
        from ray import tune

        epoch = trainer.current_epoch + 1
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics.update(epoch=epoch, params=pl_module.profile.params, gflops=pl_module.profile.gflops,
                       gflops_conv=pl_module.profile.gflops_conv, **self.extra)
        if "num_classes" in getattr(pl_module, "hparams", {}):  # classification: reports draw chance level
            metrics["num_classes"] = float(pl_module.hparams["num_classes"])
        last = epoch >= trainer.max_epochs
        if self.every and (epoch % self.every == 0 or last):
            with tempfile.TemporaryDirectory() as d:
                trainer.save_checkpoint(os.path.join(d, "last.ckpt"), weights_only=False)  # optimizer too: resumable
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        if self.fault == "raise" and epoch >= self.fault_after:
            raise InjectedFault(f"injected fault (AA_STUDY_FAULT) after epoch {epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fault == "nan" and trainer.current_epoch >= self.fault_after:
            for p in pl_module.parameters():
                p.data.fill_(float("nan"))
                break


def run_trial(config: Dict[str, Any]) -> None:
    import ray
    from ray import tune

    from .train import fit

    t = config["trial"]
    torch.set_num_threads(max(1, int(t.get("threads", 1))))
    extra = {"node_id": ray.get_runtime_context().get_node_id()}
    fault = _fault_for(t["cell"], t["seed"])
    callback = TuneReport(t.get("checkpoint_every", 1), extra, fault,
                          int(os.environ.get("AA_STUDY_FAULT_AFTER_EPOCH", "0")))
    ckpt = tune.get_checkpoint()
    if ckpt is None and t.get("resume_from"):
        path = t["resume_from"]
        if "://" in path or os.path.isdir(path):
            ckpt = tune.Checkpoint(path)
        else:  # e.g. a study moved to another machine without its Ray storage
            print(f"checkpoint {path} no longer exists: training {t['name']} from its first epoch")
    if ckpt is None:
        fit(t["config"], callbacks=[callback])
        return
    with ckpt.as_directory() as d:
        fit(t["config"], callbacks=[callback], ckpt_path=os.path.join(d, "last.ckpt"))
