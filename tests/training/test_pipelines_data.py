"""Data modules on small fixtures written in the real formats; synthetic tasks; metrics; errors; a short fit."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data import DataError, make_datamodule, read_idx
from pipelines.training.classifier import ClassificationModule, NonFiniteLossError
from pipelines.data.synthetic import SYNTHETIC_TASKS, make_synthetic
from pipelines.training.fit import fit


def _write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


@pytest.fixture(params=[True, False], ids=["gz", "raw"])
def fashion_root(tmp_path, request):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28))
        images[:, 0, 0] = labels * 20  # a marker tying image to label
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, request.param)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, request.param)
    return tmp_path


def test_fashion_mnist_reads_idx_gz_and_raw(fashion_root):
    dm = make_datamodule("fashion_mnist", root=str(fashion_root), batch_size=8, augment=False)
    dm.check()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw, labels = dm._train
    assert torch.equal(raw[:, 0, 0, 0].long(), labels * 20)
    assert len(dm.val_dataloader()) == 3  # 20 images in batches of 8


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_datamodule("fashion_mnist", root=str(tmp_path / "nope")).check()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte\\[.gz\\] not found"):
        make_datamodule("fashion_mnist", root=str(tmp_path)).check()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad")


def test_cifar100_pickle_layout(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for split, n in (("train", 12), ("test", 6)):
        data = np.random.default_rng(1).integers(0, 255, (n, 3072), dtype=np.uint8)
        pickle.dump({"data": data, "fine_labels": list(range(n))}, open(base / split, "wb"))
    dm = make_datamodule("cifar100", root=str(tmp_path), batch_size=4)
    dm.check()
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3] and dm.num_classes == 100
    with pytest.raises(DataError, match="cifar-100-python/train and .*cifar-100-python/test"):
        make_datamodule("cifar100", root=str(tmp_path / "empty")).check()


def test_imagefolder_png_tree_with_split(tmp_path):
    for c, color in (("cat", 0), ("dog", 255)):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(np.full((40, 30, 3), color, np.uint8)).save(tmp_path / c / f"{i}.png")
    dm = make_datamodule("imagefolder", root=str(tmp_path), batch_size=4, image_size=32, val_fraction=0.2,
                         num_workers=0, resident=False)
    dm.check()
    dm.setup()
    assert dm.num_classes == 2
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and len(dm._val) == 2 and len(dm._train) == 8
    # dog images (all 255) normalise above cat images (all 0)
    assert all((x[i].mean() > 0) == (y[i] == 1) for i in range(len(y)))
    with pytest.raises(DataError, match="imagenet expects .*/train and .*/val"):
        make_datamodule("imagenet", root=str(tmp_path)).check()


def test_corrupt_png_and_truncated_idx_are_one_line_errors(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / "ok.png")
    good = (tmp_path / "dog" / "ok.png").read_bytes()
    (tmp_path / "dog" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"broken\.png: not a readable image") as e:
        make_datamodule("imagefolder", root=str(tmp_path), num_workers=0).check()
    assert "\n" not in str(e.value)
    images = np.zeros((10, 28, 28), np.uint8)
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 10, 28, 28)
    (tmp_path / "trunc").write_bytes(header + images.tobytes()[:1000])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "trunc")


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_synthetic_deterministic_and_balanced(task):
    x1, y1 = make_synthetic(task, 64, 32, seed=3)
    x2, y2 = make_synthetic(task, 64, 32, seed=3)
    x3, _ = make_synthetic(task, 64, 32, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    counts = torch.bincount(y1, minlength=SYNTHETIC_TASKS[task].num_classes)
    assert counts.max() - counts.min() <= 1
    assert x1.shape == (64, 1, 32, 32) and x1.dtype == torch.uint8


def test_relative_position_labels_match_glyph_positions():
    from pipelines.data.synthetic import glyph_bank
    x, y = make_synthetic("relative_position", 16, 32, seed=0)
    g = 4
    bank = torch.from_numpy(glyph_bank(g))
    for img, label in zip(x[:, 0], y):
        found = {}
        for k in (0, 1):
            for cy in range(0, 32, g):
                for cx in range(0, 32, g):
                    if torch.equal(img[cy:cy + g, cx:cx + g] == 255, bank[k]):
                        found[k] = (cy, cx)
        (ya, xa), (yb, xb) = found[0], found[1]
        assert int(label) == 2 * (ya > yb) + (xa > xb)


@pytest.mark.parametrize("min_gap", [None, 4])
def test_pair_orientation_labels_match_the_matching_pairs_orientation_and_gap(min_gap):
    from pipelines.data.synthetic import glyph_bank
    size, g = 64, 8
    x, y = make_synthetic("pair_orientation", 24, size, seed=1, min_gap=min_gap)
    bank = torch.from_numpy(glyph_bank(g))
    least = 2 if min_gap is None else min_gap
    for img, label in zip(x[:, 0], y):
        glyphs = {}  # (row, col) cell -> bank index
        for r in range(size // g):
            for c in range(size // g):
                on = img[r * g:(r + 1) * g, c * g:(c + 1) * g] == 255
                if on.any():
                    glyphs[(r, c)] = next(k for k in range(len(bank)) if torch.equal(on, bank[k]))
        assert len(glyphs) == 4
        cells = list(glyphs)
        same = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:] if glyphs[a] == glyphs[b]]
        assert len(same) == 1, "exactly one pair shows the same pattern twice"
        (r1, c1), (r2, c2) = same[0]
        vertical = c1 == c2
        assert vertical == bool(label) and (r1 == r2) != vertical
        assert max(abs(r1 - r2), abs(c1 - c2)) >= least
        others = [p for p in cells if p not in same[0]]
        (s1, d1), (s2, d2) = others
        assert (d1 == d2) != vertical and max(abs(s1 - s2), abs(d1 - d2)) >= least  # the other pair, other way


def test_synthetic_options_are_checked_in_one_line():
    with pytest.raises(DataError, match="min_gap applies to pair_orientation only"):
        make_datamodule("synthetic", batch_size=8, task="same_corners", min_gap=3)
    with pytest.raises(DataError, match=r"min_gap must be an integer in 1\.\.7"):
        make_datamodule("synthetic", batch_size=8, task="pair_orientation", image_size=64, min_gap=8)
    with pytest.raises(DataError, match="image size must be an integer >= 16"):
        make_datamodule("synthetic", batch_size=8, task="pair_orientation", image_size=8)


def test_top_k_metrics_on_crafted_logits():
    from torchmetrics.classification import MulticlassAccuracy
    logits = torch.tensor([[5., 4, 3, 2, 1, 0], [0, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]])
    y = torch.tensor([0, 2, 0])
    assert MulticlassAccuracy(6, top_k=1, average="micro")(logits, y).item() == pytest.approx(1 / 3)
    assert MulticlassAccuracy(6, top_k=5, average="micro")(logits, y).item() == pytest.approx(2 / 3)


def test_nan_loss_names_epoch_and_step():
    m = ClassificationModule("aa_resnet18", 4, 1, (16, 16), 2, 1, arch_kwargs=dict(kappa=0.5, num_heads=2,
                                                                                   small_input=True))
    batch = (torch.full((2, 1, 16, 16), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 0, step 0"):
        m.training_step(batch, 0)


def test_a_few_dozen_steps_lower_the_loss():
    cfg = dict(arch="aa_resnet18", kappa=0.25, num_heads=2, dataset="synthetic", batch_size=32, epochs=1,
               device="cpu", optim=dict(base_lr=0.4, warmup_frac=0.0),
               data=dict(task="same_corners", image_size=16, train_samples=1024, val_samples=64))
    first = fit(dict(cfg, limit_train_batches=2))
    later = fit(dict(cfg, epochs=2))  # 64 steps
    assert later["train_loss"] < first["train_loss"]
    assert later["params"] > 0 and later["gflops"] > 0


def test_image_size_checked_against_model(fashion_root):
    from pipelines.training.fit import build
    with pytest.raises(DataError, match="use small_input: true"):
        build(dict(dataset="fashion_mnist", small_input=False, data=dict(root=str(fashion_root))))


def _reference_views(img, pad, flip):
    """Every image the augmentation may make of one (C, H, W) float image: each shift, flipped or not."""
    H, W = img.shape[-2:]
    p = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    views = [p[:, dy:dy + H, dx:dx + W] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return views + ([v.flip(-1) for v in views] if flip else [])


def test_device_batches_epoch_against_a_per_image_reference():
    from pipelines.data import DeviceBatches

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 2, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(37)
    mean, std = [0.3, 0.6], [0.2, 0.25]
    kw = dict(flip=True, mean=mean, std=std, seed=3)
    DeviceBatches.CHUNK = 16  # several chunks per epoch
    try:
        train = DeviceBatches(images, labels, 10, shuffle=True, augment=True, drop_last=True, **kw)
        batches = list(train)
        assert len(batches) == len(train) == 3 and all(x.shape == (10, 2, 8, 8) for x, _ in batches)
        seen = torch.cat([y for _, y in batches])
        assert len(set(seen.tolist())) == 30  # a permutation, cut to whole batches
        m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        moved = 0
        for x, y in batches:
            for xi, yi in zip(x, y):  # each output is one of the reference's views of ITS image
                plain = images[yi].float() / 255
                refs = [(v - m) / s for v in _reference_views(plain, 1, True)]
                assert any(torch.allclose(xi, r, atol=1e-5) for r in refs)
                moved += not torch.allclose(xi, (plain - m) / s, atol=1e-5)
        assert moved > 15  # augmentation happened
        again = list(DeviceBatches(images, labels, 10, shuffle=True, augment=True, drop_last=True, **kw))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
        second = list(train)  # the next epoch is shuffled and augmented anew
        assert not torch.equal(second[0][1], batches[0][1])
        val = DeviceBatches(images, labels, 10, shuffle=False, augment=False, **kw)
        x = torch.cat([b[0] for b in val])
        assert len(val) == 4 and torch.allclose(x, (images.float() / 255 - m) / s, atol=1e-6)
        assert torch.equal(torch.cat([b[1] for b in val]), labels)
    finally:
        DeviceBatches.CHUNK = 8192


def test_deferred_non_finite_check_names_the_first_bad_step():
    """The GPU path (read every few steps, no host sync per step) names the same step as an immediate check."""
    from pipelines.training.classifier import NonFiniteWatch

    w = NonFiniteWatch(every=4, defer=True)
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, float("inf"), float("nan"), 0.5]
    w.step(torch.tensor(losses[0]), 0, 0, 0)
    for i in range(1, 5):  # a full window of finite losses passes
        w.step(torch.tensor(losses[i]), 0, i, i)
    w.step(torch.tensor(losses[5]), 1, 5, 0)  # the first bad one: epoch 1, step 5, batch 0
    w.step(torch.tensor(losses[6]), 1, 6, 1)
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 1, step 5 \(batch 0\)"):
        w.step(torch.tensor(losses[7]), 1, 7, 2)  # the window fills: read, raised
    w = NonFiniteWatch(every=100, defer=True)
    w.step(torch.tensor(float("nan")), 2, 9, 3)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 9 \(batch 3\)"):
        w.check()  # the epoch's end reads it too
