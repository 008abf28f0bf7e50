"""The checks of a study that build things: every distinct network on the meta device, and the datasets opened.
They need torch, so they run after parsing (pipelines/spec.py imports none of this), when a launch has something
to run, or by `aa-study run --dry-run`."""
from __future__ import annotations

import json
from ..data import DATASETS, DataError
from ..spec import Study, _canon, _fail
from ..settings import ARCHITECTURES, BACKBONE_KEYS, arch_kwargs, network_signature
from .classifier import build_model
from .fit import build_data


def check_deep(study: Study) -> None:
    """Every distinct network built on the meta device, every distinct dataset opened; one line (SpecError) on the
    first miss."""
    _check_networks(study)
    _check_data(study)


def _data_shape(train_cfg) -> tuple:
    """((H, W), channels, classes), as the dataset's data module declares them."""
    ds, data = train_cfg["dataset"], train_cfg.get("data", {}) or {}
    size = data.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 8):
        _fail("train.data.image_size", f"must be an integer >= 8; got {size!r}")
    try:
        return DATASETS[ds].declared_shape(data)
    except DataError as e:
        _fail("train.data.task" if ds == "synthetic" else "train.data", str(e))


def _check_networks(study: Study):
    """Build every distinct network on the meta device: heads that do not divide d_k or d_v at some
    augmented layer, or a stage list the architecture lacks, are found here, before Ray starts."""
    import torch

    done = set()
    for t in study.trials:
        c = t.config
        sig = (*network_signature(c), c["dataset"], json.dumps(_canon(c.get("data", {}))))
        if sig in done:
            continue
        done.add(sig)
        if c["task"] == "detection":
            from aa_modules.detection import aa_retinanet
            if not ARCHITECTURES[c["arch"]].detection_backbone:
                _fail("grid.arch", f"{c['arch']} is not a detection backbone (backbones: "
                                   f"{', '.join(a for a, i in ARCHITECTURES.items() if i.detection_backbone)})")
            if c.get("zero_init_residual"):
                _fail("train.zero_init_residual", "is for classification AA-ResNets, not the detection backbone")
            size = c.get("data", {}).get("min_size", c.get("data", {}).get("size", 128))
            if not isinstance(size, int) or isinstance(size, bool) or size < 32:
                _fail("train.data.min_size", f"must be an integer >= 32; got {size!r}")
            kw = {k: c[k] for k in BACKBONE_KEYS}
            kw.update(stages=tuple(c["stages"]), min_size=size, max_size=max(size, 1333))
            build, args = aa_retinanet, (2, c["arch"])
        else:
            size, in_ch, n_cls = _data_shape(c)
            try:
                kw = arch_kwargs(c)
            except ValueError as e:
                _fail("train.zero_init_residual", str(e).replace("zero_init_residual ", "", 1))
            build, args = build_model, (c["arch"], n_cls, in_ch, size)
        try:
            with torch.device("meta"):
                build(*args, **kw)
        except (ValueError, TypeError, OverflowError, ZeroDivisionError, RuntimeError) as e:
            _fail("grid", f"{c['arch']} with kappa={c['kappa']:g}, upsilon={c['upsilon']:g}, "
                          f"num_heads={c['num_heads']}: {e}")


def _check_data(study: Study):
    """Open each distinct dataset once (paths, files, formats) and check image size against the model."""

    done = set()
    for t in study.trials:
        c = t.config
        sig = (c["dataset"], json.dumps(_canon(c.get("data", {}))), c["arch"], c["small_input"])
        if sig in done:
            continue
        done.add(sig)
        try:
            build_data({**c, "device": "auto"})  # the driver may have no GPU; trials are placed by Ray
        except DataError as e:
            _fail("train.data", str(e))
        except (ValueError, TypeError, OverflowError, KeyError) as e:  # e.g. a data option of the wrong type
            _fail("train.data", f"{c['dataset']} options {c.get('data', {})} are not valid ({type(e).__name__}: {e})"
                  .replace("\n", " "))
