"""Reports for any study: per-axis marginal tables, pairwise pivots, line plots over numeric axes and a
top-1 vs cost scatter. Works on the runs DataFrame of `reports.runs.load_runs` (MLflow only).

A marginal is an average over cells, not over runs: for each value of an axis, the mean of the cell means of
every cell with that value (so it averages over the other axes as the grid holds them), with the spread between
those cells (lowest to highest cell mean) and no confidence interval: different cells are not seeds of one
thing. The highest value is called best only where its lead over the runner-up is resolved by the matched
contrasts (`reports.contrasts`, Holm-adjusted with the report's other contrasts). An axis with one value is
reported as fixed, not tabled.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd

from .runs import AXES, BASELINE_BLIND, describe
from .tables import BASELINE_LABEL, Table, chance_level, dodge, draw_chance, style

NUMERIC_AXES = ("kappa", "upsilon", "num_heads")
CATEGORICAL_AXES = ("pos_enc", "arch")


def _finished(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    fin = runs[(runs["status"] == "FINISHED") & runs[metric].notna()].copy()
    for k in NUMERIC_AXES:
        fin[k] = pd.to_numeric(fin[k], errors="coerce")
    return fin




def _scope(runs: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The runs an axis is about: heads and encodings exist only where there is attention."""
    if axis in BASELINE_BLIND:
        att = runs[(pd.to_numeric(runs["kappa"], errors="coerce") > 0) | (pd.to_numeric(runs["upsilon"], errors="coerce") > 0)]
        return att if len(att) else runs
    return runs


def axes_of(runs: pd.DataFrame, metric: str = "val_top1") -> Tuple[Dict[str, list], Dict[str, object]]:
    """(varying axes -> sorted values, fixed axes -> their value) over finished runs; υ tied to κ is not
    an axis of its own."""
    fin = _finished(runs, metric)
    varying, fixed = {}, {}
    tied = len(fin) and (fin["kappa"] == fin["upsilon"]).all()
    for k in AXES:
        if k == "upsilon" and tied:
            fixed["upsilon"] = "κ (tied)"
            continue
        vals = sorted(_scope(fin, k)[k].dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
        if len(vals) > 1:
            varying[k] = vals
        elif len(vals) == 1:
            fixed[k] = vals[0]
    return varying, fixed


def marginal(runs: pd.DataFrame, axis: str, metric: str = "val_top1") -> pd.DataFrame:
    """Per value of `axis`: mean of its cells' means, lowest and highest cell mean, cells, runs, median cost."""
    fin = _scope(_finished(runs, metric), axis)
    rows = []
    for value, g in fin.groupby(axis, sort=True):
        cell_means = g.groupby("cell")[metric].mean()
        rows.append({axis: value, "mean": float(cell_means.mean()), "lo": float(cell_means.min()),
                     "hi": float(cell_means.max()), "n_cells": int(len(cell_means)), "n": int(len(g)),
                     "params": g["params"].median(), "gflops": g["gflops"].median()})
    return pd.DataFrame(rows)


def pivot(runs: pd.DataFrame, rows: str, cols: str, metric: str = "val_top1") -> pd.DataFrame:
    fin = _finished(runs, metric)
    if rows in BASELINE_BLIND or cols in BASELINE_BLIND:
        fin = _scope(fin, rows if rows in BASELINE_BLIND else cols) if "kappa" not in (rows, cols) else fin
    return fin.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean")


def _lead(family, axis, m: pd.DataFrame):
    """(top value, runner-up, matched contrasts with their signs) of a marginal, registered in the family."""
    if family is None or len(m) < 2:
        return None
    ranked = m.sort_values("mean", ascending=False, kind="stable")[axis].tolist()
    return ranked[0], ranked[1], family.pairs(axis, ranked[0], ranked[1])


def _best_column(m: pd.DataFrame, axis: str, lead) -> list:
    out = [""] * len(m)
    if lead is None:
        return out
    top, runner, pairs = lead
    resolved = bool(pairs) and all(c.resolved and sign * c.diff > 0 for c, sign in pairs)
    name = runner if not isinstance(runner, float) else f"{runner:g}"
    i = m[axis].tolist().index(top)
    out[i] = (f"best: lead over {name} resolved in {len(pairs)} matched cell pair(s)" if resolved else
              f"highest, lead over {name} not resolved" + ("" if pairs else " (no matched cells)"))
    return out


def _marginal_table(axis, m, lead, metric, caption) -> Table:
    label = "top-1" if metric == "val_top1" else metric
    disp = pd.DataFrame({
        axis: [f"{v:g}" if isinstance(v, float) else str(v) for v in m[axis]],
        f"{label}, mean of cell means (%)": [f"{v * 100:.2f}" for v in m["mean"]],
        "spread between cells (%)": [f"{lo * 100:.2f} – {hi * 100:.2f}" if n > 1 else "one cell"
                                      for lo, hi, n in zip(m["lo"], m["hi"], m["n_cells"])],
        "cells": m["n_cells"].astype(str),
        "runs": m["n"].astype(str),
        "GFLOPs (median)": [f"{g:.3f}" for g in m["gflops"]],
        "best": _best_column(m, axis, lead),
    })
    return Table(f"axis_{axis}", f"Average over the other axes: {axis}",
                 caption + " An average over cells (each cell's mean counts once), with the spread between them; "
                 "not a confidence interval. Best only where the lead over the runner-up is resolved (Holm).",
                 disp, m)


def _pivot_table(runs, a, b, metric, caption) -> Table:
    p = pivot(runs, a, b, metric)
    disp = p.apply(lambda col: col.map(lambda v: "" if pd.isna(v) else f"{v * 100:.2f}"))
    disp.insert(0, f"{a} \\ {b}", [f"{v:g}" if isinstance(v, float) else str(v) for v in p.index])
    disp.columns = [disp.columns[0]] + [f"{b}={c:g}" if isinstance(c, float) else f"{b}={c}" for c in p.columns]
    label = "top-1" if metric == "val_top1" else metric
    return Table(f"pivot_{a}_{b}", f"Mean {label} (%): {a} × {b}", caption, disp.reset_index(drop=True),
                 p.reset_index())


def line_series(runs: pd.DataFrame, axis: str, by: str, metric: str = "val_top1") -> Dict[str, pd.DataFrame]:
    """For a numeric axis: one series per value of the categorical axis `by` (mean and CI per x)."""
    fin = _finished(runs, metric)
    base = fin[(fin["kappa"] == 0) & (fin["upsilon"] == 0)] if axis in ("kappa", "upsilon") else fin.iloc[:0]
    out = {}
    for cat, g in _scope(fin, by).groupby(by, sort=True):
        g = pd.concat([base, g[~g.index.isin(base.index)]])  # κ = 0 (no attention) starts every line
        pts = []
        for x, gx in g.groupby(axis, sort=True):
            d = describe(gx[metric].tolist())
            pts.append({"x": x, "mean": d["mean"], "ci95": d["ci95"], "n": d["n"]})
        out[str(cat)] = pd.DataFrame(pts)
    return out


def _plot_lines(runs, axis, by, metric, out: Path, chance=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "aa-study"
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    lines = line_series(runs, axis, by, metric)
    xs = [x for pts in lines.values() for x in pts["x"]] or [0.0]
    log = axis == "num_heads"
    for i, (cat, pts) in enumerate(lines.items()):
        shift = dodge(i, len(lines), float(max(xs) - min(xs)), log)
        x = pts["x"] * shift if log else pts["x"] + shift
        ax.errorbar(x, pts["mean"] * 100, yerr=(pts["ci95"] * 100).fillna(0), capsize=3, label=f"{by}={cat}",
                    **(style(cat, i) if by == "pos_enc" else dict(color=f"C{i}", marker="o")))
    draw_chance(ax, chance)
    ax.set_xlabel(axis)
    ax.set_ylabel("top-1 (%)" if metric == "val_top1" else f"{metric} (%)")
    if log:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"line_{axis}_by_{by}"
    fig.savefig(out / f"{name}.png", dpi=150, metadata={"Software": None})
    fig.savefig(out / f"{name}.svg", metadata={"Date": None})
    plt.close(fig)
    return name


def _plot_cost(runs, metric, out: Path, chance=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fin = _finished(runs, metric)
    plt.rcParams["svg.hashsalt"] = "aa-study"
    fin = fin.assign(pos_enc=fin["pos_enc"].where((fin["kappa"] > 0) | (fin["upsilon"] > 0), "baseline"))
    rows = []
    for cell, g in fin.groupby("cell"):
        d = describe(g[metric].tolist())
        rows.append({"cell": cell, "top1": d["mean"], "ci95": d["ci95"], "gflops": g["gflops"].median(),
                     "pos_enc": g["pos_enc"].iloc[0]})
    cells = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    groups = list(cells.groupby("pos_enc", sort=True))
    span = float(cells["gflops"].max()) if len(cells) else 1.0
    for i, (enc, g) in enumerate(groups):  # offset per encoding: cells of equal cost do not hide each other
        ax.errorbar(g["gflops"] + dodge(i, len(groups), span), g["top1"] * 100, yerr=(g["ci95"] * 100).fillna(0), linestyle="none", capsize=3,
                    label=BASELINE_LABEL if enc == "baseline" else enc, **style(enc, i))
    draw_chance(ax, chance)
    # honest ranges: cost from zero; accuracy from chance (or zero) to the top of the highest error bar
    top = float(((cells["top1"] + cells["ci95"].fillna(0)) * 100).max()) if len(cells) else math.nan
    xmax = float(cells["gflops"].max()) if len(cells) else math.nan
    if math.isfinite(xmax) and xmax > 0:
        ax.set_xlim(0, xmax * 1.1)
    if math.isfinite(top):
        ax.set_ylim((chance * 100 if chance is not None else 0.0) * 0.95, min(100.0, top + 2) if top <= 100 else top * 1.02)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("top-1 (%)" if metric == "val_top1" else f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="encoding")
    fig.tight_layout()
    fig.savefig(out / "top1_vs_gflops.png", dpi=150, metadata={"Software": None})
    fig.savefig(out / "top1_vs_gflops.svg", metadata={"Date": None})
    plt.close(fig)
    return "top1_vs_gflops"


def generic_report(runs: pd.DataFrame, caption: str, out: Path, metric: str = "val_top1", family=None,
                   skip_figures=()) -> Tuple[List[Table], List[str], str]:
    """(tables, figure names, a Markdown line naming the fixed axes). With a `reports.contrasts.Family`, the
    marginals' leads join its contrasts and the family is Holm-adjusted here, before anything is judged."""
    varying, fixed = axes_of(runs, metric)
    fixed_line = "Fixed: " + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                                       for k, v in fixed.items()) if fixed else ""
    margs = {a: marginal(runs, a, metric) for a in varying}
    leads = {a: _lead(family, a, m) for a, m in margs.items()}
    if family is not None:
        family.adjust()
    tables = [_marginal_table(a, margs[a], leads[a], metric, caption) for a in varying]
    names = list(varying)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            tables.append(_pivot_table(runs, a, b, metric, caption))
    figures = []
    if len(runs[(runs["status"] == "FINISHED")]):
        out.mkdir(parents=True, exist_ok=True)
        cats = [c for c in CATEGORICAL_AXES if c in varying] or [c for c in CATEGORICAL_AXES if c in fixed]
        for axis in (a for a in NUMERIC_AXES if a in varying):
            by = cats[0] if cats else "pos_enc"
            if f"line_{axis}_by_{by}" in skip_figures:  # drawn already as a paper figure (Figure 5)
                continue
            figures.append(_plot_lines(runs, axis, by, metric, out, chance_level(runs)))
        figures.append(_plot_cost(runs, metric, out, chance_level(runs)))
    return tables, figures, fixed_line
