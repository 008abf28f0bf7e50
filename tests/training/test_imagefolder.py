"""A user's own ImageFolder tree: augmentation presets, flips that can be turned off, the device-resident path
(decoded once, cached) against the loader path, the same result whatever the number of loader workers, and the
checks made before any work."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import DataError, ImageFolderDataModule, make_datamodule


def _tree(root, classes=3, train=10, val=4, size=16, seed=0):
    """root/train and root/val, one folder per class; each class an asymmetric glyph (an L at a class-specific
    corner) with noise, so that a flip changes an image."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 40, (size, size), dtype=np.uint8)
                r0, c0 = (2 + c * 3) % (size - 6), 1
                img[r0:r0 + 5, c0] = 255
                img[r0 + 4, c0:c0 + 4] = 255
                Image.fromarray(img, mode="L").save(d / f"{i}.png")
    return root


def _dm(root, **kw):
    dm = make_datamodule("imagefolder", root=str(root), **{"batch_size": 8, "image_size": 16, "num_workers": 0, **kw})
    dm.check()
    dm.setup()
    return dm


def _epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_presets_shapes_ranges_and_auto_by_size(tmp_path, workdir):
    root = _tree(tmp_path / "t")
    assert ImageFolderDataModule(str(root), image_size=32).preset == "light"
    assert ImageFolderDataModule(str(root), image_size=224).preset == "imagenet"
    for preset in ("none", "light", "imagenet"):
        dm = _dm(root, augment=preset, resident=False)
        x, y = _epoch(dm.train_dataloader())
        assert x.shape == (30, 3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
        # normalised with ImageNet's statistics: [0, 1] pixels map into [-2.2, 2.7]
        assert x.min() >= -2.2 and x.max() <= 2.7 and sorted(y.tolist()) == sorted([0] * 10 + [1] * 10 + [2] * 10)


def test_a_flip_turned_off_leaves_images_unflipped(tmp_path, workdir):
    root = _tree(tmp_path / "t")
    for resident in (False, True):
        x, _ = _epoch(_dm(root, augment="none", flip=False, resident=resident).train_dataloader())
        fx, _ = _epoch(_dm(root, augment="none", flip=True, resident=resident).train_dataloader())
        # every glyph is drawn on the left: with flip off every training image keeps it there; with flip on,
        # some images are mirrored and carry it on the right
        left_heavy = lambda t: (t[..., :8].sum() > t[..., 8:].sum()).item()
        assert all(left_heavy(img) for img in x), f"resident={resident}: an image was flipped with flip off"
        assert not all(left_heavy(img) for img in fx), f"resident={resident}: flip on flipped nothing"


def test_same_seed_same_batches_with_0_and_2_workers(tmp_path, workdir):
    root = _tree(tmp_path / "t")
    epochs = []
    for workers in (0, 2):
        dm = _dm(root, augment="light", resident=False, num_workers=workers, seed=3)
        loader = dm.train_dataloader()
        epochs.append([_epoch(loader) for _ in range(2)])  # two epochs: different draws, same in both runs
    for (x0, y0), (x2, y2) in zip(*epochs):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(epochs[0][0][0], epochs[0][1][0])  # the second epoch is augmented anew


def test_fits_with_0_and_2_workers_give_the_same_metrics(tmp_path, workdir):
    from pipelines.training.fit import fit

    root = _tree(tmp_path / "t")
    cfg = {"arch": "aa_resnet18", "kappa": 0.5, "num_heads": 2, "pos_enc": "relative", "stages": [4],
           "small_input": True, "dataset": "imagefolder", "epochs": 2, "batch_size": 8, "device": "cpu", "seed": 1}
    runs = [fit({**cfg, "data": {"root": str(root), "image_size": 16, "resident": False, "num_workers": w}})
            for w in (0, 2)]
    drop = ("images_per_s",)
    assert {k: v for k, v in runs[0].items() if k not in drop} == {k: v for k, v in runs[1].items() if k not in drop}
    resident = fit({**cfg, "data": {"root": str(root), "image_size": 16, "resident": True}})
    assert np.isfinite(resident["val_loss"]) and 0 <= resident["val_top1"] <= 1  # the device path trains too


def test_resident_path_matches_the_loader_in_distribution_and_caches(tmp_path, workdir):
    root = _tree(tmp_path / "t")
    loader = _dm(root, augment="light", resident=False)
    held = _dm(root, augment="light")  # auto: a few KB, held
    assert held.resident and not loader.resident
    (lx, ly), (hx, hy) = _epoch(loader.train_dataloader()), _epoch(held.train_dataloader())
    assert lx.shape == hx.shape and torch.bincount(ly).tolist() == torch.bincount(hy).tolist() == [10, 10, 10]
    # validation: no randomness, so the two paths give the same images (up to the float path's rounding)
    (lvx, lvy), (hvx, hvy) = _epoch(loader.val_dataloader()), _epoch(held.val_dataloader())
    assert torch.equal(lvy, hvy) and torch.allclose(lvx, hvx, atol=1e-5)
    cached = list((workdir / "runs" / "data" / "imagefolder-cache").glob("*.pt"))
    assert len(cached) == 2  # train and val, decoded once
    again = _dm(root, augment="light")
    assert torch.equal(again._train[0], held._train[0])
    # a changed file changes the key: a stale cache is never read
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(root / "val" / "class0" / "0.png")
    _dm(root, augment="light")
    assert len(list((workdir / "runs" / "data" / "imagefolder-cache").glob("*.pt"))) == 3


def test_checks_and_summary(tmp_path, workdir, capsys):
    root = _tree(tmp_path / "t", classes=2)
    _dm(root)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 classes, 20 train / 8 val images, sizes seen 16x16" in line and "augment light (pad 2 + crop), flip" in line
    one = _tree(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match="1 class folder .*at least two"):
        _dm(one)
    odd = _tree(tmp_path / "odd", classes=2)
    (odd / "val" / "class9").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(odd / "val" / "class9" / "0.png")
    with pytest.raises(DataError, match="has classes that .* lacks: class9"):
        _dm(odd)
    for bad, match in (({"augment": "heavy"}, "augment must be one of"), ({"flip": "no"}, "flip must be true or false"),
                       ({"crop_scale": [0.5, 0.2]}, "crop_scale must satisfy"), ({"resident": "yes"}, "resident must be"),
                       ({"augment": "imagenet", "resident": True}, "use augment: light or none")):
        with pytest.raises(DataError, match=match):
            make_datamodule("imagefolder", root=str(root), **bad)


def test_the_augmentation_a_trial_gets_is_written_into_its_config_and_key():
    from pipelines.spec import cell_key, normalise

    base = {"kappa": 0.5, "upsilon": None, "pos_enc": "relative", "num_heads": 2, "dataset": "imagefolder"}
    small = normalise({**base, "data": {"root": "x", "image_size": 32}})
    assert small["data"]["augment"] == "light" and small["data"]["flip"] is True  # logged as params data.*
    assert normalise({**base, "data": {"root": "x", "image_size": 224}})["data"]["augment"] == "imagenet"
    assert normalise({**base, "data": {"root": "x", "image_size": 224, "augment": "none"}})["data"]["augment"] == "none"
    # the preset and the flip are part of the cell; where the files live and how many workers read them are not
    key = cell_key(small)
    assert key == cell_key(normalise({**base, "data": {"root": "elsewhere", "image_size": 32, "num_workers": 0}}))
    assert key != cell_key(normalise({**base, "data": {"root": "x", "image_size": 32, "flip": False}}))
    assert key != cell_key(normalise({**base, "data": {"root": "x", "image_size": 32, "augment": "none"}}))



def _jpeg_tree(root, n=6, seed=0):
    """Two classes of smooth colour JPEGs of mixed sizes (and one PNG, which the GPU path decodes with PIL)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                small = rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
                img.save(d / f"{i}.jpg", quality=95) if i else img.save(d / f"{i}.png")
    return root


def test_gpu_decode_path_matches_the_pil_path_on_fresh_images(tmp_path, workdir):
    """decode: gpu draws the same crop and flip as the PIL path for each (seed, epoch, image) and resizes it the
    same way; checked on the CPU (torchvision's decode_jpeg takes the same batch there) against the PIL reference."""
    from pipelines.data import EncodedImages, SeededImages, collate_encoded, decode_encoded

    root = _jpeg_tree(tmp_path / "j")
    for preset in ("imagenet", "none"):
        dm = make_datamodule("imagefolder", root=str(root), image_size=32, augment=preset, num_workers=0,
                             batch_size=8, resident=False, seed=5)
        train, val, _ = dm._split()
        train_tf, val_tf = dm.transforms()
        kw = dict(preset=dm.preset, size=32, resize=dm.resize, crop_scale=dm.crop_scale, flip=True)
        for samples, is_train, tf in ((train, True, train_tf), (val, False, val_tf)):
            enc, ref = EncodedImages(samples, 5, is_train, **kw), SeededImages(samples, tf, 5)
            idx = [len(samples) * 3 + i for i in range(len(samples))]  # epoch 3
            x, y = decode_encoded(collate_encoded([enc[k] for k in idx]), torch.device("cpu"), 32)
            xr = torch.stack([ref[k][0] for k in idx])
            assert x.shape == xr.shape == (len(samples), 3, 32, 32)
            assert y.tolist() == [ref[k][1] for k in idx]
            # the same crop, flip and size; only the decoders' and resamplers' rounding differ (in [0, 1] pixels)
            diff = ((x - xr) * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)).abs()
            assert diff.mean() < 0.003 and diff.max() < 0.02, (preset, is_train, diff.mean(), diff.max())


def test_gpu_decode_falls_back_to_pil_on_a_cpu_fit_and_refuses_what_it_cannot_do(tmp_path, workdir, capsys):
    root = _jpeg_tree(tmp_path / "j")
    dm = _dm(root, image_size=32, augment="imagenet", decode="gpu")
    x, _ = _epoch(dm.train_dataloader())
    out = capsys.readouterr().out
    assert "decoded on the GPU" in out and "decoding with PIL" in out and x.shape == (12, 3, 32, 32)
    for bad in (dict(decode="nvjpeg"), dict(decode="gpu", augment="light"), dict(decode="gpu", resident=True)):
        with pytest.raises(DataError, match="decode"):
            make_datamodule("imagefolder", root=str(root), image_size=32, **bad)


def test_gpu_decode_batches_cross_loader_workers_as_one_buffer(tmp_path, workdir):
    """Loader workers hand the main process one byte buffer per batch (not one tensor per file, which runs out
    of file descriptors at ImageNet batch sizes); the batch decodes the same as when built in-process."""
    from pipelines.data import EncodedImages, collate_encoded, decode_encoded

    root = _jpeg_tree(tmp_path / "j")
    dm = make_datamodule("imagefolder", root=str(root), image_size=32, augment="imagenet", resident=False, seed=1)
    train, _, _ = dm._split()
    ds = EncodedImages(train, 1, True, preset="imagenet", size=32, resize=dm.resize, crop_scale=dm.crop_scale,
                       flip=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(train), num_workers=2, collate_fn=collate_encoded)
    (flat, sizes, decoded), boxes, labels = next(iter(loader))
    assert flat.dim() == 1 and len(sizes) == len(train) and len(decoded) == 2  # a PNG per class among the files
    x, y = decode_encoded(((flat, sizes, decoded), boxes, labels), torch.device("cpu"), 32)
    x2, y2 = decode_encoded(collate_encoded([ds[i] for i in range(len(train))]), torch.device("cpu"), 32)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (len(train), 3, 32, 32)
