"""Detection: the synthetic COCO generator, the COCO loader and its checks, transforms, COCOeval, training,
and a tiny detection study through Ray Tune and MLflow."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import write_study
from aa_study.cli import main
from pipelines.data.coco import CocoDataModule, hflip, make_synthetic_coco
from pipelines.data import DataError
from pipelines.training.detector import coco_stats


@pytest.fixture
def coco_root(tmp_path):
    make_synthetic_coco(tmp_path / "coco", images=12, size=64, classes=3, seed=1)
    return tmp_path / "coco"


def test_generator_writes_coco_that_pycocotools_loads(coco_root):
    from pycocotools.coco import COCO

    n_images, seen_cats = 0, set()
    for split in ("train2017", "val2017"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(coco_root / "annotations" / f"instances_{split}.json"))
        n_images += len(gt.getImgIds())
        for img in gt.loadImgs(gt.getImgIds()):
            anns = gt.loadAnns(gt.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 6 and (coco_root / split / img["file_name"]).is_file()
            for a in anns:
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w > 0
                seen_cats.add(a["category_id"])
        assert len(gt.getCatIds()) == 3
    assert n_images == 12 and seen_cats <= {1, 2, 3}
    # deterministic by seed
    other = coco_root.parent / "again"
    make_synthetic_coco(other, images=12, size=64, classes=3, seed=1)
    assert (other / "annotations/instances_val2017.json").read_text() == \
        (coco_root / "annotations/instances_val2017.json").read_text()


def test_cocoeval_ground_truth_scores_one_and_shifted_boxes_less(coco_root):
    dm = CocoDataModule(str(coco_root))
    dm.check()
    gt = dm.coco_gt()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in dm.docs["val"]["annotations"]]
    assert coco_stats(gt, perfect)["map"] == pytest.approx(1.0)
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] * 0.3, d["bbox"][1], d["bbox"][2], d["bbox"][3]]} for d in perfect]
    s = coco_stats(gt, shifted)
    assert s["map"] < 0.7 and s["ap50"] >= s["ap75"]
    empty = coco_stats(gt, [])
    assert empty["map"] == 0.0 and empty["aps"] == 0.0
    # 64 px images hold no object of COCO's "large" size (area >= 96^2): APl is undefined, NaN, never 0
    assert math.isnan(empty["apl"]) and math.isnan(coco_stats(gt, perfect)["apl"])


def test_flip_moves_boxes_with_the_image(coco_root):
    dm = CocoDataModule(str(coco_root))
    dm.setup()
    image, target = dm._val[0]
    boxes = target["boxes"]
    fimg, fboxes = hflip(image, boxes)
    back, bboxes = hflip(fimg, fboxes)
    assert torch.equal(back, image) and torch.equal(bboxes, boxes)
    for (x1, y1, x2, y2), (f1, _, f2, _) in zip(boxes.int().tolist(), fboxes.int().tolist()):
        assert torch.equal(image[:, y1:y2, x1:x2].flip(-1), fimg[:, y1:y2, f1:f2])  # the glyph moved with its box


def test_malformed_coco_is_a_one_line_error(coco_root):
    ann = coco_root / "annotations" / "instances_val2017.json"
    doc = json.loads(ann.read_text())
    (coco_root / "val2017" / doc["images"][0]["file_name"]).unlink()
    with pytest.raises(DataError, match="is missing from") as e:
        CocoDataModule(str(coco_root)).check()
    assert "\n" not in str(e.value)
    ann.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDataModule(str(coco_root)).check()
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="needs lists images, annotations and categories"):
        CocoDataModule(str(coco_root)).check()


def test_a_few_steps_lower_the_detection_loss(coco_root):
    from aa_modules.detection import aa_retinanet

    torch.manual_seed(0)
    dm = CocoDataModule(str(coco_root))
    dm.setup()
    images, targets = zip(*[dm._val[i] for i in range(2)])
    model = aa_retinanet(4, "aa_resnet18", kappa=0.25, num_heads=2, stages=(4,), min_size=64, max_size=64)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    losses = []
    for _ in range(16):
        loss = sum(model(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    # other input sizes and aspect ratios (the relative tables crop / clamp): detections come out
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 80, 112), torch.rand(3, 64, 48)])
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


@pytest.mark.slow
def test_tiny_detection_study_through_ray_and_mlflow(workdir, capsys):
    path = write_study(workdir, """
        name: det
        task: detection
        report: table7
        grid: {arch: [aa_resnet18], kappa: [0.25], num_heads: [2], pos_enc: [none, relative]}
        seeds: 1
        train:
          dataset: synthetic_coco
          data: {images: 12, size: 64, classes: 2}
          epochs: 1
          batch_size: 4
          stages: [4]
          recipe: detection
          device: cpu
        profiles: {cpu: {}}
    """)
    assert main(["run", str(path), "--quiet"]) == 0
    c = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("det-cpu")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert {"map", "ap50", "ap75", "params", "gflops"} <= set(r.data.metrics)
        assert r.data.params["pos_enc"] in ("none", "relative")
    assert main(["report", str(path), "--out", str(workdir / "rep")]) == 0
    t7 = (workdir / "rep" / "table7.md").read_text()
    assert "Table 7" in t7 and "mAP" in t7 and "synthetic_coco" in t7


def test_missing_coco_root_stops_the_study_before_it_starts(workdir, capsys):
    path = write_study(workdir, """
        name: det
        task: detection
        grid: {arch: [aa_resnet18], kappa: [0.25], num_heads: [2], pos_enc: [relative]}
        train: {dataset: coco, data: {root: no/such/coco}, stages: [4], device: cpu}
    """)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.data: coco root" in err and "does not exist" in err and "\n" not in err.strip()
