"""decode: gpu against the same decode on the CPU, on a generated JPEG tree (correctness of the GPU input path):
    python benchmarks/gpu_decode_check.py [--images 512] [--contiguous-fix 0|1]
Prints, per batch, whether the GPU output is finite and its largest difference from the CPU output."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.jpeg_loader import make_jpeg_tree  # noqa: E402
from pipelines.data import EncodedImages, ImageFolderDataModule, collate_encoded, decode_encoded  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        root = make_jpeg_tree(Path(d) / "t", a.images)
        dm = ImageFolderDataModule(str(root), image_size=224, augment="imagenet", resident=False, decode="gpu")
        train, _, _ = dm._split()
        ds = EncodedImages(train, 0, True, preset="imagenet", size=224, resize=dm.resize, crop_scale=dm.crop_scale,
                           flip=True)
        worst = 0.0
        for s in range(0, len(ds), a.batch):
            batch = collate_encoded([ds[i] for i in range(s, min(len(ds), s + a.batch))])
            xg, _ = decode_encoded(batch, torch.device("cuda"), 224)
            xc, _ = decode_encoded(batch, torch.device("cpu"), 224)
            finite = bool(torch.isfinite(xg).all())
            diff = float((xg.float().cpu() - xc).abs().max())
            mean = float((xg.float().cpu() - xc).abs().mean())
            worst = max(worst, diff if finite else float("inf"))
            print(f"batch {s // a.batch}: finite {finite}, max |gpu - cpu| {diff:.4f}, mean {mean:.5f}")
        print(f"worst {worst:.4f}")
        # the antialiased resize of a cropped (non-contiguous) view against the same crop made contiguous
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.io import read_file
        bad = 0
        for path, _ in train[:64]:
            img = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB, device="cuda").unsqueeze(0).float()
            h, w = img.shape[-2:]
            view = img[..., h // 4: h // 4 + h // 3, w // 5: w // 5 + w // 3]
            a = F.interpolate(view, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            b = F.interpolate(view.contiguous(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            bad += int(not torch.isfinite(a).all() or (a - b).abs().max() > 1e-3)
        print(f"view vs contiguous crop: {bad} of 64 images differ or are not finite")


if __name__ == "__main__":
    main()
