"""Lightning data modules: fashion_mnist, cifar100, synthetic (held on the training device), imagefolder and
imagenet (files read by DataLoader workers).

Small datasets are loaded once into uint8 tensors and moved to the device the Trainer trains on, where
batches are cut, augmented (random shift by padding + crop, horizontal flip where it preserves the
label) and normalised. A trial that gets one CPU core and a fraction of a GPU is then never starved by a
data loader. Every module checks its inputs in `check()` before any training and raises `DataError`
with one line naming what is wrong.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .synthetic import SYNTHETIC_TASKS, check_options, make_synthetic

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A dataset that is missing, malformed or does not fit the model; the message is one line."""


# --------------------------------------------------------------------------------------------- readers
def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"dataset file {stem}[.gz] not found in {root}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gz or raw) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    except (OSError, struct.error, EOFError) as e:
        raise DataError(f"{path}: not a readable IDX file ({e})") from None
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def load_fashion_mnist(root, split: str):
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"fashion_mnist root {root} does not exist (Debian: apt-get install dataset-fashion-mnist)")
    images, labels = (read_idx(_find(root, stem)) for stem in FASHION_FILES[split])
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def load_cifar100(root, split: str):
    base = Path(root) / "cifar-100-python"
    path = base / ("train" if split == "train" else "test")
    if not path.is_file():
        raise DataError(f"CIFAR-100 expects {base}/train and {base}/test (the python pickle version, "
                        f"cifar-100-python.tar.gz from the CIFAR site, unpacked in {root})")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["fine_labels"], dtype=np.int64)
    except (KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path}: not a CIFAR-100 pickle ({type(e).__name__}: {e})") from None
    return torch.from_numpy(x), torch.from_numpy(y)


def trainer_epoch(dm: pl.LightningDataModule):
    """A callable giving the trainer's current epoch (None without a trainer), for a training loader to read when
    each epoch starts. Read then, not when the loader is made: Lightning asks for the train loader (to count steps
    for the schedule) before it restores a checkpoint's epoch, so a resumed trial would replay epoch 0's draws."""
    trainer = dm.trainer
    return (lambda: trainer.current_epoch) if trainer is not None else None


def training_device(dm: pl.LightningDataModule, device=None) -> torch.device:
    """Where a data module holds its tensors: the given device, else the trainer's, else the CPU."""
    return device or (dm.trainer.strategy.root_device if dm.trainer else torch.device("cpu"))


def shard_of(dm: pl.LightningDataModule):
    """(rank, world size) of the fit a data module feeds: each global batch is split between the ranks."""
    trainer = dm.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def batch_slices(n: int, batch_size: int, drop_last: bool, shard=(0, 1), train: bool = True):
    """[start, end) of this rank's part of each batch of `batch_size` over n ordered samples: the global batch
    is cut into `world` near-equal consecutive parts, so W workers see together exactly the batches one device
    would. A training tail smaller than the group is dropped (every rank must take the same number of steps);
    a validation rank whose part of the tail is empty just has one batch fewer."""
    rank, world = shard
    out = []
    for lo in range(0, (n // batch_size) * batch_size if drop_last else n, batch_size):
        size = min(batch_size, n - lo)
        if train and size < world:
            continue
        q, rem = divmod(size, world)
        a = lo + rank * q + min(rank, rem)
        b = a + q + (rank < rem)
        if b > a:
            out.append((a, b))
    return out


# ------------------------------------------------------------------------------------ device batches
class DeviceBatches:
    """Batches cut from uint8 tensors on one device; shuffled per epoch, augmented there.

    A training epoch is prepared in a few large steps at its start (permute, pad + random crop, flip, normalise,
    in chunks into one float buffer), so that each step only takes a view of that buffer: no data kernels or
    host work per step, which matters when a trial gets one CPU core and a fraction of a GPU. Validation
    batches are normalised once and kept."""

    CHUNK = 8192  # images prepared at once (bounds the temporaries of the crop)

    def __init__(self, images, labels, batch_size, *, shuffle, augment, flip, mean, std, seed=0, drop_last=False,
                 pad=None, shard=(0, 1)):
        self.images, self.labels, self.pad = images, labels, pad
        self.slices = batch_slices(images.shape[0], batch_size, drop_last, shard, train=shuffle)
        self.batch_size, self.shuffle, self.augment, self.flip = batch_size, shuffle, augment, flip
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.drop_last, self.epoch, self.seed = drop_last, 0, seed
        self.epoch_of = None  # a callable giving the epoch to draw, else the count of epochs drawn
        self._fixed = None  # the normalised images when neither shuffled nor augmented (validation)

    def __len__(self):
        return len(self.slices)

    def _augment(self, x, g):
        """Random translation by up to `pad` (default H/8) pixels (zero padding) and, if enabled, a horizontal flip."""
        B, C, H, W = x.shape
        pad = max(1, H // 8) if self.pad is None else self.pad
        x = F.pad(x, (pad, pad, pad, pad)) if pad else x
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=x.device)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]
        x = x[torch.arange(B, device=x.device)[:, None, None, None], torch.arange(C, device=x.device)[
            None, :, None, None], rows, cols]
        if self.flip:
            flip = torch.rand(B, generator=g, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def _normalise(self, x_uint8):
        return (x_uint8.float().div_(255) - self.mean).div_(self.std)

    def _epoch(self):
        """(float images, labels) of one epoch, in the order the batches take them."""
        dev = self.images.device
        if not (self.shuffle or self.augment):
            if self._fixed is None:
                self._fixed = torch.cat([self._normalise(self.images[i:i + self.CHUNK])
                                         for i in range(0, self.images.shape[0], self.CHUNK)])
            return self._fixed, self.labels
        g = torch.Generator(device=dev).manual_seed(self.seed * 100003 + self.epoch)
        self.epoch += 1
        n = self.images.shape[0]
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        out = torch.empty(self.images.shape, dtype=torch.float32, device=dev)
        for i in range(0, n, self.CHUNK):
            x = self.images[order[i:i + self.CHUNK]].float().div_(255)
            if self.augment:
                x = self._augment(x, g)
            out[i:i + self.CHUNK] = (x - self.mean).div_(self.std)
        return out, self.labels[order]

    def __iter__(self):
        if self.epoch_of is not None:  # the trainer's epoch, read when the epoch starts (after a resume's restore)
            self.epoch = self.epoch_of()
        x, y = self._epoch()  # the whole epoch, as one device would see it; this rank takes its part of each batch
        for a, b in self.slices:
            yield x[a:b], y[a:b]


class TensorDataModule(pl.LightningDataModule):
    """Base for datasets small enough to live on the training device."""

    name = "tensor"
    flip = True

    def __init__(self, batch_size: int = 128, augment: bool = True, seed: int = 0, val_batch_size: Optional[int] = None,
                 device: Optional[str] = None):
        super().__init__()
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        self.val_batch_size = val_batch_size or batch_size
        self.device = device
        self._train = self._val = None

    # subclasses: load(split) -> (uint8 images (N, C, H, W), int64 labels); num_classes; in_channels
    def load(self, split):
        raise NotImplementedError

    def check(self):
        """Raise DataError before training if the data is missing or malformed (keeps the val split)."""
        if self._val is None:
            self._val = self.load("val")

    @property
    def image_size(self):
        return tuple(self._val[0].shape[-2:]) if self._val else None

    def setup(self, stage=None):
        if self._val is None:
            self._val = self.load("val")
        if self._train is None:
            self._train = self.load("train")
            x = self._train[0].float() / 255
            dims = [0, 2, 3]
            self.mean, self.std = x.mean(dims).tolist(), x.std(dims).clamp_min(1e-3).tolist()
        dev = training_device(self, self.device)
        self._train = tuple(t.to(dev) for t in self._train)
        self._val = tuple(t.to(dev) for t in self._val)

    def _batches(self, data, train):
        return DeviceBatches(*data, self.batch_size if train else self.val_batch_size, shuffle=train,
                             augment=train and self.augment, flip=self.flip, mean=self.mean, std=self.std,
                             seed=self.seed, drop_last=train and data[0].shape[0] > self.batch_size,
                             shard=shard_of(self))

    def train_dataloader(self):
        batches = self._batches(self._train, True)
        batches.epoch_of = trainer_epoch(self)  # a resumed fit continues the epochs' shuffles
        return batches

    def val_dataloader(self):
        return self._batches(self._val, False)


class FashionMNISTDataModule(TensorDataModule):
    name, num_classes, in_channels = "fashion_mnist", 10, 1

    @classmethod
    def declared_shape(cls, options) -> tuple:
        """((H, W), channels, classes) of this dataset's images with these options, without opening it."""
        return (28, 28), cls.in_channels, cls.num_classes

    def __init__(self, root: str = FASHION_MNIST_DEFAULT_ROOT, limit_train: Optional[int] = None, **kw):
        super().__init__(**kw)
        self.root, self.limit_train = root, limit_train

    def load(self, split):
        x, y = load_fashion_mnist(self.root, split)
        if split == "train" and self.limit_train:
            x, y = x[: self.limit_train], y[: self.limit_train]
        return x, y


class CIFAR100DataModule(TensorDataModule):
    name, num_classes, in_channels = "cifar100", 100, 3

    @classmethod
    def declared_shape(cls, options) -> tuple:
        return (32, 32), cls.in_channels, cls.num_classes

    def __init__(self, root: str = "data/cifar100", **kw):
        super().__init__(**kw)
        self.root = root

    def load(self, split):
        return load_cifar100(self.root, split)


class SyntheticDataModule(TensorDataModule):
    """Generated tasks that need long-range or relative-position information (see pipelines.data.synthetic)."""

    name, in_channels = "synthetic", 1
    flip = False  # a flip changes left/right answers

    @classmethod
    def declared_shape(cls, options) -> tuple:
        task, size = options.get("task", "same_corners"), options.get("image_size", 32)
        if not isinstance(task, str) or task not in SYNTHETIC_TASKS:
            raise DataError(f"unknown synthetic task {task!r} (tasks: {', '.join(sorted(SYNTHETIC_TASKS))})")
        return (size, size), cls.in_channels, SYNTHETIC_TASKS[task].num_classes

    def __init__(self, task: str = "same_corners", image_size: int = 32, train_samples: int = 8192,
                 val_samples: int = 2048, data_seed: int = 0, min_gap: Optional[int] = None, **kw):
        super().__init__(augment=False, **{k: v for k, v in kw.items() if k != "augment"})
        try:
            check_options(task, image_size, min_gap)
        except ValueError as e:
            raise DataError(str(e)) from None
        self.task, self.size, self.n_train, self.n_val, self.data_seed = task, image_size, train_samples, val_samples, data_seed
        self.min_gap = min_gap
        self.num_classes = SYNTHETIC_TASKS[task].num_classes

    def load(self, split):
        n, offset = (self.n_train, 0) if split == "train" else (self.n_val, 1)
        return make_synthetic(self.task, n, self.size, seed=2 * self.data_seed + offset, min_gap=self.min_gap)


from ..settings import AUGMENT_PRESETS, augment_preset  # noqa: E402,F401  (plain data: spec keys cells by them)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random stream of one sample's augmentation in one epoch: a function of (seed, epoch, index) only."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class EpochSampler(torch.utils.data.Sampler):
    """Indices ``epoch * n + i`` in a seeded per-epoch order: the dataset reads the epoch from the index, so an
    image's augmentation depends on (seed, epoch, image) only, whatever the number of loader workers. With a
    shard (rank, world) and the global batch size, a rank draws its part of each global batch (batch_slices)."""

    def __init__(self, n: int, seed: int, shuffle: bool, batch_size: int = 1, shard=(0, 1)):
        self.n, self.seed, self.shuffle, self.epoch, self.epoch_of = n, seed, shuffle, 0, None
        self.slices = batch_slices(n, batch_size, False, shard, train=shuffle) if shard[1] > 1 else [(0, n)]

    def __len__(self):
        return sum(b - a for a, b in self.slices)

    def __iter__(self):
        e = self.epoch_of() if self.epoch_of is not None else self.epoch
        self.epoch = e + 1
        g = torch.Generator().manual_seed(self.seed * 100003 + e)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        order = order + e * self.n
        return iter(torch.cat([order[a:b] for a, b in self.slices]).tolist())


class SeededImages(torch.utils.data.Dataset):
    """(path, label) samples decoded with PIL and transformed under a per-(seed, epoch, image) random seed."""

    def __init__(self, samples, transform, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, k):
        from PIL import Image

        epoch, i = divmod(int(k), len(self.samples))
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        with torch.random.fork_rng(devices=[]):  # the process's own stream (workers=0: the trainer's) untouched
            torch.manual_seed(_sample_seed(self.seed, epoch, i))
            return self.transform(img), label


def _crop_box(size_wh, rng_seed, preset, out_size, resize, crop_scale, flip):
    """How one image becomes out_size x out_size: (top, left, height, width, flip, mode). Mode 0 (imagenet): crop
    that box and resize it, RandomResizedCrop's draw (the same stream, hence the same box, as the PIL path under
    the same seed). Mode 1 (validation, preset none): resize the whole image to (height, width), torchvision's
    Resize(resize), then take the out_size square at (top, left), its CenterCrop."""
    from torchvision import transforms as T

    w, h = size_wh
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        if preset == "imagenet":
            top, left, ch, cw = T.RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, h, w), crop_scale,
                                                               (3 / 4, 4 / 3))
            return top, left, ch, cw, bool(flip and torch.rand(1) < 0.5), 0
        flipped = bool(flip and torch.rand(1) < 0.5)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)  # torchvision's Resize(int) rule
    rw, rh = (new_short, new_long) if w <= h else (new_long, new_short)
    return int(round((rh - out_size) / 2.0)), int(round((rw - out_size) / 2.0)), rh, rw, flipped, 1


class EncodedImages(torch.utils.data.Dataset):
    """(file bytes, crop box, label) for decoding on the GPU: a loader worker only reads the file and the image's
    header (its size), and draws the crop from the per-(seed, epoch, image) stream; nvJPEG decodes the batch on
    the training device (decode_encoded). Files that are not JPEG are decoded and cropped here, with PIL."""

    def __init__(self, samples, seed: int, train: bool, preset: str, size: int, resize: int, crop_scale, flip: bool):
        self.samples, self.seed, self.train = samples, seed, train
        self.preset, self.size, self.resize, self.crop_scale, self.flip = preset, size, resize, crop_scale, flip

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, k):
        from PIL import Image
        from torchvision.io import read_file

        epoch, i = divmod(int(k), len(self.samples))
        path, label = self.samples[i]
        with Image.open(path) as im:  # reads the header only
            wh, fmt = im.size, im.format
        box = _crop_box(wh, _sample_seed(self.seed, epoch, i), self.preset if self.train else "none", self.size,
                        self.resize, self.crop_scale, self.flip and self.train)
        if fmt == "JPEG":
            return read_file(str(path)), torch.tensor(box), label
        from torchvision.transforms import functional as TF
        top, left, h, w, _, mode = box
        with Image.open(path) as im:
            img = im.convert("RGB")
        img = (TF.resized_crop(img, top, left, h, w, [self.size, self.size]) if mode == 0 else
               TF.crop(TF.resize(img, [h, w]), top, left, self.size, self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.flip(-1) if box[4] else x), torch.tensor(box), label


def collate_encoded(items):
    """One flat byte tensor for the batch's files (with their offsets), not one tensor per file: a loader worker
    hands each tensor to the main process through a file descriptor of its own, and a batch of 128 such fds per
    worker exhausts the process's limit."""
    data, boxes, labels = zip(*items)
    files = [d for d in data if d.dim() == 1]
    flat = torch.cat(files) if files else torch.empty(0, dtype=torch.uint8)
    ends = torch.tensor([d.numel() if d.dim() == 1 else -1 for d in data], dtype=torch.int64)
    decoded = [d for d in data if d.dim() != 1]  # non-JPEG files, already cropped (rare)
    return (flat, ends, decoded), torch.stack(boxes), torch.tensor(labels, dtype=torch.int64)


def _unpack(packed):
    flat, sizes, decoded = packed
    out, at, rest = [], 0, iter(decoded)
    for n in sizes.tolist():
        if n < 0:
            out.append(next(rest))
        else:
            out.append(flat[at:at + n])
            at += n
    return out


_DECODE_STREAMS: dict = {}


def _guarded(decode, device):
    """Run nvJPEG on a stream of its own, never on the training stream. nvJPEG's hardware engine writes its output
    buffers without waiting for work already queued on the stream it is given, and PyTorch's caching allocator hands
    out a block as soon as it is freed on its stream, so a decode on the training stream can overwrite memory that
    queued kernels still read: NaN losses within a few steps, on every GPU run of 2026-11-25 (torchvision PR 9606,
    TorchCodec PR 1634). A decode stream's blocks hold only decoded images, and each is recorded on the training
    stream, so the allocator hands one back to the decoder only once the training stream's work on it has run: the
    same guarantee as draining the training stream before each decode, without stalling it."""
    device = torch.device(device)
    if device.type != "cuda":
        return decode()
    main = torch.cuda.current_stream(device)
    side = _DECODE_STREAMS.get(device)
    if side is None:
        side = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        out = decode()
    main.wait_stream(side)
    for t in out:
        t.record_stream(main)
    return out


def decode_encoded(batch, device, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """An EncodedImages batch -> (normalised float images (B, 3, size, size), labels) on `device`: the JPEGs of the
    batch decoded together by nvJPEG (torchvision.io.decode_jpeg on CUDA), each cropped and resized there
    (bilinear, antialiased), flipped where drawn. An image nvJPEG cannot take (e.g. CMYK) is decoded on the CPU."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    packed, boxes, labels = batch
    data = _unpack(packed)
    jpeg = [j for j, d in enumerate(data) if d.dim() == 1]
    decoded = {}
    if jpeg:
        def decode():
            try:
                return decode_jpeg([data[j] for j in jpeg], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                out = []
                for j in jpeg:
                    try:
                        out.append(decode_jpeg(data[j], mode=ImageReadMode.RGB, device=device))
                    except RuntimeError:
                        out.append(decode_image(data[j], mode=ImageReadMode.RGB).to(device))
                return out
        decoded = dict(zip(jpeg, _guarded(decode, device)))
    rows = []
    for j, d in enumerate(data):
        if j not in decoded:  # already cropped in the loader worker
            rows.append(d.to(device, non_blocking=True).float())
            continue
        top, left, h, w, flipped, mode = boxes[j].tolist()
        img = decoded[j].unsqueeze(0).float()
        if mode == 0:  # crop, then resize
            img = F.interpolate(img[..., top:top + h, left:left + w], size=(size, size), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        else:  # resize, then centre-crop
            img = F.interpolate(img, size=(h, w), mode="bilinear", antialias=True,
                                align_corners=False)[0, :, top:top + size, left:left + size]
        rows.append(img.flip(-1) if flipped else img)
    x = torch.stack(rows).clamp_(0, 255).div_(255)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (x - m).div_(s).contiguous(memory_format=torch.channels_last), labels.to(device, non_blocking=True)


class ImageFolderDataModule(pl.LightningDataModule):
    """Any ImageFolder tree (a folder per class): ``root/train`` + ``root/val``, or one tree split by
    ``val_fraction``. ImageNet is this with the standard 224 px transforms (`imagenet`).

    Augmentation (``augment``): ``light`` pads by ``pad`` pixels (default image_size // 8) and crops back, the
    CIFAR recipe; ``imagenet`` is RandomResizedCrop(scale=``crop_scale``); ``none`` only resizes;
    ``auto`` (default) is light below 128 px, imagenet from 128 px. ``flip`` (default true) adds a random
    horizontal flip: turn it off for data with handedness (symbols, text). Every image is resized to
    image_size on its shorter side and centre-cropped square (validation likewise, with no augmentation).

    Where it is held (``resident``): ``auto`` (default) decodes a tree whose images fit in
    ``RESIDENT_MAX_BYTES`` once into uint8 tensors, cached in a file under $AA_STUDY_HOME/data, and keeps them on
    the training device, augmented there (presets none and light); larger trees, and the imagenet preset, are
    read by DataLoader workers. Either way an image's augmentation in an epoch is a function of (seed, epoch,
    image): the same seed gives the same result whatever ``num_workers`` is.
    """

    name = "imagefolder"
    in_channels = 3
    RESIDENT_MAX_BYTES = 2 * 2 ** 30

    @classmethod
    def declared_shape(cls, options) -> tuple:
        """The class count is the tree's, known once it is opened: 1000 stands for it in a network built to check
        its structure (meta device)."""
        size = options.get("image_size", 224)
        return (size, size), 3, 1000

    def __init__(self, root: str, batch_size: int = 64, image_size: int = 224, val_fraction: float = 0.1,
                 num_workers: int = 4, seed: int = 0, resize: Optional[int] = None, device=None,
                 augment: str = "auto", flip: bool = True, pad: Optional[int] = None, crop_scale=(0.08, 1.0),
                 resident="auto", decode: str = "cpu"):
        super().__init__()
        if decode not in ("cpu", "gpu"):
            raise DataError(f"decode must be cpu (PIL in loader workers) or gpu (nvJPEG on the training GPU); "
                            f"got {decode!r}")
        if augment not in AUGMENT_PRESETS:
            raise DataError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}; got {augment!r}")
        if not isinstance(flip, bool):
            raise DataError(f"flip must be true or false; got {flip!r}")
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
            raise DataError(f"pad must be an integer >= 0; got {pad!r}")
        try:
            lo, hi = (float(v) for v in crop_scale)
        except (TypeError, ValueError):
            raise DataError(f"crop_scale must be two numbers [min, max]; got {crop_scale!r}") from None
        if not 0 < lo <= hi <= 1:
            raise DataError(f"crop_scale must satisfy 0 < min <= max <= 1; got {crop_scale!r}")
        if resident not in ("auto", True, False):
            raise DataError(f"resident must be auto, true or false; got {resident!r}")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise DataError(f"num_workers must be an integer >= 0; got {num_workers!r}")
        self.root, self.batch_size, self.size = Path(root), batch_size, image_size
        self.val_fraction, self.num_workers, self.seed = val_fraction, num_workers, seed
        self.resize = resize or (int(round(image_size * 256 / 224)) if image_size >= 128 else image_size)
        self.preset = augment_preset(augment, image_size)
        self.flip, self.pad, self.crop_scale = flip, (image_size // 8 if pad is None else pad), (lo, hi)
        if resident is True and self.preset == "imagenet":
            raise DataError("resident: true holds images at their final size; use augment: light or none with it "
                            "(the imagenet preset crops from the full image, in the loader)")
        if decode == "gpu" and (resident is True or augment_preset(augment, image_size) == "light"):
            raise DataError("decode: gpu reads JPEGs in the loader and decodes them on the GPU: it takes augment "
                            "imagenet or none, and resident: false or auto")
        self.resident_option, self.device, self.decode = resident, device, decode
        self._samples = None
        self._train = self._val = None

    def _trees(self):
        if not self.root.is_dir():
            raise DataError(f"{self.name} root {self.root} does not exist")
        split = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        return (self.root / "train", self.root / "val") if split else (self.root, None)

    VERIFY_ALL_UP_TO = 20000  # trees with more files get a random sample of this many verified

    def check(self):
        from PIL import Image, UnidentifiedImageError

        trees = self._trees()
        names = []
        for tree in filter(None, trees):
            classes = sorted(d.name for d in tree.iterdir() if d.is_dir())
            if not classes:
                raise DataError(f"{tree} has no class folders (expected {tree}/<class>/<image>)")
            names.append(classes)
            files = sorted(p for d in classes for p in (tree / d).rglob("*") if p.is_file())
            if not files:
                raise DataError(f"{tree}: the class folders hold no image files")
            if len(files) > self.VERIFY_ALL_UP_TO:
                rng = np.random.default_rng(self.seed)
                files = [files[i] for i in rng.choice(len(files), self.VERIFY_ALL_UP_TO, replace=False)]
            for f in files:
                try:
                    with Image.open(f) as im:
                        im.verify()
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    raise DataError(f"{f}: not a readable image ({type(e).__name__}: {e})".replace("\n", " ")) from None
        if len(names[0]) < 2:
            raise DataError(f"{trees[0]} has {len(names[0])} class folder ({', '.join(names[0])}): a classifier "
                            "needs at least two")
        if len(names) == 2:
            missing_ = sorted(set(names[1]) - set(names[0]))
            if missing_:
                raise DataError(f"{trees[1]} has classes that {trees[0]} lacks: {', '.join(missing_[:5])}"
                                + (f" and {len(missing_) - 5} more" if len(missing_) > 5 else ""))
        print(self.summary())

    def _split(self):
        """(train samples, val samples, class names): lists of (path, label), labels from the train tree."""
        if self._samples is None:
            from torchvision import datasets

            train_dir, val_dir = self._trees()
            train = datasets.ImageFolder(train_dir)
            if val_dir is not None:
                val = datasets.ImageFolder(val_dir)
                remap = {i: train.class_to_idx[c] for c, i in val.class_to_idx.items()}
                self._samples = (train.samples, [(p, remap[y]) for p, y in val.samples], train.classes)
            else:
                perm = torch.randperm(len(train.samples), generator=torch.Generator().manual_seed(self.seed)).tolist()
                n_val = max(1, int(len(perm) * self.val_fraction))
                self._samples = ([train.samples[i] for i in perm[n_val:]], [train.samples[i] for i in perm[:n_val]],
                                 train.classes)
        return self._samples

    def summary(self) -> str:
        """One line: classes, images per split, the image sizes seen (a sample of up to 200), the choices made."""
        from PIL import Image

        train, val, classes = self._split()
        sizes = set()
        for path, _ in (train + val)[:: max(1, len(train + val) // 200)]:
            with Image.open(path) as im:
                sizes.add(im.size)
        seen = (f"{next(iter(sizes))[0]}x{next(iter(sizes))[1]}" if len(sizes) == 1 else
                f"mixed ({len(sizes)} sizes, {min(w for w, _ in sizes)}-{max(w for w, _ in sizes)} px wide)")
        aug = {"none": "none", "light": f"light (pad {self.pad} + crop)",
               "imagenet": f"imagenet (RandomResizedCrop scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g})"}[self.preset]
        return (f"{self.name} {self.root}: {len(classes)} classes, {len(train)} train / {len(val)} val images, "
                f"sizes seen {seen}; at {self.size} px, augment {aug}{', flip' if self.flip else ', no flip'}; "
                f"{'held on the training device' if self.resident else f'read by {self.num_workers} loader workers'}"
                f"{', JPEGs decoded on the GPU (nvJPEG)' if self.decode == 'gpu' and not self.resident else ''}")

    @property
    def num_classes(self):
        return len(self._split()[2])

    @property
    def image_size(self):
        return (self.size, self.size)

    @property
    def resident(self) -> bool:
        if self.resident_option != "auto":
            return bool(self.resident_option)
        if self.preset == "imagenet" or self.decode == "gpu":
            return False
        train, val, _ = self._split()
        return (len(train) + len(val)) * 3 * self.size * self.size <= self.RESIDENT_MAX_BYTES

    # ------------------------------------------------------------------------------------ transforms
    def transforms(self):
        """(train transform, val transform) of the loader path; PIL image -> normalised float tensor."""
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        base = [T.Resize(self.resize), T.CenterCrop(self.size)]
        flip = [T.RandomHorizontalFlip()] if self.flip else []
        if self.preset == "imagenet":
            train = [T.RandomResizedCrop(self.size, scale=self.crop_scale)] + flip
        elif self.preset == "light":
            train = [T.Resize(self.size), T.CenterCrop(self.size)] + (
                [T.RandomCrop(self.size, padding=self.pad)] if self.pad else []) + flip
        else:
            train = [T.Resize(self.size), T.CenterCrop(self.size)] + flip
        return T.Compose(train + norm), T.Compose(base + norm)

    def _decoded(self, samples, split):
        """uint8 (N, 3, S, S) and int64 labels of the samples, resized and centre-cropped; cached on disk."""
        import hashlib

        from PIL import Image
        from torchvision.transforms import functional as TF

        from ..tracking import default_home

        # the key changes with any file's path, size or time, the label map or the size: a stale cache is never read
        key = repr((str(self.root.resolve()), split, self.size,
                    [(str(p), os.path.getsize(p), os.path.getmtime(p), y) for p, y in samples]))
        sig = hashlib.sha1(key.encode()).hexdigest()[:16]
        cache = default_home() / "data" / "imagefolder-cache" / f"{sig}.pt"
        if cache.is_file():
            try:
                x, y = torch.load(cache, weights_only=True)
                return x, y
            except Exception:  # noqa: BLE001 - a partial or foreign file: decode again
                pass
        x = torch.empty((len(samples), 3, self.size, self.size), dtype=torch.uint8)
        for i, (path, _) in enumerate(samples):
            with Image.open(path) as im:
                img = TF.center_crop(TF.resize(im.convert("RGB"), self.size), self.size)
            x[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        y = torch.tensor([label for _, label in samples], dtype=torch.int64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save((x, y), tmp)
        os.replace(tmp, cache)  # atomic: concurrent trials never read half a file
        return x, y

    def setup(self, stage=None):
        train, val, _ = self._split()
        if self.resident:
            dev = training_device(self, self.device)
            self._train = tuple(t.to(dev) for t in self._decoded(train, "train"))
            self._val = tuple(t.to(dev) for t in self._decoded(val, "val"))
            return
        if self.on_gpu_decode:
            kw = dict(preset=self.preset, size=self.size, resize=self.resize, crop_scale=self.crop_scale, flip=self.flip)
            self._train, self._val = EncodedImages(train, self.seed, True, **kw), EncodedImages(val, self.seed, False, **kw)
            return
        train_tf, val_tf = self.transforms()
        self._train, self._val = SeededImages(train, train_tf, self.seed), SeededImages(val, val_tf, self.seed)

    @property
    def on_gpu_decode(self) -> bool:
        """decode: gpu where the fit runs on a GPU; elsewhere the PIL path (a note says so)."""
        if self.decode != "gpu" or self.resident:
            return False
        if training_device(self, self.device).type != "cuda":
            if not getattr(self, "_noted", False):
                print("decode: gpu but this fit runs on the CPU: decoding with PIL in the loader workers instead")
                self._noted = True
            return False
        return True

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(self._train, EncodedImages):  # file bytes and crop boxes: decode on the device
            return decode_encoded(batch, device, self.size)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _device_batches(self, data, train):
        # light: pad + crop (and flip); none: the flip alone, if on
        return DeviceBatches(*data, self.batch_size, shuffle=train,
                             augment=train and (self.preset == "light" or self.flip), flip=train and self.flip, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=self.seed,
                             drop_last=False, pad=self.pad if self.preset == "light" else 0, shard=shard_of(self))

    def _loader(self, ds, train):
        shard = shard_of(self)
        sampler = EpochSampler(len(ds), self.seed, shuffle=train, batch_size=self.batch_size, shard=shard)
        if train:
            sampler.epoch_of = trainer_epoch(self)
        encoded = isinstance(ds, EncodedImages)
        return torch.utils.data.DataLoader(ds, batch_size=-(-self.batch_size // shard[1]), sampler=sampler, drop_last=False,
                                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available() and not encoded,
                                           persistent_workers=self.num_workers > 0,
                                           collate_fn=collate_encoded if encoded else None,
                                           prefetch_factor=4 if encoded and self.num_workers else None)

    def train_dataloader(self):
        if self.resident:
            batches = self._device_batches(self._train, True)
            batches.epoch_of = trainer_epoch(self)
            return batches
        return self._loader(self._train, True)

    def val_dataloader(self):
        if self.resident:
            return self._device_batches(self._val, False)
        return self._loader(self._val, False)


class ImageNetDataModule(ImageFolderDataModule):
    name = "imagenet"

    def check(self):
        train, val = self._trees()
        if val is None:
            raise DataError(f"imagenet expects {self.root}/train and {self.root}/val ImageFolder trees")
        super().check()
