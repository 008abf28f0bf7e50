"""Datasets as Lightning data modules: `make_datamodule(name, **options)` (registry), the image and tensor
modules (images: Fashion-MNIST, CIFAR-100, synthetic tasks, ImageFolder trees, ImageNet; GPU JPEG decode), the
synthetic tasks' generators (synthetic) and COCO detection (coco, imported only when asked for)."""
from .images import (AUGMENT_PRESETS, DataError, DeviceBatches, EncodedImages, EpochSampler,  # noqa: F401
                     ImageFolderDataModule, SeededImages, augment_preset, batch_slices, collate_encoded,
                     decode_encoded, read_idx)
from .registry import DATASETS, DETECTION_DATASETS, make_datamodule  # noqa: F401
