"""Read a study's runs from MLflow into pandas, and summarise them per cell (mean, std, n, Student-t 95% CI).

MLflow only: no Ray, no model code, so a report can be made on a laptop against a cluster's tracking
server. The study's expected cells come from `cells.json`, logged by every launch on its parent run.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional

import pandas as pd

from pipelines.settings import GRID_AXES, RESULT_METRICS
from pipelines.tracking import search_runs  # MLflow only: that module imports no Ray and no model code

from .stats import describe, t_ci95  # noqa: F401  (re-exported)

AXES = list(GRID_AXES)
BASELINE_BLIND = ("num_heads", "pos_enc")  # axes a plain convolution (κ = υ = 0) does not have
METRICS = list(RESULT_METRICS)
CONTEXT = ["dataset", "data.task", "data.min_gap", "data.image_size", "epochs", "batch_size", "deterministic"]


class ReportError(ValueError):
    """The report cannot be made (no store, no experiment); one line."""


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise ReportError(f"experiment {name!r} is not in the tracking store (launch the study first)")
    return exp.experiment_id


def load_runs(c, exp_id: str) -> pd.DataFrame:
    """One row per trial run: cell, seed, status, the code version that ran it, axes, context params, latest metrics,
    error."""
    rows = []
    for r in search_runs(c, exp_id, "trial"):
        p, t, m = r.data.params, r.data.tags, r.data.metrics
        row = {"run_id": r.info.run_id, "cell": t.get("cell"), "seed": int(t.get("seed", -1)),
               "status": r.info.status, "error": t.get("error", ""), "node_id": t.get("node_id", ""),
               "code_version": t.get("code_version", "")}
        for k in AXES:
            row[k] = p.get(k)
        for k in CONTEXT:
            row[k] = p.get(k)
        for k in METRICS:
            row[k] = m.get(k, math.nan)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["run_id", "cell", "seed", "status", "error", "node_id", "code_version"] + AXES
                      + CONTEXT + METRICS)
    df = df.sort_values(["cell", "seed", "run_id"], kind="stable").reset_index(drop=True)  # same runs, same files
    for k in ("kappa", "upsilon"):
        df[k] = pd.to_numeric(df[k], errors="coerce")
    df["num_heads"] = pd.to_numeric(df["num_heads"], errors="coerce").astype("Int64")
    return df


def load_cells(c, launches: list) -> Dict[str, dict]:
    """Expected cells (key -> axes) from the launch runs' cells.json (oldest first: newest wins)."""
    cells: Dict[str, dict] = {}
    for r in launches:
        try:
            text = _download(c, r.info.run_id, "cells.json")
        except Exception:  # noqa: BLE001 - an older launch without the file
            continue
        cells.update(json.loads(text))
    return cells


def _download(c, run_id, path) -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        local = c.download_artifacts(run_id, path, d)
        return Path(local).read_text()


def summarise(df: pd.DataFrame, cells: Optional[Dict[str, dict]] = None,
              metrics=("val_top1", "val_top5")) -> pd.DataFrame:
    """One row per cell: axes, n finished, counts of failed / running / killed runs, and for each metric
    mean, std, ci95 (over FINISHED runs only), params and GFLOPs."""
    keys = list(dict.fromkeys(list((cells or {}).keys()) + list(df["cell"].dropna().unique())))
    rows = []
    for key in keys:
        runs = df[df["cell"] == key]
        fin = runs[runs["status"] == "FINISHED"]
        axes = dict((cells or {}).get(key, {}))
        if runs.shape[0]:
            first = runs.iloc[0]
            for k in AXES:
                axes.setdefault(k, first[k])
        row = {"cell": key, **{k: axes.get(k) for k in AXES}, "n": int(fin.shape[0]),
               "failed": int((runs["status"] == "FAILED").sum()), "running": int((runs["status"] == "RUNNING").sum()),
               "killed": int((runs["status"] == "KILLED").sum()),
               "params": fin["params"].median() if fin.shape[0] else math.nan,
               "gflops": fin["gflops"].median() if fin.shape[0] else math.nan,
               "gflops_conv": fin["gflops_conv"].median() if fin.shape[0] else math.nan}
        for m in metrics:
            vals = [v for v in fin[m].tolist() if not math.isnan(v)]
            d = describe(vals)
            row.update({f"{m}_{k}": d[k] for k in ("mean", "std", "ci95")})
            row[f"{m}_values"] = " ".join(f"{v * 100:.1f}" for v in vals) if m.startswith("val_") else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["kappa"] = pd.to_numeric(out["kappa"], errors="coerce")
        out["upsilon"] = pd.to_numeric(out["upsilon"], errors="coerce")
    return out
