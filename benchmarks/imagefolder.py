"""A trial on a small ImageFolder tree: images/s and wall time, held on the device vs read by loader workers.

    python benchmarks/imagefolder.py [--classes 10] [--train 140] [--val 36] [--size 32] [--epochs 3] [--workers 4]

The tree (grayscale PNG glyphs, like a user's handwritten symbols) is generated in a temporary folder; both
paths train the same AA-ResNet-18 cell (κ=υ=0.5, relative, N_h 2, stages 3-4) with the same seed. Printed
rates are from one run each, on whatever device is there.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table  # noqa: E402


def make_tree(root: Path, classes: int, train: int, val: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"symbol{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size), dtype=np.uint8)
                y, x = rng.integers(2, size // 2, 2)
                img[y:y + size // 3, x + c % 4] = 255  # a stroke whose place and shape depend on the class
                img[y + (c * 3) % (size // 3), x:x + size // 3] = 255
                Image.fromarray(img, mode="L").save(d / f"{i}.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=140)
    p.add_argument("--val", type=int, default=36)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    a = p.parse_args(argv)
    from pipelines.training.fit import fit

    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("AA_STUDY_HOME", str(Path(d) / "home"))
        root = Path(d) / "tree"
        make_tree(root, a.classes, a.train, a.val, a.size)
        cfg = {"arch": "aa_resnet18", "kappa": 0.5, "num_heads": 2, "pos_enc": "relative", "stages": [3, 4],
               "small_input": True, "dataset": "imagefolder", "epochs": a.epochs, "batch_size": 64, "seed": 0}
        rows = []
        for label, data in (("loader, %d workers" % a.workers, {"resident": False, "num_workers": a.workers}),
                            ("held on the device (first: decodes and caches)", {"resident": True}),
                            ("held on the device (cache hit)", {"resident": True})):
            t = time.perf_counter()
            m = fit({**cfg, "data": {"root": str(root), "image_size": a.size, "augment": "light", "flip": False,
                                     **data}})
            rows.append([label, f"{m['images_per_s']:.0f}", f"{time.perf_counter() - t:.1f}", f"{m['val_top1'] * 100:.1f}"])
    print(f"# ImageFolder trial: {a.classes} classes x {a.train} train / {a.val} val, {a.size} px, {a.epochs} epochs\n")
    print(environment() + "\n")
    print(markdown_table(["data path", "train images/s", "fit wall s", "val top-1 %"], rows))


if __name__ == "__main__":
    main()
