"""Time `aa-study report` over ~1,000 runs in a local sqlite store (target: <= 15 s on two cores).

    python benchmarks/report_speed.py [--seeds 16]

Writes 64 cells x SEEDS crafted runs (the launch's own Tracker calls) into a temporary store, then times
make_report (paper layouts + generic tables + figures) once cold and once warm, and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table  # noqa: E402
from pipelines.spec import parse_study  # noqa: E402
from pipelines.tracking import Tracker  # noqa: E402
from reports.build import make_report  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=16)
    a = p.parse_args(argv)
    spec = {"name": "speed", "report": ["table5", "table6", "figure5"],
            "grid": {"arch": ["aa_resnet18"], "kappa": [0.25, 0.5, 0.75, 1.0], "num_heads": [1, 2, 4, 8],
                     "pos_enc": ["none", "sine2d", "coordconv", "relative"]},
            "seeds": a.seeds, "train": {"dataset": "synthetic", "stages": [4], "device": "cpu"}}
    study = parse_study(spec)
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        tracker = Tracker(uri)
        exp = tracker.experiment_id(study.experiment, create=True)
        parent = tracker.start_launch(exp, study, "benchmark", None)
        t0 = time.perf_counter()
        for i, t in enumerate(study.trials):
            rid = tracker.start_trial(exp, parent, study, t)
            tracker.log_metrics(rid, {"val_top1": 0.5 + 0.001 * (i % 97), "val_top5": 0.9, "params": 1e7,
                                      "gflops": 0.3 + t.config["kappa"] * 0.01, "epoch": 1}, step=1)
            tracker.end(rid, "FINISHED")
        write_s = time.perf_counter() - t0
        rows = []
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            res = make_report(uri, study.experiment, Path(d) / f"rep-{label}", log_to_mlflow=False)
            rows.append([f"report of {res['runs']} runs ({label})", f"{time.perf_counter() - t0:.1f}",
                         f"{(time.perf_counter() - t0) / 15:.2f}x of the 15 s target"])
        rows.append([f"writing the {len(study.trials)} runs (setup, not the report)", f"{write_s:.1f}", ""])
    print(environment() + "\n")
    print(markdown_table(["measurement", "seconds", "ratio"], rows))


if __name__ == "__main__":
    main()
