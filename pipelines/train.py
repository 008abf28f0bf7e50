"""One trial: one Lightning fit of one AA network on one data module. `aa-study train` and every study trial
run this same function."""
from __future__ import annotations

import copy
import os
import math
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch

from .data import DETECTION_DATASETS, DataError, make_datamodule
from .model import ClassificationModule, OptimConfig

DEFAULTS: Dict[str, Any] = {
    "task": "classification",  # or detection (RetinaNet; datasets coco, synthetic_coco)
    "arch": "aa_resnet18",
    "kappa": 0.25,
    "upsilon": None,  # None: tied to kappa
    "num_heads": 4,
    "pos_enc": "relative",
    "stages": [2, 3, 4],
    "small_input": True,
    "dataset": "synthetic",
    "data": {},  # options of the data module (root, task, image_size, ...)
    "epochs": 5,
    "batch_size": 128,
    "recipe": "cifar",
    "optim": {},  # overrides of the recipe (base_lr, momentum, nesterov, weight_decay, warmup_frac, ...)
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "compile": False,
    "limit_train_batches": None,
    "grad_clip": None,  # clip the gradient norm to this value (None: no clipping)
    # deterministic algorithms (torch.use_deterministic_algorithms, cuBLAS workspace, no cuDNN autotuning), so a trial's
    # result is a function of its cell and seed, not of what shares its GPU; None: on for classification, off for
    # detection (RetinaNet's losses not yet checked under it on the GPU)
    "deterministic": None,
    "zero_init_residual": False,  # AA-ResNets: each residual branch's last BatchNorm starts at 0 (ImageNet profiles)
}
ARCH_KEYS = ("kappa", "upsilon", "num_heads", "pos_enc", "stages", "small_input", "zero_init_residual")


def resolve(config: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    if cfg["upsilon"] is None:
        cfg["upsilon"] = cfg["kappa"]
    cfg["deterministic"] = deterministic_mode(cfg)
    if cfg["task"] not in ("classification", "detection"):
        raise ValueError(f"task must be classification or detection; got {cfg['task']!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {cfg['device']!r}")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no GPU is visible")
    _check_numbers(cfg)
    return cfg


def deterministic_mode(cfg: Dict[str, Any]) -> bool:
    """The `deterministic` setting with its default filled in: on for classification, off for detection."""
    d = cfg.get("deterministic")
    if d is None:
        return cfg.get("task", "classification") == "classification"
    if not isinstance(d, bool):
        raise ValueError(f"deterministic must be true, false or null; got {d!r}")
    return d


NONDETERMINISTIC = "does not have a deterministic implementation"


def nondeterministic_error(e: RuntimeError) -> RuntimeError:
    """PyTorch's many-line refusal of an op under deterministic algorithms, as one line naming the op and the way
    out; any other error unchanged."""
    if NONDETERMINISTIC not in str(e):
        return e
    op = str(e).split(NONDETERMINISTIC)[0].strip()
    return RuntimeError(f"deterministic: {op} has no deterministic implementation on this device; set "
                        f"train.deterministic: false to run this study without the same-result guarantee")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NUMERIC_SETTINGS = ("epochs", "batch_size", "seed", "grad_clip", "limit_train_batches")


def setting_problem(key: str, value) -> Optional[str]:
    """What is wrong with a numeric training setting (None: nothing), for `aa-study train` and the spec alike:
    what would otherwise fail deep inside a fit, or train nothing."""
    if key in ("epochs", "batch_size"):
        ok, want = _is_int(value) and value >= 1, "an integer >= 1"
    elif key == "seed":
        ok, want = _is_int(value) and value >= 0, "an integer >= 0"
    elif key == "grad_clip":
        ok, want = value is None or (_is_number(value) and value > 0), "a number > 0 or null"
    elif key == "limit_train_batches":
        ok = value is None or (_is_int(value) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)
        want = "an integer >= 1, a fraction in (0, 1] or null"
    elif key == "base_lr":
        ok, want = value is None or (_is_number(value) and value > 0), "a number > 0"
    else:
        return None
    return None if ok else f"must be {want}; got {value!r}"


def _check_numbers(cfg):
    for key in NUMERIC_SETTINGS:
        problem = setting_problem(key, cfg[key])
        if problem:
            raise ValueError(f"{key} {problem}")
    problem = setting_problem("base_lr", (cfg["optim"] if isinstance(cfg["optim"], dict) else {}).get("base_lr"))
    if problem:
        raise ValueError(f"optim.base_lr (--lr) {problem}")


def build(config: Dict[str, Any]):
    """(datamodule, module, resolved config); checks the data and the network before any training."""
    dm, image_size, cfg = build_data(config)
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    if cfg["task"] == "detection":
        from .detection import DetectionModule

        backbone = {k: cfg[k] for k in ("kappa", "upsilon", "num_heads", "pos_enc", "stages")}
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


def arch_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The network's arguments in a resolved classification config (the wide ResNet has no stages or stem choice)."""
    kw = {k: cfg[k] for k in ARCH_KEYS}
    if cfg["arch"] == "aa_wide_resnet28_10":
        kw.pop("stages"), kw.pop("small_input")
        if kw.pop("zero_init_residual"):
            raise ValueError("zero_init_residual is for the AA-ResNets; aa_wide_resnet28_10 has no such option")
    return kw


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
        distributed: bool = False) -> Dict[str, float]:
    """Train and validate; returns the final epoch's metrics plus params and GFLOPs. ``built``: what
    `build(config)` returned, when the caller has already built (and so checked) the trial. ``distributed``:
    this process is one worker of a Ray Train group (pipelines/distributed.py); DDP over the group, each rank
    training on its part of every global batch of ``batch_size``."""
    dm, module, cfg = built or build(config)
    accel = _accelerator(cfg)
    placement = {"devices": 1}
    if cfg["deterministic"]:
        # read by cuBLAS when it creates a handle; set before the first matmul of this process (Lightning sets it
        # too, but only inside the Trainer, after a reused actor's earlier trial may have made the handle)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if distributed:
        from .distributed import trainer_options
        placement = trainer_options()
    trainer = pl.Trainer(
        accelerator=accel, max_epochs=cfg["epochs"], **placement,
        precision="bf16-mixed" if accel == "gpu" else "32-true",
        callbacks=callbacks or [], logger=logger,
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
    out = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out.update(params=module.profile.params, gflops=module.profile.gflops, gflops_conv=module.profile.gflops_conv)
    return out
