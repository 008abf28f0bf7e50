"""The ImageNet input path on a GPU: JPEGs decoded on the GPU (decode: gpu) against PIL in loader workers.

    python benchmarks/jpeg_loader.py --make /tmp/jpegs --images 4000     # generate the tree (once)
    python benchmarks/jpeg_loader.py --root /tmp/jpegs [--workers 16] [--batch 128] [--steps 40]

The tree is ImageNet-like: colour JPEGs (quality 90) of mixed sizes (shorter side 240-500 px, aspect 3:4 to
4:3), smooth random content with noise, `--classes` folders under train/ and val/. Printed, from one run:
  - the loader alone (no model): images/s delivered as normalised 224 px float batches on the GPU, with
    RandomResizedCrop + flip, for decode gpu and for PIL with `--workers` loader workers;
  - AA-ResNet-50 (relative, kappa = upsilon = 0.25, N_h 8, stages 2-4, bf16, batch --batch) training steps fed by
    each loader (Lightning fit, the rate of its second epoch), and on one batch already on the GPU (no loader);
  - the ratio loader-alone / training-rate (target: >= 2 for the GPU path).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table  # noqa: E402


def _one(args):
    path, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    short = int(rng.integers(240, 500))
    aspect = float(rng.uniform(3 / 4, 4 / 3))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    base = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)


def make_jpeg_tree(root: Path, images: int, classes: int = 10, val_fraction: float = 0.1, seed: int = 0,
                   processes: int | None = None) -> Path:
    """root/train/<class>/*.jpg and root/val/<class>/*.jpg, `images` in all."""
    jobs = []
    n_val = max(classes, int(images * val_fraction))
    for k in range(images):
        split = "val" if k < n_val else "train"
        d = root / split / f"c{k % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((str(d / f"{k:06d}.jpg"), seed * 1_000_003 + k))
    with Pool(processes or os.cpu_count()) as pool:
        pool.map(_one, jobs, chunksize=64)
    return root


def loader_rate(root: str, decode: str, workers: int, batch: int, steps: int, size: int = 224) -> float:
    """images/s of the training loader alone, batches normalised on the GPU; the first epoch's first batches
    (worker start) are not timed."""
    import torch

    from pipelines.data import ImageFolderDataModule

    dev = torch.device("cuda")
    dm = ImageFolderDataModule(root, batch_size=batch, image_size=size, augment="imagenet", num_workers=workers,
                               resident=False, decode=decode, device=dev)
    dm.setup()
    loader = dm.train_dataloader()
    seen, t0, done = 0, None, 0
    while done < steps + 3:
        for batch_ in loader:
            x, y = dm.transfer_batch_to_device(batch_, dev, 0)
            done += 1
            if done == 3:  # warm: workers started, nvJPEG initialised
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            elif done > 3:
                seen += x.shape[0]
            if done >= steps + 3:
                break
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


# The paper profiles' zero-initialised residual branches (without them ResNet-50 diverged on the CPU within 10
# steps), base_lr 0.02 and gradient clipping: a rate benchmark's short run has only a few warm-up steps, and its
# steps must stay finite. (The NaN losses of the first GPU runs were the nvJPEG race, pipelines/data/images.py: _guarded.)
CELL = {"arch": "aa_resnet50", "kappa": 0.25, "num_heads": 8, "pos_enc": "relative", "stages": [2, 3, 4],
        "small_input": False, "recipe": "imagenet", "optim": {"base_lr": 0.02}, "grad_clip": 1.0,
        "zero_init_residual": True, "seed": 0}


def train_rate(root: str, decode: str, workers: int, batch: int, steps: int) -> float:
    from pipelines.training.fit import fit

    m = fit({**CELL, "dataset": "imagefolder", "epochs": 2, "batch_size": batch, "limit_train_batches": steps,
             "data": {"root": root, "image_size": 224, "augment": "imagenet", "num_workers": workers,
                      "resident": False, "decode": decode}})
    return m["images_per_s"]


def model_rate(batch: int, steps: int) -> float:
    """Training steps of the same module, through the same `fit`, on one batch already on the GPU: the rate no
    loader can raise."""
    import pytorch_lightning as pl
    import torch

    from pipelines.training.classifier import ClassificationModule, OptimConfig
    from pipelines.training.fit import arch_kwargs, fit, resolve

    class Fixed(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.x = torch.randn(batch, 3, 224, 224)
            self.y = torch.randint(0, 10, (batch,))

        def train_dataloader(self):
            x, y = self.x.cuda(), self.y.cuda()

            class Repeat:  # one iterable (a list would be taken for several dataloaders)
                def __len__(self):
                    return steps

                def __iter__(self):
                    return iter([(x, y)] * steps)
            return Repeat()

        def val_dataloader(self):
            return self.train_dataloader()

    cfg = resolve({**CELL, "epochs": 2, "batch_size": batch, "device": "cuda"})
    module = ClassificationModule(cfg["arch"], 10, 3, (224, 224), batch, cfg["epochs"],
                                  optim=OptimConfig.from_recipe(cfg["recipe"], **cfg["optim"]).__dict__,
                                  arch_kwargs=arch_kwargs(cfg), channels_last=True)
    return fit(cfg, built=(Fixed(), module, cfg))["images_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make", help="generate the JPEG tree here and exit")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--root", help="the JPEG tree to read")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--pos-enc", default="relative", help="the AA-ResNet-50 cell's encoding (default relative)")
    a = p.parse_args(argv)
    CELL["pos_enc"] = a.pos_enc
    if a.make:
        t = time.perf_counter()
        make_jpeg_tree(Path(a.make), a.images, a.classes)
        print(f"{a.images} JPEGs under {a.make} in {time.perf_counter() - t:.1f} s")
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("jpeg_loader: needs a CUDA GPU (the CPU path alone is measured by benchmarks/imagefolder.py)")
    rows = []
    ceiling = model_rate(a.batch, a.steps)
    rows.append(["no loader (one batch on the GPU)", "-", "-", f"{ceiling:.0f}", "-"])
    print(rows[-1], flush=True)
    for decode, label in (("gpu", f"decode gpu (nvJPEG), {a.workers} workers read bytes"),
                          ("cpu", f"PIL, {a.workers} loader workers")):
        alone = loader_rate(a.root, decode, a.workers, a.batch, a.steps * 2)
        print(f"{label}: loader alone {alone:.0f} images/s", flush=True)
        trained = train_rate(a.root, decode, a.workers, a.batch, a.steps)
        rows.append([label, f"{alone:.0f}", f"{alone / ceiling:.2f}", f"{trained:.0f}", f"{trained / ceiling:.2f}"])
        print(rows[-1], flush=True)
    n = sum(1 for _ in Path(a.root).rglob("*.jpg"))
    print(f"\n# JPEG input path: {n} JPEGs (shorter side 240-500 px), 224 px RandomResizedCrop + flip, "
          f"batch {a.batch}\n")
    print(environment() + f" | {os.cpu_count()} CPU cores\n")
    print(markdown_table(["input", "loader alone img/s", "loader / model ceiling", "AA-ResNet-50 train img/s",
                          "train / ceiling"], rows))


if __name__ == "__main__":
    main()
