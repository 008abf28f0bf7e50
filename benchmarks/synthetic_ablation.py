"""A short ablation on the synthetic tasks through `pipelines.training.fit.fit` (the trial code path), and the
Fashion-MNIST data-path throughput comparison.

    python benchmarks/synthetic_ablation.py [--tasks same_corners relative_position] [--epochs 12] [--seeds 0 1]
    python benchmarks/synthetic_ablation.py --fashion-throughput

Cells: kappa = 0 (plain ResNet-18), kappa = upsilon = 0.5 with no positions, with relative logits.
Prints val top-1 per seed, the mean and the spread (max - min) per cell.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table  # noqa: E402
from pipelines.training.fit import fit  # noqa: E402

CELLS = [("kappa=0", dict(kappa=0.0)), ("kappa=0.5 none", dict(kappa=0.5, pos_enc="none")),
         ("kappa=0.5 relative", dict(kappa=0.5, pos_enc="relative"))]


def ablation(a):
    rows = []
    for task in a.tasks:
        for name, cell in [c for c in CELLS if not a.cells or c[0] in a.cells]:
            accs = []
            for seed in a.seeds:
                t = time.perf_counter()
                m = fit(dict(arch="aa_resnet18", num_heads=4, dataset="synthetic", epochs=a.epochs,
                             batch_size=a.batch_size, seed=seed, optim=dict(base_lr=a.lr), grad_clip=a.grad_clip, data=dict(task=task, image_size=a.size,
                             train_samples=a.train_samples, val_samples=4096), **cell))
                accs.append(m["val_top1"])
                print(f"{task} {name} seed={seed}: top1={m['val_top1']:.4f} ({time.perf_counter() - t:.0f} s, "
                      f"{m['images_per_s']:.0f} img/s)", flush=True)
            rows.append([task, name, " ".join(f"{x * 100:.1f}" for x in accs), f"{statistics.mean(accs) * 100:.1f}",
                         f"{(max(accs) - min(accs)) * 100:.1f}"])
    print(f"\n## synthetic ablation: aa_resnet18 small_input, {a.size}px, {a.train_samples} train / 4096 val, "
          f"{a.epochs} epochs, batch {a.batch_size}, base lr {a.lr}, grad clip {a.grad_clip}, N_h=4, stages 2-4\n")
    print(environment() + "\n")
    print(markdown_table(["task", "cell", "val top-1 % per seed", "mean", "spread"], rows))


def fashion_throughput(a):
    """The two data paths side by side, with all CPU threads and with one (a packed trial's share)."""
    import torch

    rows = []
    all_threads = torch.get_num_threads()
    for threads in (all_threads, 1):
        torch.set_num_threads(threads)
        for label, device in (("dataset on the GPU, augmentation there", None), ("CPU data path (tensors on CPU)", "cpu")):
            data = dict(root=a.fashion_root, **(dict(device=device) if device else {}))
            m = fit(dict(arch="aa_resnet18", kappa=0.25, num_heads=4, pos_enc="relative", dataset="fashion_mnist",
                         epochs=3, batch_size=256, data=data))
            rows.append([label, str(threads), f"{m['images_per_s']:.0f}", f"{m['val_top1'] * 100:.1f}"])
            print(rows[-1], flush=True)
    torch.set_num_threads(all_threads)
    print("\n## Fashion-MNIST, aa_resnet18 small_input relative kappa=upsilon=0.25, batch 256, images/s of epoch 3\n")
    print(environment() + "\n")
    print(markdown_table(["data path", "CPU threads", "train images/s", "val top-1 %"], rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["same_corners", "relative_position"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=16384)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1, help="base learning rate for a batch of 256")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--fashion-throughput", action="store_true")
    p.add_argument("--cells", nargs="+", help="names of the cells to run (default: all)")
    p.add_argument("--sdpa-backend", nargs="+", help="restrict SDPA to these backends, e.g. efficient_attention")
    p.add_argument("--fashion-root", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args(argv)
    if a.sdpa_backend:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([getattr(SDPBackend, b.upper()) for b in a.sdpa_backend]):
            return fashion_throughput(a) if a.fashion_throughput else ablation(a)
    fashion_throughput(a) if a.fashion_throughput else ablation(a)


if __name__ == "__main__":
    main()
