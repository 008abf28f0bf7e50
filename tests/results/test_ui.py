"""`aa-study ui` serves the study's store; headless Chromium opens the link we print, as a user would."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import CHROMIUM, chromium_dom, free_port
from pipelines.spec import load_study
from pipelines.tracking import Tracker


def _store_with_study(tiny_study, workdir):
    """The store a launch writes (same Tracker calls), without training."""
    study = load_study(tiny_study, "cpu")
    tracker = Tracker(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = tracker.experiment_id(study.experiment, create=True)
    parent = tracker.start_launch(exp, study, "aa-study run tiny.yaml", tiny_study.read_text())
    for t in study.trials:
        rid = tracker.start_trial(exp, parent, study, t)
        tracker.log_metrics(rid, {"val_top1": 0.5 + 0.1 * t.seed}, step=1)
        tracker.end(rid, "FINISHED")
    tracker.end(parent, "FINISHED")
    return study, exp


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", dom, flags=re.S)))


def _wait_healthy(base: str):
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail("mlflow server did not answer /health within 90 s")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
@pytest.mark.slow
def test_ui_serves_the_study_and_chromium_opens_its_runs(tiny_study, workdir, tmp_path):
    study, exp = _store_with_study(tiny_study, workdir)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "aa_study.cli", "ui", str(tiny_study), "--port", str(port)],
                          cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ}, start_new_session=True)
    try:
        first = ui.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs\?viewStateShareKey=aa-study)", first)
        assert m, first
        url, exp_id = m.group(1), m.group(2)
        assert exp_id == exp
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base)

        # bound to loopback only (the default): a listening socket on 127.0.0.1:port, none on 0.0.0.0
        listening = [l.split()[1] for l in open("/proc/net/tcp").read().splitlines()[1:] if l.split()[3] == "0A"]
        assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening

        # what the runs table loads: the trials with their axes as params
        req = urllib.request.Request(base + "/ajax-api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [exp], "max_results": 100,
                                                      "filter": "tags.kind = 'trial'"}).encode(),
                                     headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(req, timeout=10))["runs"]
        seen = {(p["key"], p["value"]) for r in runs for p in r["data"]["params"]}
        assert len(runs) == 8 and {("kappa", "0.25"), ("kappa", "0.5"), ("pos_enc", "relative"),
                                   ("pos_enc", "none"), ("seed", "0"), ("seed", "1")} <= seen

        # the page a user reaches from the printed link: its first screen (1440 x 900) shows every trial as a row
        # with κ, υ, N_h, encoding, seed and val top-1 as columns (the experiment's shared view)
        dom = chromium_dom(url, tmp_path / "chromium")
        text = _text(dom)
        assert "tiny-cpu" in text  # the study's experiment
        assert "Model training" in text and "Run Name" in text  # the training runs table, not GenAI traces
        assert "8 matching runs" in text and "tiny-cpu-launch" not in text, text[:3000]  # trials, not the launch
        table = text[text.index("Run Name"):text.index("matching runs")]
        for column in ("kappa", "upsilon", "num_heads", "pos_enc", "seed", "val_top1"):
            assert column in table, (column, table)
        names = {r["info"]["run_name"] for r in runs}
        assert names and all(n in table for n in names), (names, table)  # every trial on the first screen
        assert "0.25" in table and "relative" in table and " 0.6 " in f" {table} "  # κ, encoding, a top-1 value

        # the report's run links open each run's page in that UI
        from reports.build import make_report

        make_report(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}", study.experiment, tmp_path / "rep",
                    log_to_mlflow=False, study=study.name, cells=study.cells, ui_base=base)
        md = (tmp_path / "rep" / "report.md").read_text()
        links = re.findall(r"\]\((http://127\.0\.0\.1:\d+/#/experiments/\d+/runs/([0-9a-f]{32}))\)", md)
        assert len(links) == 8 and {rid for _, rid in links} == {r["info"]["run_id"] for r in runs}
        link, rid = links[0]
        page = _text(chromium_dom(link, tmp_path / "chromium-run"))
        name = next(r["info"]["run_name"] for r in runs if r["info"]["run_id"] == rid)
        assert name in page and rid in page, page[:2000]
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def test_ui_without_a_store_says_so(tiny_study, workdir, capsys):
    from aa_study.cli import main

    assert main(["ui", str(tiny_study)]) == 2
    assert "no store at" in capsys.readouterr().err


def test_ui_warns_when_bound_to_every_interface(tiny_study, workdir):
    _store_with_study(tiny_study, workdir)
    ui = subprocess.Popen([sys.executable, "-m", "aa_study.cli", "ui", str(tiny_study), "--host", "0.0.0.0",
                           "--port", str(free_port())], cwd=workdir, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert "warning: --host 0.0.0.0 serves the store to every network" in ui.stderr.readline()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def test_ui_refuses_a_taken_port_before_printing_a_link(tiny_study, workdir, capsys):
    import socket

    from aa_study.cli import main

    _store_with_study(tiny_study, workdir)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["ui", str(tiny_study), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().splitlines()[-1] == (f"aa-study ui: error: port {port} on 127.0.0.1 is already in use "
                                                  "(another server?): choose another --port")


def _processes_with(marker: str) -> list:
    """The processes whose environment holds marker: aa-study ui and everything it started (MLflow's server, its
    workers and job consumers), whatever they renamed themselves to."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:120]))
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP (terminal closed)"])
def test_stopping_ui_stops_its_server(tiny_study, workdir, sig):
    _store_with_study(tiny_study, workdir)
    port, marker = free_port(), f"AA_UI_TEST={uuid.uuid4().hex}"
    ui = subprocess.Popen([sys.executable, "-m", "aa_study.cli", "ui", str(tiny_study), "--port", str(port)],
                          cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env={**os.environ, marker.split("=")[0]: marker.split("=")[1]})
    base = f"http://127.0.0.1:{port}"
    try:
        ui.stdout.readline()
        _wait_healthy(base)
        assert len(_processes_with(marker)) >= 2  # aa-study ui and MLflow's server
        ui.send_signal(sig)  # to aa-study alone, as a process manager, `kill` or a closing terminal sends it
        ui.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and _processes_with(marker):
            time.sleep(0.5)
        assert not _processes_with(marker), f"left running: {_processes_with(marker)}"
        with pytest.raises(OSError):
            urllib.request.urlopen(base + "/health", timeout=1)
    finally:
        if ui.poll() is None:
            ui.kill()
        for pid, _ in _processes_with(marker):
            os.kill(pid, signal.SIGKILL)
