"""Dataset names -> data modules, and `make_datamodule`, the one way training opens a dataset."""
from __future__ import annotations

from .images import (CIFAR100DataModule, DataError, FashionMNISTDataModule, ImageFolderDataModule,
                     ImageNetDataModule, SyntheticDataModule)

DATASETS = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar100": CIFAR100DataModule,
    "synthetic": SyntheticDataModule,
    "imagefolder": ImageFolderDataModule,
    "imagenet": ImageNetDataModule,
}


DETECTION_DATASETS = ("coco", "synthetic_coco")  # in .coco (imported when asked for: it needs pycocotools)


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
