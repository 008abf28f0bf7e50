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


# ------------------------------------------------------------------------------------ device batches
class DeviceBatches:
    """Batches cut from uint8 tensors on one device; shuffled per epoch, augmented there.

    A training epoch is prepared in a few large steps at its start (permute, pad + random crop, flip, normalise,
    in chunks into one float buffer), so that each step only takes a view of that buffer: no data kernels or
    host work per step, which matters when a trial gets one CPU core and a fraction of a GPU. Validation
    batches are normalised once and kept."""

    CHUNK = 8192  # images prepared at once (bounds the temporaries of the crop)

    def __init__(self, images, labels, batch_size, *, shuffle, augment, flip, mean, std, seed=0, drop_last=False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.flip = batch_size, shuffle, augment, flip
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.drop_last, self.epoch, self.seed = drop_last, 0, seed
        self.epoch_of = None  # a callable giving the epoch to draw, else the count of epochs drawn
        self._fixed = None  # the normalised images when neither shuffled nor augmented (validation)

    def __len__(self):
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x, g):
        """Random translation by up to H/8 pixels (zero padding) and, if enabled, a horizontal flip."""
        B, C, H, W = x.shape
        pad = max(1, H // 8)
        x = F.pad(x, (pad, pad, pad, pad))
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
        x, y = self._epoch()
        for i in range(len(self)):
            yield x[i * self.batch_size:(i + 1) * self.batch_size], y[i * self.batch_size:(i + 1) * self.batch_size]


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
        dev = self.device or (self.trainer.strategy.root_device if self.trainer else torch.device("cpu"))
        self._train = tuple(t.to(dev) for t in self._train)
        self._val = tuple(t.to(dev) for t in self._val)

    def _batches(self, data, train):
        return DeviceBatches(*data, self.batch_size if train else self.val_batch_size, shuffle=train,
                             augment=train and self.augment, flip=self.flip, mean=self.mean, std=self.std,
                             seed=self.seed, drop_last=train and data[0].shape[0] > self.batch_size)

    def train_dataloader(self):
        batches = self._batches(self._train, True)
        if self.trainer is not None:
            # A fit resumed from a checkpoint continues the epochs' shuffles. Read the epoch when each epoch
            # starts: Lightning asks for this loader (to count steps for the schedule) before it restores the
            # checkpoint's epoch, so the epoch known here would be 0 and a resumed trial would replay epoch 0.
            trainer = self.trainer
            batches.epoch_of = lambda: trainer.current_epoch
        return batches

    def val_dataloader(self):
        return self._batches(self._val, False)


class FashionMNISTDataModule(TensorDataModule):
    name, num_classes, in_channels = "fashion_mnist", 10, 1

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

    def __init__(self, root: str = "data/cifar100", **kw):
        super().__init__(**kw)
        self.root = root

    def load(self, split):
        return load_cifar100(self.root, split)


class SyntheticDataModule(TensorDataModule):
    """Generated tasks that need long-range or relative-position information (see pipelines.synthetic)."""

    name, in_channels = "synthetic", 1
    flip = False  # a flip changes left/right answers

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


class ImageFolderDataModule(pl.LightningDataModule):
    """Any ImageFolder tree (a folder per class): ``root/train`` + ``root/val``, or one tree split by
    ``val_fraction``. ImageNet is this with the standard 224 px transforms (`imagenet`)."""

    name = "imagefolder"
    in_channels = 3

    def __init__(self, root: str, batch_size: int = 64, image_size: int = 224, val_fraction: float = 0.1,
                 num_workers: int = 4, seed: int = 0, resize: Optional[int] = None, device=None):
        super().__init__()
        self.root, self.batch_size, self.size = Path(root), batch_size, image_size
        self.val_fraction, self.num_workers, self.seed = val_fraction, num_workers, seed
        self.resize = resize or int(round(image_size * 256 / 224))
        self._train = self._val = None

    def _trees(self):
        if not self.root.is_dir():
            raise DataError(f"{self.name} root {self.root} does not exist")
        split = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        return (self.root / "train", self.root / "val") if split else (self.root, None)

    VERIFY_ALL_UP_TO = 20000  # trees with more files get a random sample of this many verified

    def check(self):
        from PIL import Image, UnidentifiedImageError

        for tree in filter(None, self._trees()):
            classes = [d for d in tree.iterdir() if d.is_dir()]
            if not classes:
                raise DataError(f"{tree} has no class folders (expected {tree}/<class>/<image>)")
            files = sorted(p for d in classes for p in d.rglob("*") if p.is_file())
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

    @property
    def num_classes(self):
        return len([d for d in self._trees()[0].iterdir() if d.is_dir()])

    @property
    def image_size(self):
        return (self.size, self.size)

    def setup(self, stage=None):
        from torchvision import datasets, transforms as T

        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        train_tf = T.Compose([T.RandomResizedCrop(self.size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_tf = T.Compose([T.Resize(self.resize), T.CenterCrop(self.size), T.ToTensor(), norm])
        train_dir, val_dir = self._trees()
        if val_dir is not None:
            self._train, self._val = datasets.ImageFolder(train_dir, train_tf), datasets.ImageFolder(val_dir, val_tf)
            return
        full_train, full_val = datasets.ImageFolder(train_dir, train_tf), datasets.ImageFolder(train_dir, val_tf)
        perm = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = max(1, int(len(perm) * self.val_fraction))
        self._train = torch.utils.data.Subset(full_train, perm[n_val:])
        self._val = torch.utils.data.Subset(full_val, perm[:n_val])

    def _loader(self, ds, train):
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=train, drop_last=False,
                                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                           persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self._train, True)

    def val_dataloader(self):
        return self._loader(self._val, False)


class ImageNetDataModule(ImageFolderDataModule):
    name = "imagenet"

    def check(self):
        train, val = self._trees()
        if val is None:
            raise DataError(f"imagenet expects {self.root}/train and {self.root}/val ImageFolder trees")
        super().check()


DATASETS = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar100": CIFAR100DataModule,
    "synthetic": SyntheticDataModule,
    "imagefolder": ImageFolderDataModule,
    "imagenet": ImageNetDataModule,
}


DETECTION_DATASETS = ("coco", "synthetic_coco")  # in pipelines.coco, which imports this module


def make_datamodule(name: str, **options):
    if not isinstance(name, str) or name not in (*DATASETS, *DETECTION_DATASETS):
        raise DataError(f"dataset must be one of {sorted(DATASETS) + list(DETECTION_DATASETS)}; got {name!r}")
    if name in DETECTION_DATASETS:
        from .coco import CocoDataModule, SyntheticCocoDataModule
        cls = CocoDataModule if name == "coco" else SyntheticCocoDataModule
    else:
        cls = DATASETS[name]
    try:
        return cls(**options)
    except TypeError as e:
        raise DataError(f"dataset {name}: {e}") from None
