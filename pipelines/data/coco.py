"""Detection data: any COCO-format dataset (an images folder and an instances JSON), the detection
transforms that move boxes with the image, and `synthetic_coco`, a generator that writes a COCO-format
dataset (so the real loader is the tested one).

Layout (COCO 2017's, which the generator writes too):
    ROOT/train2017/*.png|jpg   ROOT/annotations/instances_train2017.json
    ROOT/val2017/*.png|jpg     ROOT/annotations/instances_val2017.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from .images import DataError
from .synthetic import NUM_GLYPHS, glyph_bank

SPLITS = {"train": ("train2017", "annotations/instances_train2017.json"),
          "val": ("val2017", "annotations/instances_val2017.json")}


# --------------------------------------------------------------------------------------- generator
def make_synthetic_coco(out, images: int = 128, size: int = 128, classes: int = 4, seed: int = 0,
                        val_fraction: float = 0.25) -> Dict[str, int]:
    """Write N images (size x size, grey noise) with 1-6 glyph objects of `classes` kinds at random scales
    and positions, as a COCO 2017 layout under `out`. Deterministic by seed."""
    from PIL import Image

    if not 1 <= classes <= NUM_GLYPHS:
        raise DataError(f"synthetic_coco: classes must be in 1..{NUM_GLYPHS}; got {classes}")
    if images < 2 or size < 32:
        raise DataError(f"synthetic_coco: needs images >= 2 and size >= 32; got {images}, {size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    bank = glyph_bank(8)
    n_val = max(1, int(round(images * val_fraction)))
    counts = {}
    ann_id = 1
    for split, n, first in (("train", images - n_val, 1), ("val", n_val, images - n_val + 1)):
        img_dir, ann_path = out / SPLITS[split][0], out / SPLITS[split][1]
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"images": [], "annotations": [],
               "categories": [{"id": c + 1, "name": f"glyph{c}", "supercategory": "glyph"} for c in range(classes)]}
        for i in range(n):
            image_id = first + i
            img = rng.integers(0, 64, size=(size, size), dtype=np.uint8)
            placed: List[tuple] = []
            for _ in range(int(rng.integers(1, 7))):
                for _try in range(20):  # objects do not overlap
                    s = int(rng.integers(size // 10, size // 3))
                    y, x = (int(v) for v in rng.integers(0, size - s, size=2))
                    if all(x + s <= px or px + ps <= x or y + s <= py or py + ps <= y for px, py, ps in placed):
                        break
                else:
                    continue
                c = int(rng.integers(classes))
                glyph = np.kron(bank[c], np.ones((s // 8 + 1, s // 8 + 1), bool))[:s, :s]
                img[y:y + s, x:x + s][glyph] = 255
                placed.append((x, y, s))
                doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": c + 1,
                                           "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
                ann_id += 1
            name = f"{image_id:012d}.png"
            Image.fromarray(img).save(img_dir / name)
            doc["images"].append({"id": image_id, "file_name": name, "height": size, "width": size})
        ann_path.write_text(json.dumps(doc))
        counts[split] = n
    return counts


# ----------------------------------------------------------------------------------------- reading
def read_instances(ann_path: Path, img_dir: Path) -> dict:
    """The instances JSON, checked: its keys, every image file present, boxes inside their images."""
    if not ann_path.is_file():
        raise DataError(f"COCO annotations {ann_path} not found")
    try:
        doc = json.loads(ann_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ann_path}: not valid JSON ({e})".replace("\n", " ")) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{ann_path}: a COCO instances file needs lists images, annotations and categories")
    try:
        sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
        for im in doc["images"]:
            if not (img_dir / im["file_name"]).is_file():
                raise DataError(f"{ann_path}: image {im['file_name']} (id {im['id']}) is missing from {img_dir}")
        cats = {c["id"] for c in doc["categories"]}
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            if a["image_id"] not in sizes:
                raise DataError(f"{ann_path}: annotation {a['id']} refers to unknown image {a['image_id']}")
            if a["category_id"] not in cats:
                raise DataError(f"{ann_path}: annotation {a['id']} has unknown category {a['category_id']}")
            W, H = sizes[a["image_id"]]
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W + 1e-3 or y + h > H + 1e-3:
                raise DataError(f"{ann_path}: annotation {a['id']} box {a['bbox']} lies outside its {W}x{H} image")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{ann_path}: malformed COCO entry ({type(e).__name__}: {e})") from None
    return doc


def hflip(image: torch.Tensor, boxes: torch.Tensor):
    """Flip a (C, H, W) image and its (N, 4) xyxy boxes left-right."""
    w = image.shape[-1]
    boxes = boxes.clone()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return image.flip(-1), boxes


class CocoDataset(torch.utils.data.Dataset):
    """Images as float tensors in [0, 1] (3 channels) and targets {boxes (xyxy), labels (1..K), image_id}."""

    def __init__(self, doc: dict, img_dir: Path, train: bool, seed: int = 0):
        self.img_dir, self.train = img_dir, train
        self.images = sorted(doc["images"], key=lambda im: im["id"])
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(sorted(doc["categories"], key=lambda c: c["id"]))}
        self.anns: Dict[int, list] = {}
        for a in doc["annotations"]:
            if not a.get("iscrowd", 0):
                self.anns.setdefault(a["image_id"], []).append(a)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        im = self.images[i]
        path = self.img_dir / im["file_name"]
        try:
            with Image.open(path) as pil:
                arr = np.asarray(pil.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        anns = self.anns.get(im["id"], [])
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        if self.train and self.rng.random() < 0.5:
            image, boxes = hflip(image, boxes)
        return image, {"boxes": boxes, "labels": labels, "image_id": im["id"]}


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


class CocoDataModule(pl.LightningDataModule):
    """`coco`: any COCO-format dataset in the COCO 2017 layout (real COCO, or what `aa-study make-data
    synthetic-coco` writes). Resizing to `min_size` (shorter side) happens inside torchvision's RetinaNet."""

    name = "coco"
    in_channels = 3

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, seed: int = 0, min_size: int = 128,
                 max_size: int = 1333, device=None):
        super().__init__()
        self.root, self.batch_size, self.num_workers, self.seed = Path(root), batch_size, num_workers, seed
        self.min_size, self.max_size = min_size, max_size
        self.docs: Dict[str, dict] = {}

    def _paths(self, split):
        img, ann = SPLITS[split]
        return self.root / ann, self.root / img

    def check(self):
        if not self.root.is_dir():
            raise DataError(f"coco root {self.root} does not exist")
        for split in ("train", "val"):
            if split not in self.docs:
                ann, img = self._paths(split)
                self.docs[split] = read_instances(ann, img)

    @property
    def num_classes(self):  # RetinaNet's count: the K categories as labels 1..K, plus index 0
        self.check()
        return len(self.docs["train"]["categories"]) + 1

    @property
    def image_size(self):
        self.check()
        im = self.docs["val"]["images"][0] if self.docs["val"]["images"] else {"height": self.min_size, "width": self.min_size}
        return (im["height"], im["width"])

    def setup(self, stage=None):
        self.check()
        self._train = CocoDataset(self.docs["train"], self._paths("train")[1], True, self.seed)
        self._val = CocoDataset(self.docs["val"], self._paths("val")[1], False, self.seed)

    def _loader(self, ds, train):
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=train, collate_fn=collate,
                                           num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self._train, True)

    def val_dataloader(self):
        return self._loader(self._val, False)

    def coco_gt(self):
        """pycocotools' COCO object of the val split (for COCOeval)."""
        import contextlib
        import io

        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = json.loads(json.dumps(self.docs["val"]))
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        return gt


class SyntheticCocoDataModule(CocoDataModule):
    """`synthetic_coco`: generated once (deterministic by its options) into a cache folder, then read through
    the same COCO loader. Default folder: $AA_STUDY_HOME/data/synthetic_coco-<images>-<size>-<classes>-<seed>."""

    name = "synthetic_coco"

    def __init__(self, images: int = 128, size: int = 128, classes: int = 4, data_seed: int = 0,
                 root: Optional[str] = None, **kw):
        if root is None:
            from ..tracking import default_home

            home = default_home()
            root = str(home / "data" / f"synthetic_coco-{images}-{size}-{classes}-{data_seed}")
        kw.setdefault("min_size", size)
        super().__init__(root=root, **kw)
        self.gen = dict(images=images, size=size, classes=classes, seed=data_seed)

    def check(self):
        if not (self.root / SPLITS["val"][1]).is_file():
            import shutil
            import tempfile

            self.root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root.parent, prefix=".gen-"))
            make_synthetic_coco(tmp, **self.gen)
            try:
                tmp.rename(self.root)  # atomic: concurrent trials never see half a dataset
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another process wrote it first
        super().check()
