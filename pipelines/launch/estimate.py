"""`aa-study run --dry-run`: what a launch would run, what each trial holds, how many run at once on the
cluster in view, and an estimate of GPU-hours from a step rate measured here (or given with --rate).

Nothing is started or written: the store is read if it exists (trials already FINISHED are not counted);
Ray is joined only with --address (read its resources, then leave).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

from ..settings import network_signature
from ..spec import Study


def cluster_view(address: Optional[str]) -> tuple:
    """(resources, where): a Ray cluster's when --address is given, else this machine's."""
    if address:
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            return dict(ray.cluster_resources()), f"the Ray cluster at {address}"
        finally:
            ray.shutdown()
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}, "this machine"


def measure_rate(dm, size, cfg, steps: int = 3) -> tuple:
    """(training images/s of one worker, device name): a few SGD steps of the trial's network (data module dm,
    image size and resolved config as `train.build_data` gives them) on random images of its dataset's shape,
    bf16 on a GPU, on whatever device is here."""
    import torch
    import torch.nn.functional as F

    from ..training.classifier import build_model
    from ..training.fit import arch_kwargs

    dev = torch.device("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu" else "cpu")
    model = build_model(cfg["arch"], dm.num_classes, dm.in_channels, tuple(size), **arch_kwargs(cfg)).to(dev)
    b = min(cfg["batch_size"], 64 if dev.type == "cuda" else 4)
    x = torch.randn(b, dm.in_channels, *size, device=dev)
    y = torch.randint(0, dm.num_classes, (b,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm: kernels compiled, memory allocated
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return b * steps / (time.perf_counter() - t), name


def train_images(dm) -> Optional[int]:
    """How many training images one epoch of a trial with data module dm reads (None: not known)."""
    if hasattr(dm, "_split"):
        return len(dm._split()[0])
    if hasattr(dm, "load"):
        return int(dm.load("train")[0].shape[0])
    return None


def dry_run(study: Study, pending: List, finished: int, address: Optional[str], rate: Optional[float]) -> List[str]:
    from .resources import trials_that_fit
    from ..training.fit import build_data

    have, where = cluster_view(address)
    r = study.resources
    w, gpus = r["workers"], r["workers"] * r["gpu"]
    n_at_once = trials_that_fit(study, have)
    lines = [f"study {study.name} (profile {study.profile or '-'}): {len(study.trials)} trials, {finished} already "
             f"finished, {len(pending)} to run",
             f"each trial: {w} worker{'s' if w > 1 else ''} x (cpu {r['cpu']:g}, gpu {r['gpu']:g})"
             + (f", DDP over {w} processes, global batch split between them" if w > 1 else ""),
             f"{where}: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs -> "
             + (f"{n_at_once} trial{'s' if n_at_once != 1 else ''} at once" if n_at_once else
                "NO trial fits (a launch would be refused)")]
    if study.task == "detection":
        lines.append("estimate: not made for detection studies (image counts and step costs vary with the boxes)")
        return lines
    nets: Dict[tuple, dict] = {}
    for t in pending:
        c = t.config
        sig = (*network_signature(c), c["dataset"], repr(sorted(c.get("data", {}).items())), c["batch_size"])
        nets.setdefault(sig, {"config": c, "trials": 0})["trials"] += 1
    total_trial_h = total_gpu_h = 0.0
    lines.append(f"{'network':58} {'trials':>6} {'img/s':>8} {'h/trial':>8} {'GPU-h':>8}")
    for sig, net in nets.items():
        c = net["config"]
        dm, size, cfg = build_data(c)  # opened once: its image count, and the shapes of the measured steps
        n = train_images(dm)
        if rate:
            per_worker, dev = rate, "given"
        else:
            per_worker, dev = measure_rate(dm, size, cfg)
        trial_rate = per_worker * w  # linear in the workers: an upper bound on the rate, a lower bound on time
        hours = c["epochs"] * (n or 0) / trial_rate / 3600
        total_trial_h += hours * net["trials"]
        total_gpu_h += hours * net["trials"] * gpus
        label = (f"{c['arch']} k{c['kappa']:g} u{c['upsilon']:g} h{c['num_heads']} {c['pos_enc']} "
                 f"{c['dataset']} x{c['epochs']} ep")
        lines.append(f"{label[:58]:58} {net['trials']:>6} {trial_rate:>8.0f} {hours:>8.2f} {hours * net['trials'] * gpus:>8.1f}"
                     f"   ({'rate given' if dev == 'given' else f'measured on {dev}'}"
                     f"{', x' + str(w) + ' workers' if w > 1 else ''}; {n} train images)")
    wall = total_trial_h / max(1, n_at_once)
    lines.append(f"total: {total_trial_h:.1f} trial-hours, {total_gpu_h:.1f} GPU-hours; about {wall:.1f} h of wall "
                 f"time with {max(1, n_at_once)} at once (training steps only: validation, checkpoints and start-up "
                 "not counted; a rate measured on another device than the cluster's says little: give --rate)")
    return lines
