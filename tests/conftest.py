import os
import shutil
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository

# Before anything imports Triton (Lightning, torch.compile): on a machine without CUDA aa_modules switches
# Triton's interpreter on, so tests/networks/test_flash_relative.py runs the GPU kernels on the CPU.
import aa_modules  # noqa: F401,E402

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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium_dom(url: str, profile_dir, virtual_time_ms: int = 20000) -> str:
    """The DOM headless Chromium renders for url (offline flags; a fresh profile)."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile_dir}", f"--virtual-time-budget={virtual_time_ms}",
                           "--window-size=1440,900",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_env(marker: str):
    """SIGKILL every process whose environment holds marker (e.g. RAY_TMPDIR=...): Ray processes rename
    their command lines, so their environment is what tells a test's own processes apart."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, PermissionError):
            pass


def small_study(dir_, kappa, pos_enc, epochs, train_samples=128, extra="") -> Path:
    """A one-seed aa_resnet18 study (N_h 2, attention in stage 4 only) on 16 px relative_position, CPU."""
    base = f"""
        name: tiny
        grid: {{arch: [aa_resnet18], kappa: {kappa}, num_heads: [2], pos_enc: {pos_enc}}}
        seeds: 1
        train:
          dataset: synthetic
          data: {{task: relative_position, image_size: 16, train_samples: {train_samples}, val_samples: 64}}
          epochs: {epochs}
          batch_size: 64
          stages: [4]
          device: cpu
        profiles: {{cpu: {{}}}}
    """
    return write_study(dir_, textwrap.dedent(base) + textwrap.dedent(extra))


def _server_processes() -> set:
    out = subprocess.run(["pgrep", "-af", "raylet|gcs_server|mlflow.server|mlflow server"], capture_output=True,
                         text=True).stdout
    return {line for line in out.splitlines() if "pgrep" not in line}


@pytest.fixture(scope="session", autouse=True)
def no_ray_or_mlflow_process_left():
    """The suite leaves no Ray or MLflow server process behind (those that ran before it are not its own)."""
    import time

    before = _server_processes()
    yield
    deadline = time.time() + 30  # the last test's processes may take a moment to exit
    while _server_processes() - before and time.time() < deadline:
        time.sleep(1)
    left = _server_processes() - before
    assert not left, f"the tests left these processes running: {sorted(left)}"
