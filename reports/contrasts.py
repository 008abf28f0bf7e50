"""The comparisons a study's grid makes, as contrasts (`reports.stats`): for every axis that varies, each value
against a reference value at equal other axes (κ against the no-attention baseline, each encoding against
`none`, N_h against the fewest heads, ...), plus, for every marginal, its top value against the runner-up, so
that "best" is said only where that lead is resolved. One Holm family per report.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import pandas as pd

from .runs import AXES, BASELINE_BLIND
from .stats import MIN_SEEDS, Contrast, compare, holm, seeds_text
from .tables import BASELINE_LABEL, ENC_NAMES, Table

AXIS_NAMES = {"arch": "architecture", "kappa": "κ", "upsilon": "υ", "num_heads": "N_h", "pos_enc": "encoding"}


def is_baseline(row) -> bool:
    return float(row["kappa"]) == 0 and float(row["upsilon"]) == 0


def value_name(axis: str, v) -> str:
    if axis == "pos_enc":
        return ENC_NAMES.get(v, str(v))
    if isinstance(v, float):
        return f"{AXIS_NAMES[axis]}={v:g}"
    return f"{AXIS_NAMES[axis]}={v}" if axis != "arch" else str(v)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-9
        except (TypeError, ValueError):
            return False
    if pd.isna(a) and pd.isna(b):
        return True
    return a == b


def tied(cells: pd.DataFrame) -> bool:
    return bool(len(cells)) and bool(((cells["kappa"] - cells["upsilon"]).abs() < 1e-9).all())


def varying_axes(cells: pd.DataFrame) -> Dict[str, list]:
    out = {}
    have = cells[cells["n"] > 0]
    for axis in AXES:
        if axis == "upsilon" and tied(have):
            continue
        sub = have[~have.apply(is_baseline, axis=1)] if axis in BASELINE_BLIND else have
        vals = sorted(sub[axis].dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
        if len(vals) > 1:
            out[axis] = vals
    return out


def reference(axis: str, values: list):
    if axis in ("kappa", "upsilon"):
        return 0.0 if any(_same(v, 0.0) for v in values) else values[0]
    if axis == "pos_enc":
        return "none" if "none" in values else values[0]
    return values[0]


def matched_pairs(cells: pd.DataFrame, axis: str, va, vb) -> List[Tuple[pd.Series, pd.Series]]:
    """(cell with axis = va, cell with axis = vb) equal on every other axis. Against the no-attention baseline
    only the architecture must match (the baseline has no encoding and no heads)."""
    have = cells[cells["n"] > 0]
    pairs = []
    for _, a in have[have[axis].map(lambda v: _same(v, va))].iterrows():
        if axis in BASELINE_BLIND and is_baseline(a):
            continue
        for _, b in have[have[axis].map(lambda v: _same(v, vb))].iterrows():
            if axis in BASELINE_BLIND and is_baseline(b):
                continue
            if is_baseline(a) and is_baseline(b):
                others = ["arch"]
            elif is_baseline(a) or is_baseline(b):
                if axis not in ("kappa", "upsilon"):
                    continue
                others = ["arch"]
            else:
                others = [k for k in AXES if k != axis and not (axis == "kappa" and k == "upsilon" and tied(cells))]
            if all(_same(a[k], b[k]) for k in others if k != axis):
                pairs.append((a, b))
    return pairs


def side_name(row, axis: str, value) -> str:
    """How one side of a contrast is named: its value on the compared axis, or the no-attention baseline."""
    if not is_baseline(row):
        return value_name(axis, value)
    return BASELINE_LABEL + (f", {row['arch']}" if axis == "arch" else "")


class Family:
    """The report's contrasts, keyed by the (unordered) pair of cells, adjusted together (Holm)."""

    def __init__(self, cells: pd.DataFrame, runs: pd.DataFrame, metric: str):
        self.cells, self.metric = cells, metric
        fin = runs[(runs["status"] == "FINISHED") & runs[metric].notna()]
        self.values: Dict[str, Dict[int, float]] = {
            cell: dict(zip(g["seed"].astype(int), g[metric].astype(float))) for cell, g in fin.groupby("cell")}
        self.axes = varying_axes(cells)
        self.by_pair: Dict[frozenset, Contrast] = {}
        self.order: List[Contrast] = []
        for axis, vals in self.axes.items():
            ref = reference(axis, vals)
            for v in vals:
                if not _same(v, ref):
                    self.pairs(axis, v, ref)

    def pairs(self, axis, va, vb) -> List[Tuple[Contrast, int]]:
        """The contrasts of every matched cell pair (va vs vb) on one axis, added to the family (before `adjust`)
        if new, each with the sign that orients it as va − vb."""
        out = []
        for a, b in matched_pairs(self.cells, axis, va, vb):
            key = frozenset((a["cell"], b["cell"]))
            if key not in self.by_pair:
                rest = [] if is_baseline(a) else [value_name(k, a[k]) for k in self.axes if k not in (axis, "upsilon")]
                name_a, name_b = side_name(a, axis, va), side_name(b, axis, vb)
                label = f"{name_a} vs {name_b}" + (f" ({', '.join(rest)})" if rest else "")
                c = compare(self.values.get(a["cell"], {}), self.values.get(b["cell"], {}), label, name_a, name_b,
                            axis=axis, cell_a=a["cell"], cell_b=b["cell"])
                self.by_pair[key] = c
                self.order.append(c)
            c = self.by_pair[key]
            out.append((c, 1 if c.tags["cell_a"] == a["cell"] else -1))
        return out

    def adjust(self) -> "Family":
        holm(self.order)
        return self

    # ------------------------------------------------------------------------------------ reporting
    def thin(self) -> Tuple[int, int, int, int]:
        """(cells with 1..MIN_SEEDS-1 finished seeds, cells with any, contrasts whose CI is wider than the
        difference, contrasts)."""
        n = self.cells["n"] if len(self.cells) else pd.Series([], dtype=int)
        few = int(((n > 0) & (n < MIN_SEEDS)).sum())
        wide = sum(1 for c in self.order if c.wider_than_effect)
        return few, int((n > 0).sum()), wide, len(self.order)

    def table(self, scale: float = 100.0) -> pd.DataFrame:
        rows = []
        for c in self.order:
            have = min(c.n_a, c.n_b)
            test = {"paired": f"paired, n={c.n_a}", "welch": f"Welch, n={c.n_a} vs {c.n_b}"}.get(
                c.kind, f"too few seeds (n={c.n_a} vs {c.n_b})")
            rows.append({
                "Comparison": c.label,
                "Δ (pp)": "" if math.isnan(c.diff) else f"{c.diff * scale:+.2f}",
                "95% CI": "" if math.isnan(c.ci_lo) else f"[{c.ci_lo * scale:+.2f}, {c.ci_hi * scale:+.2f}]",
                "test": test,
                "p": "" if math.isnan(c.p) else f"{c.p:.3g}",
                "p (Holm)": "" if math.isnan(c.p_holm) else f"{c.p_holm:.3g}",
                "verdict": c.verdict,
                "seeds to resolve": seeds_text(c, have),
            })
        return pd.DataFrame(rows, columns=["Comparison", "Δ (pp)", "95% CI", "test", "p", "p (Holm)", "verdict",
                                           "seeds to resolve"])

    def as_table(self, caption: str) -> Table:
        return Table("contrasts", "Contrasts: each value of an axis against its reference, at equal other axes",
                     caption + " Δ = A − B in percentage points. 95% CI unadjusted: paired t over seeds where both "
                     "cells ran the same seeds, Welch's t otherwise. Verdicts at a family-wise α = 0.05, Holm's "
                     f"adjustment over the {len(self.order)} contrasts of this report (the marginals' leads "
                     "included). Seeds to resolve: per cell, for 80% power at the observed difference.",
                     self.table(), self.numbers())

    def numbers(self) -> pd.DataFrame:
        return pd.DataFrame([{"comparison": c.label, "a": c.a, "b": c.b, "kind": c.kind, "n_a": c.n_a, "n_b": c.n_b,
                              "diff": c.diff, "ci_lo": c.ci_lo, "ci_hi": c.ci_hi, "p": c.p, "p_holm": c.p_holm,
                              "verdict": c.verdict, "seeds_needed": c.seeds_needed, **c.tags} for c in self.order])


def banner(family: Family) -> str:
    """One line when the evidence is thin (cells with fewer than 3 seeds, or CIs wider than the effects)."""
    few, cells, wide, total = family.thin()
    parts = []
    if few:
        parts.append(f"{few} of {cells} cells have fewer than {MIN_SEEDS} finished seeds")
    if wide:
        parts.append(f"{wide} of {total} contrasts have a 95% CI wider than the difference they estimate")
    if not parts:
        return ""
    return ("THIN EVIDENCE: " + "; ".join(parts) + ". Read this report as a smoke test, not a finding; "
            "the contrasts table says how many seeds might resolve each difference.")
