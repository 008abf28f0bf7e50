"""One fit through `pipelines.training.fit.fit` (the trial code path, without Ray or MLflow), printing val top-1 per
epoch: for searching synthetic task settings quickly, many fits at once (benchmarks/task_search.sh).

    python benchmarks/fit_curve.py NAME --task pair_orientation --min-gap 4 --lr 0.03 --kappa 0.5 --pos-enc relative
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.training.fit import fit  # noqa: E402


class PrintEpoch(pl.Callback):
    def __init__(self, name):
        self.name, self.t0 = name, time.time()

    def on_train_epoch_end(self, trainer, module):  # runs after the epoch's validation
        top1 = float(trainer.callback_metrics.get("val_top1", float("nan")))
        print(f"{self.name} epoch {trainer.current_epoch} val_top1 {top1:.4f} t {time.time() - self.t0:.0f} s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--task", default="pair_orientation")
    p.add_argument("--min-gap", type=int)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=8192)
    p.add_argument("--kappa", type=float, default=0.5)
    p.add_argument("--pos-enc", default="relative")
    p.add_argument("--stages", type=int, nargs="+", default=[3, 4])
    p.add_argument("--lr", type=float, default=0.03, help="base learning rate for a batch of 256")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    data = dict(task=a.task, image_size=a.size, train_samples=a.train_samples, val_samples=4096)
    if a.min_gap is not None:
        data["min_gap"] = a.min_gap
    t0 = time.time()
    m = fit(dict(arch="aa_resnet18", kappa=a.kappa, num_heads=4, pos_enc=a.pos_enc, stages=a.stages, dataset="synthetic",
                 epochs=a.epochs, batch_size=256, seed=a.seed, optim=dict(base_lr=a.lr), grad_clip=1.0, data=data),
            callbacks=[PrintEpoch(a.name)])
    print(f"FINAL {a.name} val_top1 {m['val_top1']:.4f} t {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
