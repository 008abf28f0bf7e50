"""One trial: one Lightning fit of one AA network on one data module. `aa-study train` and every study trial
run this same function."""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch

from ..data import DETECTION_DATASETS, DataError, make_datamodule
from .classifier import ClassificationModule
from ..settings import (BACKBONE_KEYS, DEFAULTS, NONDETERMINISTIC, NUMERIC_SETTINGS, OptimConfig,  # noqa: F401
                       _check_numbers, arch_kwargs, deterministic_mode, nondeterministic_error, setting_problem,
                       timing_stamp, upsilon_of)


def resolve(config: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    cfg["upsilon"] = upsilon_of(cfg["kappa"], cfg["upsilon"])
    cfg["deterministic"] = deterministic_mode(cfg)
    if cfg["task"] not in ("classification", "detection"):
        raise ValueError(f"task must be classification or detection; got {cfg['task']!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {cfg['device']!r}")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no GPU is visible")
    _check_numbers(cfg)
    return cfg


def build(config: Dict[str, Any]):
    """(datamodule, module, resolved config); checks the data and the network before any training."""
    dm, image_size, cfg = build_data(config)
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    if cfg["task"] == "detection":
        from .detector import DetectionModule

        backbone = {k: cfg[k] for k in BACKBONE_KEYS}
        optim = OptimConfig.from_recipe(cfg["recipe"], **cfg["optim"])
        module = DetectionModule(cfg["arch"], dm.num_classes, cfg["batch_size"], cfg["epochs"], min_size=dm.min_size,
                                 max_size=dm.max_size, optim=optim.__dict__, arch_kwargs=backbone)
        return dm, module, cfg
    optim = OptimConfig.from_recipe(cfg["recipe"], **cfg["optim"])
    on_gpu = _accelerator(cfg) == "gpu"
    module = ClassificationModule(cfg["arch"], dm.num_classes, dm.in_channels, image_size, cfg["batch_size"],
                                  cfg["epochs"], optim=optim.__dict__, arch_kwargs=arch_kwargs(cfg),
                                  channels_last=on_gpu, compile=cfg["compile"])
    return dm, module, cfg


def build_data(config: Dict[str, Any]):
    """(datamodule, image size, resolved config): the data opened and checked against the model."""
    cfg = resolve(config)
    dm = make_datamodule(cfg["dataset"], batch_size=cfg["batch_size"], seed=cfg["seed"], **cfg["data"])
    dm.check()
    detection = cfg["dataset"] in DETECTION_DATASETS
    if detection != (cfg["task"] == "detection"):
        raise DataError(f"dataset {cfg['dataset']} is for "
                        f"{'detection' if detection else 'classification'}, not task {cfg['task']}")
    return dm, (dm.image_size if detection else _image_size(dm, cfg)), cfg


def _image_size(dm, cfg):
    size = dm.image_size  # known once dm.check() has run
    small = cfg["small_input"]
    if cfg["arch"].startswith("aa_resnet") and small and max(size) > 96:
        raise DataError(f"small_input is for 28-64 px images; this dataset gives {size[0]}x{size[1]}")
    if cfg["arch"].startswith("aa_resnet") and not small and min(size) < 64:
        raise DataError(f"images are {size[0]}x{size[1]}: use small_input: true for the 3x3-stem variant")
    return size


def _accelerator(cfg):
    if cfg["device"] == "cpu" or (cfg["device"] == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "gpu"


def fit(config: Dict[str, Any], callbacks: Optional[List[pl.Callback]] = None, logger=False,
        ckpt_path: Optional[str] = None, enable_progress_bar: bool = False, built=None,
        placement: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """Train and validate; returns the final epoch's metrics plus params and GFLOPs. ``built``: what
    `build(config)` returned, when the caller has already built (and so checked) the trial. ``placement``: the
    Trainer's device and strategy options when this process is one worker of a Ray Train group
    (pipelines/launch/workers.py: DDP over the group, each rank training on its part of every global batch of
    ``batch_size``); default one device."""
    timing_stamp("fit entered")
    dm, module, cfg = built or build(config)
    timing_stamp("data and network built")
    accel = _accelerator(cfg)
    placement = placement or {"devices": 1}
    if cfg["deterministic"]:
        # read by cuBLAS when it creates a handle; set before the first matmul of this process (Lightning sets it
        # too, but only inside the Trainer, after a reused actor's earlier trial may have made the handle)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    trainer = pl.Trainer(
        accelerator=accel, max_epochs=cfg["epochs"], **placement,
        precision="bf16-mixed" if accel == "gpu" else "32-true",
        callbacks=(callbacks or []) + ([_EpochTiming()] if os.environ.get("AA_STUDY_TIMING") else []), logger=logger,
        enable_checkpointing=any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks or []),
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=cfg["limit_train_batches"], deterministic=cfg["deterministic"],
        gradient_clip_val=cfg["grad_clip"],
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except RuntimeError as e:
        one_line = nondeterministic_error(e)
        if one_line is e:
            raise
        raise one_line from None
    finally:
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(False)  # a process-wide switch: leave none behind for the next trial
    timing_stamp("fit done")
    out = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out.update(params=module.profile.params, gflops=module.profile.gflops, gflops_conv=module.profile.gflops_conv)
    return out


class _EpochTiming(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        timing_stamp("first step")

    def on_train_epoch_end(self, trainer, pl_module):
        timing_stamp(f"epoch {trainer.current_epoch + 1} trained")

    def on_validation_epoch_end(self, trainer, pl_module):
        timing_stamp(f"epoch {trainer.current_epoch + 1} validated")
