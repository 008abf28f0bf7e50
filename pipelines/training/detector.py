"""The detection LightningModule: torchvision's RetinaNet on an AA-ResNet (aa_modules.detection), trained
with its own losses, evaluated with pycocotools' COCOeval (mAP@[.5:.95], AP50, AP75, APs, APm, APl)."""
from __future__ import annotations

import contextlib
import io
import math
import time

import pytorch_lightning as pl
import torch

import aa_modules
from aa_modules.detection import aa_retinanet

from .classifier import NonFiniteWatch, OptimConfig, sgd_warmup_cosine

COCO_STATS = ("map", "ap50", "ap75", "aps", "apm", "apl")


class DetectionModule(pl.LightningModule):
    def __init__(self, arch: str, num_classes: int, batch_size: int, epochs: int, min_size: int = 128,
                 max_size: int = 1333, optim: dict | None = None, arch_kwargs: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.optim = OptimConfig(**(optim or {}))
        self.model = aa_retinanet(num_classes, arch, min_size=min_size, max_size=max_size, **(arch_kwargs or {}))
        # GFLOPs of backbone + FPN for one min_size x min_size image (heads and post-processing excluded)
        prof = aa_modules.profile(self.model.backbone, (3, min_size, min_size))
        self.profile = aa_modules.Profile(aa_modules.count_parameters(self.model), prof.gflops, prof.gflops_conv)
        self._results, self._label_to_cat = [], None
        self._watch = NonFiniteWatch()

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def on_fit_start(self):
        for logger in self.loggers:
            logger.log_hyperparams({"params": self.profile.params, "gflops": round(self.profile.gflops, 4)})

    def on_train_epoch_start(self):
        self._t, self._n, self._loss = time.perf_counter(), 0, []

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self._watch.step(loss, self.current_epoch, self.global_step, batch_idx)
        self._loss.append(loss.detach())
        self._n += len(images)
        return loss

    def on_train_epoch_end(self):
        self._watch.check()
        self.log_dict({"train_loss": torch.stack(self._loss).mean().item() if self._loss else float("nan"),
                       "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
                       "images_per_s": self._n / max(time.perf_counter() - self._t, 1e-9)})

    def on_validation_epoch_start(self):
        self._results = []
        ds = self.trainer.datamodule._val
        self._label_to_cat = {v: k for k, v in ds.cat_to_label.items()}

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        for det, tgt in zip(self.model(images), targets):
            boxes = det["boxes"].float().cpu()
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                self._results.append({"image_id": int(tgt["image_id"]), "category_id": self._label_to_cat.get(label, -1),
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})

    def on_validation_epoch_end(self):
        stats = coco_stats(self.trainer.datamodule.coco_gt(), self._results)
        self.log_dict(stats)

    def configure_optimizers(self):
        return sgd_warmup_cosine(self, self.optim, self.hparams.batch_size)


def coco_stats(gt, results) -> dict:
    """COCOeval's bbox summary as {map, ap50, ap75, aps, apm, apl}. A metric COCOeval cannot define (its -1: no
    ground-truth object of that size in the set) is NaN, stored and shown as missing, never 0. No detection at
    all scores 0 where there is ground truth to find."""
    from pycocotools.cocoeval import COCOeval

    results = [r for r in results if r["category_id"] != -1]
    if not results:
        areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in gt.dataset.get("annotations", [])]
        present = {"map": bool(areas), "ap50": bool(areas), "ap75": bool(areas),
                   "aps": any(a < 32 ** 2 for a in areas), "apm": any(32 ** 2 <= a < 96 ** 2 for a in areas),
                   "apl": any(a >= 96 ** 2 for a in areas)}
        return {k: 0.0 if present[k] else math.nan for k in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) if v >= 0 else math.nan for k, v in zip(COCO_STATS, ev.stats[:6])}
