"""The classification LightningModule: an AA network from aa_modules, SGD + warm-up + cosine, honest logging."""
from __future__ import annotations

from typing import Optional

import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

import aa_modules

from ..settings import ARCHITECTURES, CUDA_GRAPH_MODES, RECIPES, OptimConfig  # noqa: F401  (RECIPES re-exported)

class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteWatch:
    """Stops a fit at a NaN or inf loss, naming the epoch and step where it first appeared.

    On a GPU, `torch.isfinite(loss)` read on the host every step would make the host wait for the GPU each step
    (no kernel queued ahead: trials sharing a GPU starve). There the first non-finite loss is recorded on the
    device and read every `every` steps and at the epoch's end; the error still names the exact step."""

    def __init__(self, every: int = 32, defer: Optional[bool] = None):
        self.every, self.defer = every, defer
        self.state, self.steps = None, []  # state: [index into steps of the first bad loss, its value]

    def step(self, loss, epoch: int, step: int, batch: int):
        loss = loss.detach()
        if not (self.defer if self.defer is not None else loss.device.type == "cuda"):
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step} (batch {batch})")
            return
        if self.state is None:
            self.state = torch.full((2,), -1.0, dtype=torch.float64, device=loss.device)
        bad = ~torch.isfinite(loss) & (self.state[0] < 0)
        self.state.copy_(torch.where(bad, torch.stack([torch.full_like(self.state[0], len(self.steps)),
                                                       loss.to(torch.float64)]), self.state))
        self.steps.append((epoch, step, batch))
        if len(self.steps) >= self.every:
            self.check()

    def check(self):
        if self.state is None or not self.steps:
            return
        index, value = self.state.tolist()
        if index >= 0:
            epoch, step, batch = self.steps[int(index)]
            raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {step} (batch {batch})")
        self.steps.clear()


def build_model(arch: str, num_classes: int, in_channels: int, image_size, **arch_kwargs):
    if arch not in aa_modules.ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(aa_modules.ARCHITECTURES)}; got {arch!r}")
    builder = aa_modules.ARCHITECTURES[arch]
    size = tuple(image_size) if ARCHITECTURES[arch].input_size == "hw" else image_size[0]
    return builder(num_classes, in_channels=in_channels, input_size=size, **arch_kwargs)


def cudagraph_thread_state() -> None:
    """Give this thread the thread-local state of torch.compile's CUDA Graph Trees. Before torch 2.13 only the thread
    that imported them (and the autograd threads it starts) has it, and their first graph in any other thread fails
    an assertion (pytorch/pytorch#123177). Ray Tune runs each trial in a thread of its own, and a reused actor runs
    its next trial in a new one: measured on an H100, the quickstart gpu study with compile: reduce-overhead had its
    three trials that ran in reused actors fail once each. Later torch sets the state up itself."""
    from collections import defaultdict
    import threading

    from torch._inductor import cudagraph_trees as trees

    if hasattr(trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    trees.local.tree_manager_containers = {}
    trees.local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)


class ClassificationModule(pl.LightningModule):
    def __init__(self, arch: str, num_classes: int, in_channels: int, image_size, batch_size: int, epochs: int,
                 optim: dict | None = None, arch_kwargs: dict | None = None, channels_last: bool = False,
                 compile=False):
        super().__init__()
        self.save_hyperparameters()
        self.optim = OptimConfig(**(optim or {}))
        self.model = build_model(arch, num_classes, in_channels, tuple(image_size), **(arch_kwargs or {}))
        self.profile = aa_modules.profile(self.model, (in_channels, *image_size))
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # compile: False, True (torch.compile's default mode) or a mode name (settings.COMPILE_MODES)
        self.net = torch.compile(self.model, mode=None if compile is True else compile) if compile else self.model
        self.log_top5 = num_classes > 5  # top-5 of 5 classes or fewer is always 100%: not logged
        k5 = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")
        self._epoch_images = 0
        self._epoch_start = None
        self._train_loss_sum = None
        self._watch = NonFiniteWatch()
        self._train_batches = 0

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # -------------------------------------------------------------------------------------- training
    def on_fit_start(self):
        if self.hparams.compile in CUDA_GRAPH_MODES and torch.cuda.is_available():
            cudagraph_thread_state()
        for logger in self.loggers:
            logger.log_hyperparams({"params": self.profile.params, "gflops": round(self.profile.gflops, 4)})

    def on_train_epoch_start(self):
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._epoch_images, self._train_batches = 0, 0
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._epoch_start = self._last_train_step = time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.optim.label_smoothing)
        self._watch.step(loss, self.current_epoch, self.global_step, batch_idx)
        self._train_loss_sum += loss.detach()
        self._train_batches += 1
        self._epoch_images += x.shape[0]
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._last_train_step = time.perf_counter()

    def on_train_epoch_end(self):
        self._watch.check()
        # the epoch's training steps only: Lightning runs the validation loop before this hook, and a large
        # validation set would otherwise be counted as training time
        seconds = self._last_train_step - self._epoch_start
        loss, images = self._train_loss_sum / max(1, self._train_batches), self._epoch_images
        if self.trainer.world_size > 1:  # DDP: the mean over ranks (equal step counts) and all ranks' images
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
            images = self.trainer.strategy.reduce(torch.tensor(float(images), device=self.device), reduce_op="sum").item()
        metrics = {
            "train_loss": loss.item(),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "images_per_s": images / max(seconds, 1e-9),
        }
        if self.device.type == "cuda":
            metrics["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log_dict(metrics, on_epoch=True, on_step=False)

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, on_step=False, batch_size=x.shape[0],
                 sync_dist=True)  # DDP: averaged over the ranks at the epoch's end (one device: unchanged)
        self.val_top1.update(logits, y)
        self.val_top5.update(logits, y)

    def on_validation_epoch_end(self):
        self.log("val_top1", self.val_top1.compute())
        if self.log_top5:
            self.log("val_top5", self.val_top5.compute())
        self.val_top1.reset()
        self.val_top5.reset()

    # ------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        return sgd_warmup_cosine(self, self.optim, self.hparams.batch_size)


def sgd_warmup_cosine(module: pl.LightningModule, o: "OptimConfig", batch_size: int):
    """SGD (Nesterov optional) with lr = base_lr * B / 256, no weight decay on biases and norms, linear
    warm-up over warmup_frac of the steps, then cosine decay to 0; stepped every batch."""
    lr = o.base_lr * batch_size / 256
    decay, no_decay = [], []
    for p in module.model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(round(o.warmup_frac * total))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
