import os
import textwrap

import pytest

TINY_STUDY = """
name: tiny
description: a 4-cell x 2-seed study small enough for CI
report: [table6, figure5]
grid:
  arch: [aa_resnet18]
  kappa: [0.25, 0.5]
  upsilon: kappa
  num_heads: [2]
  pos_enc: [none, relative]
seeds: 2
train:
  dataset: synthetic
  data: {task: relative_position, image_size: 16, train_samples: 128, val_samples: 64}
  epochs: 2
  batch_size: 64
  stages: [4]
  small_input: true
  device: cpu
resources: {cpu: 1, gpu: 0}
max_failures: 1
profiles:
  cpu: {}
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with the default store under it (AA_STUDY_HOME)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AA_STUDY_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def tiny_study(workdir):
    path = workdir / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_STUDY))
    return path


def write_study(dir_, text, name="study.yaml"):
    path = dir_ / name
    path.write_text(textwrap.dedent(text))
    return path


def store_files(root):
    """Every file under root (to show that nothing was written)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
