"""decode: gpu against the same decode on the CPU, on a generated JPEG tree (correctness of the GPU input path):
    python benchmarks/gpu_decode_check.py [--images 512] [--race 20]
Prints, per batch, whether the GPU output is finite and its largest difference from the CPU output; then the race
check: each iteration queues ~100 ms of matmuls and one sum per tensor on the training stream, frees the tensors while
those sums are queued, and decodes a batch; an iteration is corrupted when a sum comes back wrong (nvJPEG wrote into
a freed block the queued sums still read). Counted for decode_jpeg called on the training stream, and for
pipelines.data's guarded decode (its own stream, outputs recorded on the training stream)."""
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
    p.add_argument("--race", type=int, default=20, help="iterations of the race check per decoder")
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
            up = F.interpolate(view, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            b = F.interpolate(view.contiguous(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            bad += int(not torch.isfinite(up).all() or (up - b).abs().max() > 1e-3)
        print(f"view vs contiguous crop: {bad} of 64 images differ or are not finite")
        batch = collate_encoded([ds[i] for i in range(min(len(ds), a.batch))])
        for name, n in race(batch, a.race).items():
            print(f"race check, {name}: {n} of {a.race} iterations corrupted")


def race(batch, iters: int) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    from pipelines.data.images import _guarded, _unpack

    dev = torch.device("cuda")
    files = _unpack(batch[0])
    sizes = [int(t.numel()) for t in decode_jpeg(files, mode=ImageReadMode.RGB, device=dev)]
    torch.cuda.synchronize()
    big = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    decoders = {"decode_jpeg on the training stream": lambda: decode_jpeg(files, mode=ImageReadMode.RGB, device=dev),
                "guarded (pipelines.data)": lambda: _guarded(
                    lambda: decode_jpeg(files, mode=ImageReadMode.RGB, device=dev), dev)}
    out = {}
    for name, decode in decoders.items():
        corrupted = 0
        for _ in range(iters):
            held = [torch.ones(n, dtype=torch.uint8, device=dev) for n in sizes]
            for _ in range(40):  # ~100 ms of queued work ahead of the sums
                big @ big
            sums = [t.sum() for t in held]
            del held  # freed while their sums are still queued
            images = decode()
            torch.cuda.synchronize()
            corrupted += int(any(int(s_) != n for s_, n in zip(sums, sizes)))
            del images
        out[name] = corrupted
    return out


if __name__ == "__main__":
    main()
