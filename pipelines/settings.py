"""The training settings, their defaults and checks, and the optimiser recipes: plain data, no torch or Lightning,
so a study can be read and checked (and a relaunch with nothing to run answered) without importing the trainer.
`pipelines/training/fit.py` trains with them; `pipelines/spec.py` validates studies against them."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, NamedTuple, Optional, Tuple


class Architecture(NamedTuple):
    """What training, the spec's checks and detection need to know of one architecture aa_modules builds."""
    takes: Tuple[str, ...]  # the training settings it takes as keyword arguments
    input_size: str  # "hw": its builder takes input_size=(H, W); "side": one int
    detection_backbone: bool  # aa_modules.detection builds a RetinaNet on it


_RESNET = Architecture(("kappa", "upsilon", "num_heads", "pos_enc", "stages", "small_input", "zero_init_residual",
                        "min_key_depth_per_head", "attention_pool_stages", "round_depths_to_heads"), "hw", True)
# The one registry of architecture names (aa_modules imports torch; a test checks it against
# aa_modules.ARCHITECTURES and aa_modules.detection.BACKBONES).
ARCHITECTURES: Dict[str, Architecture] = {
    "aa_resnet18": _RESNET, "aa_resnet34": _RESNET, "aa_resnet50": _RESNET, "aa_resnet101": _RESNET,
    "aa_wide_resnet28_10": Architecture(("kappa", "upsilon", "num_heads", "pos_enc", "min_key_depth_per_head",
                                         "attention_pool_stages", "round_depths_to_heads"), "side", False),
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURES)
POS_ENCODINGS = ("none", "relative", "sine2d", "coordconv")
GRID_AXES = ("arch", "kappa", "upsilon", "num_heads", "pos_enc")  # what a study's grid may vary; a cell's name
# what a detection backbone takes
BACKBONE_KEYS = ("kappa", "upsilon", "num_heads", "pos_enc", "stages", "min_key_depth_per_head", "attention_pool_stages",
                 "round_depths_to_heads")
# What a trial reports each epoch and the recorder logs to MLflow: the results reports read, then what only the
# MLflow UI shows (the learning rate, GPU memory).
RESULT_METRICS = ("val_top1", "val_top5", "val_loss", "train_loss", "params", "gflops", "gflops_conv", "num_classes",
                  "images_per_s", "epoch", "map", "ap50", "ap75", "aps", "apm", "apl")
METRICS = RESULT_METRICS + ("lr", "peak_gpu_mem_gib")


# The settings that decide a trial's network (its layers and their shapes); `network_signature`.
NETWORK_SETTINGS = ("arch", "kappa", "upsilon", "num_heads", "pos_enc", "stages", "small_input",
                    "min_key_depth_per_head", "attention_pool_stages", "round_depths_to_heads")


def network_signature(cfg: Dict[str, Any]) -> tuple:
    """A hashable key of the network a resolved config builds: configs with equal signatures build the same layers
    (the spec's network check and the dry run's estimate build each distinct network once)."""
    return tuple(repr(cfg.get(k)) for k in NETWORK_SETTINGS)


def upsilon_of(kappa, upsilon):
    """υ = d_v / F_out; not given (None), it is tied to κ."""
    return kappa if upsilon is None else upsilon


def arch_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of cfg's architecture, from a resolved classification config; one line (ValueError)
    when a setting asks for something the architecture lacks."""
    arch = ARCHITECTURES[cfg["arch"]]
    if cfg.get("zero_init_residual") and "zero_init_residual" not in arch.takes:
        raise ValueError(f"zero_init_residual is for the AA-ResNets; {cfg['arch']} has no such option")
    kw = {k: cfg[k] for k in arch.takes if k in cfg}
    if kw.get("min_key_depth_per_head", 0) is None:  # null: the architecture's own default
        del kw["min_key_depth_per_head"]
    return kw


def _setting(default, check: Optional[str] = None, doc: str = ""):
    """A training setting: its default, the spec's type check (positive_int, str, dict, bool, list; None: checked
    elsewhere) and what it means."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass
class TrainConfig:
    """Every training setting, with its default, type check and meaning: the one definition. A trial's config
    travels as the plain dict `asdict(TrainConfig(...))` gives (through Ray, into MLflow params and cell keys);
    `DEFAULTS` is that dict of the defaults."""
    task: str = _setting("classification", None, "classification, or detection (RetinaNet; coco, synthetic_coco)")
    arch: str = _setting("aa_resnet18", None, "a grid axis")
    kappa: float = _setting(0.25, None, "a grid axis: d_k / F_out")
    upsilon: Optional[float] = _setting(None, None, "a grid axis: d_v / F_out; None: tied to kappa")
    num_heads: int = _setting(4, None, "a grid axis")
    pos_enc: str = _setting("relative", None, "a grid axis")
    stages: list = _setting([2, 3, 4], "list", "the ResNet stages whose 3x3 convolutions are augmented")
    small_input: bool = _setting(True, "bool", "CIFAR-style stem (3x3, no max-pool) for small images")
    dataset: str = _setting("synthetic", "str", "a data module's name (pipelines/data/registry.py)")
    data: dict = _setting({}, "dict", "the data module's options (root, task, image_size, ...)")
    epochs: int = _setting(5, "positive_int")
    batch_size: int = _setting(128, "positive_int", "the global batch (split between workers)")
    recipe: str = _setting("cifar", "str", "an optimiser recipe (RECIPES)")
    optim: dict = _setting({}, "dict", "overrides of the recipe (base_lr, momentum, nesterov, weight_decay, ...)")
    seed: int = _setting(0, None, "set by the study's seeds")
    device: str = _setting("auto", "str", "auto | cpu | cuda")
    compile: Any = _setting(False, None, "torch.compile the network: true (torch.compile's default mode), false, or a "
                                         "mode (COMPILE_MODES): reduce-overhead adds CUDA graphs")
    limit_train_batches: Optional[float] = _setting(None, None, "Lightning's, for smoke runs")
    grad_clip: Optional[float] = _setting(None, None, "clip the gradient norm to this value (None: no clipping)")
    # deterministic algorithms (torch.use_deterministic_algorithms, cuBLAS workspace, no cuDNN autotuning), so a
    # trial's result is a function of its cell and seed, not of what shares its GPU; None: on for classification,
    # off for detection (RetinaNet's losses not yet checked under it on the GPU)
    deterministic: Optional[bool] = _setting(None, "bool", "deterministic algorithms; None: on for classification")
    zero_init_residual: bool = _setting(False, "bool", "AA-ResNets: each residual branch's last BatchNorm starts at 0")
    # the paper's networks: at least 20 key dimensions per head (d_k = max(kappa F_out, 20 N_h) where kappa > 0)
    min_key_depth_per_head: Optional[int] = _setting(None, None, "at least this many key dimensions per head in every "
                                                     "augmented layer (the paper's 20); null: the architecture's own "
                                                     "(AA-WRN 20, AA-ResNets none)")
    # the paper's ImageNet networks: stage 2's attention (28 x 28 at 224 px) on a 3x3 stride-2 average-pooled map
    attention_pool_stages: list = _setting([], "list", "stages (AA-WRN: groups 1-3) whose attention runs on its input "
                                                       "average-pooled 3x3 with stride 2 and is upsampled bilinearly "
                                                       "back: a quarter of the positions")
    round_depths_to_heads: bool = _setting(False, "bool", "d_k and d_v rounded to the nearest multiple of N_h (at least "
                                                          "N_h) instead of refused where N_h does not divide them: "
                                                          "kappa = 2 upsilon = 0.2 on 128 channels and 8 heads")


DEFAULTS: Dict[str, Any] = asdict(TrainConfig())
TYPE_CHECKS: Dict[str, str] = {f.name: f.metadata["check"] for f in fields(TrainConfig) if f.metadata["check"]}


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
# torch.compile's modes. reduce-overhead replays each compiled graph as a CUDA graph, so the host no longer issues the
# step kernel by kernel: AA-ResNet-50, batch 128 on an H100, 2837 images/s against 1971 eager
# (benchmarks/results/flash-relative/v10/resnet-bounds*.md)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs


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
    elif key == "compile":
        ok = isinstance(value, bool) or (isinstance(value, str) and value in COMPILE_MODES)
        want = f"true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})"
    elif key == "min_key_depth_per_head":
        ok, want = value is None or (_is_int(value) and value >= 0), "an integer >= 0 or null"
    elif key == "attention_pool_stages":
        ok = isinstance(value, list) and all(_is_int(s) and 1 <= s <= 4 for s in value)
        want = "a list of stage numbers 1-4"
    elif key == "base_lr":
        ok, want = value is None or (_is_number(value) and value > 0), "a number > 0"
    else:
        return None
    return None if ok else f"must be {want}; got {value!r}"


def _check_numbers(cfg):
    for key in NUMERIC_SETTINGS + ("compile",):
        problem = setting_problem(key, cfg[key])
        if problem:
            raise ValueError(f"{key} {problem}")
    problem = setting_problem("base_lr", (cfg["optim"] if isinstance(cfg["optim"], dict) else {}).get("base_lr"))
    if problem:
        raise ValueError(f"optim.base_lr (--lr) {problem}")


RECIPES = {
    # Bello et al. CIFAR recipe: lr 0.2 * B / 256, linear warm-up over 5% of the epochs, cosine decay.
    "cifar": dict(base_lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, warmup_frac=0.05, label_smoothing=0.0),
    # A standard ImageNet ResNet recipe: lr 0.1 * B / 256, 5 warm-up epochs (of 90), cosine, smoothing 0.1.
    "imagenet": dict(base_lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_frac=5 / 90,
                     label_smoothing=0.1),
    # RetinaNet's schedule: lr 0.01 for a batch of 16 (= 0.16 per 256), warm-up, weight decay 1e-4.
    "detection": dict(base_lr=0.16, momentum=0.9, nesterov=False, weight_decay=1e-4, warmup_frac=0.05,
                      label_smoothing=0.0),
}


@dataclass
class OptimConfig:
    base_lr: float = 0.1  # learning rate for a batch of 256; scaled linearly with the batch size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_frac: float = 0.05
    label_smoothing: float = 0.0

    @classmethod
    def from_recipe(cls, recipe: str | None = None, **overrides):
        base = dict(RECIPES[recipe]) if recipe else {}
        if recipe and recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}; got {recipe!r}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown optimiser settings: {sorted(unknown)}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


AUGMENT_PRESETS = ("auto", "none", "light", "imagenet")  # ImageFolder augmentation (pipelines/data/images.py)


CHECKPOINT_EVERY = "5m"  # a study's default: a trial loses at most 5 minutes to a crash, and a short one writes one


def checkpoint_policy(value) -> Tuple[str, float]:
    """A study's `checkpoint_every`: an integer of epochs (0: never), or a duration ("90s", "5m", "1h": at the first
    epoch end after that much time since the last one). Always at the last epoch unless 0. Returns ("epochs", n) or
    ("seconds", s); raises ValueError naming what is wrong."""
    import re

    if _is_int(value) and value >= 0:
        return "epochs", float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)\s*", value) if isinstance(value, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"must be an integer of epochs >= 0 (0: no checkpoints) or a duration such as 90s, 5m, 1h; "
                         f"got {value!r}")
    return "seconds", float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def timing_stamp(what: str, at: Optional[float] = None) -> None:
    """With AA_STUDY_TIMING set: one stamped line on stderr (at: the time stamped, default now), from a fit, a
    trial's process or the driver (benchmarks/launch_speed.sh reads them from `aa-study train`'s output and from a
    launch's log, where Ray forwards the trials'). Here, below training and launch alike, so a trial stamps before
    it imports torch."""
    import os

    if os.environ.get("AA_STUDY_TIMING"):
        import sys
        import time

        print(f"[aa-study timing] {time.time() if at is None else at:.3f} {what}", file=sys.stderr, flush=True)


def process_started() -> Optional[float]:
    """When this process started (epoch seconds; Linux's /proc, else None): a trial's stamp of when Ray started its
    process, before any of our code ran in it."""
    try:
        import os

        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, in ticks since boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + start / ticks
    except (OSError, ValueError, StopIteration):
        return None


def augment_preset(augment: str, image_size: int) -> str:
    """The preset ``auto`` stands for: light (pad + crop) below 128 px, imagenet (RandomResizedCrop) from 128."""
    return augment if augment != "auto" else ("imagenet" if image_size >= 128 else "light")
