"""Study specs: YAML → a validated `Study` → the list of trials (cell × seed).

A spec (see studies/*.yaml) names a grid over the network's axes, the seeds, the fixed training settings,
resources per trial and profiles that override any of these. `load_study(path, profile)` reads it with a
safe loader and validates everything that can be checked without Ray or MLflow; any problem raises
`SpecError` with one line that names the field. Nothing is written anywhere.

The cell key (`cell_key`) is a stable hash of a trial's normalised configuration without its seed and
without settings that say *where* or *how fast* rather than *what* (device, data root, compile). It is
what resume deduplicates on and what reports group by. Key version 1: the settings of KEY_V1_SETTINGS are
hashed as they always were, defaults included; a setting added since is hashed only where a study sets it to
something other than its default, so adding a setting whose default keeps the old behaviour changes no key
(and no finished run of an existing store becomes "another cell"). tests/study_definition/golden_cell_keys.json pins the keys of
every shipped study's cells.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .profiles import REPORT_LAYOUTS, choose_profile, experiment_name, merge
from .settings import ARCHITECTURE_NAMES as ARCHITECTURES, CHECKPOINT_EVERY, POS_ENCODINGS, RECIPES, checkpoint_policy
from .settings import DEFAULTS as TRAIN_DEFAULTS, GRID_AXES, TYPE_CHECKS, deterministic_mode, setting_problem, upsilon_of

AXES = GRID_AXES
TOP_KEYS = {"name", "description", "task", "experiment", "report", "grid", "seeds", "train", "resources",
            "max_failures", "scheduler", "profiles", "default_profile", "checkpoint_every"}
PROFILE_KEYS = TOP_KEYS - {"name", "profiles", "default_profile", "task"}
TASKS = ("classification", "detection")
SCHEDULERS = ("fifo", "asha")
NOT_IN_CELL_KEY = ("seed", "device", "compile", "deterministic")
NOT_IN_CELL_KEY_DATA = ("root", "num_workers")  # the same batches whatever the number of loader workers


class SpecError(ValueError):
    """A study spec that cannot run; the message is one line naming the field."""

    def __init__(self, message: str):
        # keys and values come from the user's YAML: show control characters escaped, on one line
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


@dataclass(frozen=True)
class Trial:
    cell: str  # cell key
    seed: int
    config: Dict[str, Any]  # a complete pipelines.training.fit config (seed included)

    @property
    def name(self) -> str:
        c = self.config
        return f"{c['arch']}-k{c['kappa']:g}-u{c['upsilon']:g}-h{c['num_heads']}-{c['pos_enc']}-s{self.seed}"


@dataclass
class Study:
    name: str
    profile: str
    experiment: str
    report: Optional[str]
    description: str
    axes: Dict[str, List[Any]]  # the grid as given (upsilon may be the string "kappa")
    seeds: List[int]
    train: Dict[str, Any]
    resources: Dict[str, float]
    max_failures: int
    scheduler: Dict[str, Any]
    checkpoint_every: Any  # epochs (int) or a duration (str): settings.checkpoint_policy
    task: str = "classification"
    path: Optional[str] = None
    trials: List[Trial] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """The validation metric its trials are compared by (the console, the scheduler, summaries, the UI)."""
        return "map" if self.task == "detection" else "val_top1"

    @property
    def cells(self) -> Dict[str, Dict[str, Any]]:
        out = {}
        for t in self.trials:
            out.setdefault(t.cell, {k: t.config[k] for k in AXES})
        return out


# ------------------------------------------------------------------------------------------ helpers
def _canon(value):
    """Canonical JSON-able form: floats that are integers stay floats (0 and 0.0 hash alike via float())."""
    if isinstance(value, dict):
        return {k: _canon(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    return str(value)


def normalise(config: Dict[str, Any]) -> Dict[str, Any]:
    """A trial config with equivalent settings written one way: κ, υ as floats; a plain convolution
    (κ = υ = 0) has no encoding and no heads, so κ=0 cells of different encodings are one cell."""
    cfg = copy.deepcopy(config)
    cfg["kappa"] = float(cfg["kappa"])
    cfg["upsilon"] = float(upsilon_of(cfg["kappa"], cfg.get("upsilon")))
    if cfg["kappa"] == 0 and cfg["upsilon"] == 0:
        cfg["pos_enc"], cfg["num_heads"] = "none", 1
    if "deterministic" in cfg:  # written out: a run's params say the mode it used
        cfg["deterministic"] = deterministic_mode(cfg)
    if cfg.get("dataset") in ("imagefolder", "imagenet") and isinstance(cfg.get("data"), dict):
        # the augmentation a trial gets, written out: it is in the run's params and in the cell's key
        from .settings import AUGMENT_PRESETS, augment_preset

        data = cfg["data"]
        size, aug = data.get("image_size", 224), data.get("augment", "auto")
        if isinstance(size, int) and aug in AUGMENT_PRESETS:
            data["augment"] = augment_preset(aug, size)
        data.setdefault("flip", True)
    return cfg


# The training settings that key version 1 hashes, defaults included (the DEFAULTS of the day it was frozen).
# Frozen: a new setting goes into pipelines/settings.py: DEFAULTS only, never here.
KEY_V1_SETTINGS = frozenset({"task", "arch", "kappa", "upsilon", "num_heads", "pos_enc", "stages", "small_input",
                             "dataset", "data", "epochs", "batch_size", "recipe", "optim", "seed", "device",
                             "compile", "limit_train_batches", "grad_clip"})
KEY_VERSION = 1


def cell_label(axes: dict, arch: bool = True) -> str:
    """aa_resnet18·κ0.5·h4·relative (υ shown only where it differs from κ; κ = υ = 0: the plain-convolution cell),
    the readable name of a cell; arch=False leaves the architecture out (a study of one architecture)."""
    head = f"{axes['arch']}·" if arch else ""
    if float(axes["kappa"]) == 0 and float(axes["upsilon"]) == 0:
        return f"{head}plain conv"
    ups = "" if float(axes["upsilon"]) == float(axes["kappa"]) else f"·υ{float(axes['upsilon']):g}"
    return f"{head}κ{float(axes['kappa']):g}{ups}·h{axes['num_heads']}·{axes['pos_enc']}"


def run_label(study: "Study", trial: "Trial") -> str:
    """A trial's MLflow run name: its cell's label and seed, short enough for the runs table (κ0.5·h4·relative·s1;
    the architecture only where the study has several)."""
    return f"{cell_label(study.cells[trial.cell], arch=len(set(study.axes.get('arch', []))) > 1)}·s{trial.seed}"


def cell_key(config: Dict[str, Any]) -> str:
    cfg = {k: v for k, v in normalise(config).items() if k not in NOT_IN_CELL_KEY
           and (k in KEY_V1_SETTINGS or _canon(v) != _canon(TRAIN_DEFAULTS.get(k)))}
    cfg["data"] = {k: v for k, v in cfg.get("data", {}).items() if k not in NOT_IN_CELL_KEY_DATA}
    blob = json.dumps(_canon(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _among(x, options) -> bool:
    """x is one of options (False for unhashable or non-string values instead of a TypeError)."""
    return isinstance(x, str) and x in options


def _fail(field_: str, msg: str):
    raise SpecError(f"{field_}: {msg}")


# ----------------------------------------------------------------------------------------- loading
# What a study file may be: far more than any study needs, far less than what stalls a parser or a report.
MAX_STUDY_BYTES = 1 << 20
MAX_STUDY_NODES = 100_000  # values once aliases are expanded (a "billion laughs" file expands past any memory)
MAX_STUDY_DEPTH = 64


def _size_problem(raw) -> Optional[str]:
    """What makes a parsed study too large to handle (its aliases expanded) or too deep, or None. Walks the values
    as the spec's own checks and reports would, stopping at the first limit passed."""
    count, stack = 0, [(raw, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_STUDY_NODES:
            return f"expands to more than {MAX_STUDY_NODES:,} values (aliases repeated?)"
        if depth > MAX_STUDY_DEPTH:
            return f"nests deeper than {MAX_STUDY_DEPTH} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def read_yaml(path, what: str = "a study must be a YAML mapping (name:, grid:, ...)") -> Dict[str, Any]:
    """A study file's mapping, refused in one line (SpecError) before any work where it is missing, over
    MAX_STUDY_BYTES, not UTF-8, holds control characters, is not valid YAML or expands past the limits above."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"study file {path} does not exist")
    size = p.stat().st_size
    if size > MAX_STUDY_BYTES:
        raise SpecError(f"{path}: {size:,} bytes; a study file may have at most {MAX_STUDY_BYTES:,}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    bad = next((c for c in text if ord(c) < 32 and c not in "\t\n\r"), None)
    if bad is not None:
        line = text.count("\n", 0, text.index(bad)) + 1
        raise SpecError(f"{path}: control character {bad!r} at line {line}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: nests too deeply to parse") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: {what}; got {type(raw).__name__}")
    problem = _size_problem(raw)
    if problem:
        raise SpecError(f"{path}: {problem}")
    return raw


def load_study(path, profile: Optional[str] = None) -> Study:
    """The study of a YAML file and profile, with every check that needs no torch. The checks that build things
    (each distinct network on the meta device, the datasets' files) are pipelines/training/checks.py's
    `check_deep`, run once a launch has something to run."""
    raw = read_yaml(path)
    study = parse_study(raw, profile)
    study.path = str(Path(path).resolve())
    return study


def parse_study(raw: Dict[str, Any], profile: Optional[str] = None) -> Study:
    try:
        return _parse_study(raw, profile)
    except SpecError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, OverflowError) as e:  # a shape no check foresaw
        raise SpecError(f"study: malformed spec ({type(e).__name__}: {e})".replace("\n", " ")) from None


def _folder_name(text) -> bool:
    """Can text name one folder (the study's name and experiment become folders of its home): a non-blank string,
    not only dots, without slashes or control characters."""
    return (isinstance(text, str) and bool(text.strip()) and text.strip(".") != ""
            and not any(c in text for c in "/\\") and not any(ord(c) < 32 for c in text))


def _parse_study(raw: Dict[str, Any], profile: Optional[str] = None) -> Study:
    for k in raw:
        if not isinstance(k, str) or k not in TOP_KEYS:
            _fail(str(k), f"unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
    name = raw.get("name")
    if not _folder_name(name) or " " in name:
        _fail("name", "required: a non-empty string without spaces, slashes or control characters")
    profiles = raw.get("profiles", {}) or {}
    if not isinstance(profiles, dict):
        _fail("profiles", "must be a mapping of profile name to overrides")
    chosen = choose_profile(raw, profile)
    spec = {k: v for k, v in raw.items() if k not in ("profiles", "default_profile")}
    if chosen is not None:
        if not _among(chosen, profiles):
            _fail("profile", f"{chosen!r} is not defined (this study has: {', '.join(sorted(profiles)) or 'none'})")
        over = profiles[chosen]
        if over is None:
            over = {}
        if not isinstance(over, dict):
            _fail(f"profiles.{chosen}", "must be a mapping of overrides")
        for k in over:
            if k not in PROFILE_KEYS:
                _fail(f"profiles.{chosen}.{k}", f"unknown key (a profile may set: {', '.join(sorted(PROFILE_KEYS))})")
        spec = merge(spec, over)

    task = spec.get("task", "classification")
    if not _among(task, TASKS):
        _fail("task", f"must be one of {', '.join(TASKS)}; got {task!r}")
    experiment = experiment_name(name, spec, chosen)
    if not _folder_name(experiment):
        _fail("experiment", f"must be a non-empty string without slashes or control characters (it names folders "
                            f"of the study's home); got {experiment!r}")
    report = spec.get("report")
    names = [report] if isinstance(report, str) else report
    if report is not None and (not isinstance(names, list) or not all(n in REPORT_LAYOUTS for n in names)):
        _fail("report", f"must name report layouts among {', '.join(REPORT_LAYOUTS)}; got {report!r}")
    report = ",".join(names) if names else None

    axes = _parse_grid(spec.get("grid"))
    seeds = _parse_seeds(spec.get("seeds", 1))
    train = _parse_train(spec.get("train", {}) or {})
    resources = _parse_resources(spec.get("resources", {}) or {})
    max_failures = spec.get("max_failures", 0)
    if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 0:
        _fail("max_failures", f"must be an integer >= 0; got {max_failures!r}")
    checkpoint_every = spec.get("checkpoint_every", CHECKPOINT_EVERY)
    try:
        checkpoint_policy(checkpoint_every)
    except ValueError as e:
        _fail("checkpoint_every", str(e))
    scheduler = _parse_scheduler(spec.get("scheduler", "fifo"))

    study = Study(name=name, profile=chosen or "", experiment=experiment, report=report,
                  description=str(spec.get("description", "") or ""), axes=axes, seeds=seeds, train=train,
                  resources=resources, max_failures=max_failures, scheduler=scheduler,
                  checkpoint_every=checkpoint_every)
    study.task = task
    study.trials = _expand(study)
    _check_workers(study)
    return study


def _parse_grid(grid) -> Dict[str, List[Any]]:
    if not isinstance(grid, dict) or not grid:
        _fail("grid", "required: a mapping of axes (kappa, upsilon, num_heads, pos_enc, arch) to lists of values")
    axes = {}
    for k, v in grid.items():
        if k not in AXES:
            _fail(f"grid.{k}", f"unknown axis (axes: {', '.join(AXES)})")
        if k == "upsilon" and v == "kappa":
            axes[k] = "kappa"
            continue
        values = v if isinstance(v, list) else [v]
        if not values:
            _fail(f"grid.{k}", "empty list: an axis needs at least one value")
        for x in values:
            _check_axis_value(k, x)
        canon = [json.dumps(_canon(float(x) if k in ("kappa", "upsilon") else x)) for x in values]
        if len(set(canon)) != len(canon):
            _fail(f"grid.{k}", f"duplicate values in {values}")
        axes[k] = values
    return axes


def _check_axis_value(k, x):
    if k in ("kappa", "upsilon"):
        if not _is_num(x) or not 0.0 <= float(x) <= 1.0:
            _fail(f"grid.{k}", f"values must be numbers in [0, 1]; got {x!r}")
    elif k == "num_heads":
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            _fail("grid.num_heads", f"values must be positive integers; got {x!r}")
    elif k == "pos_enc":
        if not _among(x, POS_ENCODINGS):
            _fail("grid.pos_enc", f"unknown encoding {x!r} (encodings: {', '.join(POS_ENCODINGS)})")
    elif k == "arch":
        if not _among(x, ARCHITECTURES):
            _fail("grid.arch", f"unknown architecture {x!r} (architectures: {', '.join(sorted(ARCHITECTURES))})")


def _parse_seeds(seeds) -> List[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            _fail("seeds", f"a count must be >= 1; got {seeds}")
        return list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        _fail("seeds", "must be a count (e.g. 3) or a non-empty list of integers")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            _fail("seeds", f"seeds must be integers >= 0; got {s!r}")
    if len(set(seeds)) != len(seeds):
        _fail("seeds", f"duplicate seeds in {seeds}")
    return list(seeds)


_TRAIN_TYPES = {k: {"positive_int": int, "str": str, "dict": dict, "bool": bool, "list": list}[c]
                for k, c in TYPE_CHECKS.items()}  # from settings.TrainConfig


def _parse_train(train) -> Dict[str, Any]:
    if not isinstance(train, dict):
        _fail("train", "must be a mapping of training settings")
    for k, v in train.items():
        if k in AXES:
            _fail(f"train.{k}", "is a grid axis: put it under grid:")
        if k == "seed":
            _fail("train.seed", "seeds are set by the top-level seeds:")
        if k == "task":
            _fail("train.task", "set the top-level task:")
        if k not in TRAIN_DEFAULTS:
            _fail(f"train.{k}", f"unknown setting (settings: {', '.join(sorted(set(TRAIN_DEFAULTS) - set(AXES) - {'seed'}))})")
        want = _TRAIN_TYPES.get(k)
        if want is int and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            _fail(f"train.{k}", f"must be a positive integer; got {v!r}")
        if want in (str, dict, bool, list) and not isinstance(v, want):
            _fail(f"train.{k}", f"must be a {want.__name__}; got {v!r}")
    if "recipe" in train and not _among(train["recipe"], RECIPES):
        _fail("train.recipe", f"must be one of {', '.join(sorted(RECIPES))}; got {train['recipe']!r}")
    if "device" in train and not _among(train["device"], ("auto", "cpu", "cuda")):
        _fail("train.device", f"must be auto, cpu or cuda; got {train['device']!r}")
    if "stages" in train and not all(isinstance(s, int) and 1 <= s <= 4 for s in train["stages"]):
        _fail("train.stages", f"must list stage numbers 1-4; got {train['stages']!r}")
    for k in ("grad_clip", "limit_train_batches", "compile", "min_key_depth_per_head", "attention_pool_stages"):
        # the bounds `aa-study train` checks too: one definition
        problem = setting_problem(k, train.get(k, TRAIN_DEFAULTS[k]))
        if problem:
            _fail(f"train.{k}", problem)
    if "stages" in train and not set(train.get("attention_pool_stages", [])) <= set(train["stages"]):
        _fail("train.attention_pool_stages", f"must be among the augmented stages {train['stages']}; "
                                             f"got {train['attention_pool_stages']!r}")
    data = train.get("data", {})
    if isinstance(data.get("root"), str):  # trials may run in another working directory
        train = {**train, "data": {**data, "root": str(Path(data["root"]).expanduser().resolve())}}
    from .settings import OptimConfig
    try:
        OptimConfig.from_recipe(train.get("recipe", TRAIN_DEFAULTS["recipe"]), **train.get("optim", {}))
    except (ValueError, TypeError) as e:
        _fail("train.optim", str(e))
    for k, v in train.get("optim", {}).items():
        if not _is_num(v) and not isinstance(v, bool):
            _fail(f"train.optim.{k}", f"must be a number; got {v!r}")
    return copy.deepcopy(train)


def _parse_resources(res) -> Dict[str, float]:
    """cpu and gpu per worker; workers per trial (several: one DDP process each, through Ray Train)."""
    if not isinstance(res, dict):
        _fail("resources", "must be a mapping like {cpu: 1, gpu: 0.25} or {cpu: 4, gpu: 1, workers: 8}")
    for k in res:
        if k not in ("cpu", "gpu", "workers"):
            _fail(f"resources.{k}", "unknown resource (cpu, gpu, workers)")
    cpu, gpu, workers = res.get("cpu", 1), res.get("gpu", 0), res.get("workers", 1)
    if not _is_num(cpu) or cpu <= 0:
        _fail("resources.cpu", f"must be a number > 0; got {cpu!r}")
    if not _is_num(gpu) or not 0 <= gpu <= 1 and not (float(gpu).is_integer() and gpu > 1):
        _fail("resources.gpu", f"must be a fraction in [0, 1] or a whole number of GPUs; got {gpu!r}")
    if _is_num(gpu) and gpu > 1:
        _fail("resources.gpu", f"a worker trains on one GPU: use a fraction in (0, 1] or 1 (and resources.workers for "
                               f"several GPUs per trial); got {gpu!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        _fail("resources.workers", f"must be an integer >= 1 (DDP processes per trial); got {workers!r}")
    if workers > 1 and 0 < gpu < 1:
        _fail("resources.gpu", f"a fraction of a GPU ({gpu:g}) with {workers} workers: each DDP worker needs a GPU of "
                               "its own (NCCL refuses two ranks on one GPU); use gpu: 1, or gpu: 0 for CPU workers")
    return {"cpu": float(cpu), "gpu": float(gpu), "workers": workers}


def _parse_scheduler(s) -> Dict[str, Any]:
    if isinstance(s, str):
        s = {"type": s}
    if not isinstance(s, dict) or not _among(s.get("type"), SCHEDULERS):
        _fail("scheduler", f"must be one of {', '.join(SCHEDULERS)} (or a mapping with type:); got {s!r}")
    allowed = {"type", "grace_period", "reduction_factor"}
    for k in s:
        if k not in allowed:
            _fail(f"scheduler.{k}", f"unknown option (options: {', '.join(sorted(allowed))})")
    for k in ("grace_period", "reduction_factor"):
        if k in s and (not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < 1):
            _fail(f"scheduler.{k}", f"must be a positive integer; got {s[k]!r}")
    return dict(s)


def _expand(study: Study) -> List[Trial]:
    axes = dict(study.axes)
    tie = axes.get("upsilon") == "kappa" or "upsilon" not in axes
    names = [k for k in AXES if k in axes and not (k == "upsilon" and tie)]
    trials, seen = [], {}
    for values in itertools.product(*(axes[k] for k in names)):
        point = dict(zip(names, values))
        if tie:
            point["upsilon"] = None
        base = {**study.train, **point, "task": study.task}
        cfg = {k: v for k, v in TRAIN_DEFAULTS.items()}
        cfg.update(copy.deepcopy(base))
        cfg = normalise(cfg)
        key = cell_key(cfg)
        if key in seen:
            continue  # e.g. κ = 0 under several encodings: one plain-convolution cell
        seen[key] = cfg
        for seed in study.seeds:
            trials.append(Trial(cell=key, seed=seed, config={**copy.deepcopy(cfg), "seed": seed}))
    return trials


def _check_workers(study: Study):
    """Several workers per trial: DDP splits each global batch (train.batch_size) evenly between them."""
    w = study.resources["workers"]
    if w == 1:
        return
    if study.task == "detection":
        _fail("resources.workers", "several workers per trial are for classification; a detection trial runs on "
                                   "one device (workers: 1)")
    for t in study.trials:
        if t.config["batch_size"] % w:
            _fail("train.batch_size", f"{t.config['batch_size']} is the global batch, split evenly between "
                                      f"{w} workers: use a multiple of {w}")
