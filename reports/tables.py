"""The paper's layouts (Tables 5, 6, 7 and Figure 5) and a table of every cell, from `runs.summarise`.

Each table is a `Table`: a title, a caption (which says when the study is a proxy), a DataFrame of
display strings (mean ± 95% CI) and the numeric DataFrame behind it (for CSV). Renderers for Markdown,
LaTeX and HTML are here; Figure 5 is drawn with matplotlib.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import yaml

PAPER_VALUES = Path(__file__).with_name("paper_values.yaml")
ENCODINGS = ["none", "sine2d", "coordconv", "relative"]
ENC_NAMES = {"none": "none", "sine2d": "2D sine", "coordconv": "CoordConv", "relative": "relative"}
TABLE5_KAPPAS = [0.25, 0.5, 0.75, 1.0]
# One colour and marker per encoding in every figure of a report (Figure 5, line plots, the cost plot).
ENC_STYLE = {"relative": dict(color="C0", marker="o"), "none": dict(color="C1", marker="s"),
             "sine2d": dict(color="C2", marker="^"), "coordconv": dict(color="C3", marker="D"),
             "baseline": dict(color="0.35", marker="X")}
BASELINE_LABEL = "no attention (κ=0)"


def style(key: str, i: int = 0) -> dict:
    return dict(ENC_STYLE.get(key, dict(color=f"C{4 + i % 6}", marker="v")))


def chance_level(runs: pd.DataFrame) -> Optional[float]:
    """1 / classes of a classification study (metric `num_classes`, logged by trials), else None."""
    if "num_classes" not in runs or not runs["num_classes"].notna().any():
        return None
    k = runs["num_classes"].dropna().median()
    return 1.0 / k if k >= 2 else None


def dodge(i: int, count: int, span: float, log: bool = False) -> float:
    """A small x offset (or factor, on a log axis) so that error bars at the same x do not hide each other."""
    step = (i - (count - 1) / 2) * 0.012
    return 2 ** step if log else step * (span or 1.0)


def draw_chance(ax, chance: Optional[float], scale: float = 100.0):
    if chance is not None:
        ax.axhline(chance * scale, color="0.5", linestyle=":", linewidth=1, label=f"chance ({chance * scale:.4g} %)")
FULL_SCALE = ("imagenet", "coco")


@dataclass
class Table:
    name: str
    title: str
    caption: str
    display: pd.DataFrame
    numbers: pd.DataFrame
    series: Optional[dict] = None


def paper_values() -> dict:
    return yaml.safe_load(PAPER_VALUES.read_text())


# ------------------------------------------------------------------------------------------ formats
def pm(mean: float, ci: float, n: int, scale: float = 100.0, digits: int = 2) -> str:
    if n == 0:
        return ""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"  # finished runs, but the metric is undefined for this data (COCOeval's -1, top-5 of 2 classes)
    if n < 2 or math.isnan(ci):
        return f"{mean * scale:.{digits}f} (n={n})"
    return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def missing(row) -> str:
    parts = [f"{row[k]} {k}" for k in ("failed", "running", "killed") if row.get(k)]
    return "missing" + (f" ({', '.join(parts)})" if parts else "")


def _num(v, digits=2, scale=1.0) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{digits}f}"


def context_caption(runs: pd.DataFrame) -> str:
    """Dataset, architecture, epochs and seeds; says 'proxy' unless ImageNet / COCO."""
    if runs.empty:
        return "No runs recorded yet."
    ds = ", ".join(sorted(runs["dataset"].dropna().unique()))
    task = ", ".join(sorted(runs["data.task"].dropna().unique()))
    size = ", ".join(sorted(runs["data.image_size"].dropna().unique()))
    archs = ", ".join(sorted(runs["arch"].dropna().unique()))
    epochs = ", ".join(sorted(runs["epochs"].dropna().unique(), key=float))
    seeds = ", ".join(map(str, sorted(runs["seed"].unique())))
    gap = ", ".join(sorted(runs["data.min_gap"].dropna().unique()))
    data = ds + (f" ({task}" + (f", min_gap {gap}" if gap else "") + (f", {size} px" if size else "") + ")" if task else "")
    proxy = not set(runs["dataset"].dropna().unique()) <= set(FULL_SCALE)
    head = ("PROXY study, not the paper's setting: " if proxy else "") + f"dataset {data}; {archs}; " \
           f"{epochs} epochs; seeds {seeds}."
    return head + f" {determinism_note(runs)} Values: mean ± 95% CI (Student t) over finished seeds, in %."


def determinism_note(runs: pd.DataFrame) -> str:
    """Whether the runs used deterministic algorithms (the `deterministic` setting; runs before it recorded none)."""
    mode = runs["deterministic"].fillna("not recorded")
    counts = mode.value_counts()
    if len(counts) == 1:
        m = counts.index[0]
        return {"True": "Deterministic algorithms: on.", "False": "Deterministic algorithms: off."}.get(
            m, "Deterministic algorithms: not recorded (runs made before the setting existed).")
    parts = ", ".join(f"{n} {'on' if m == 'True' else 'off' if m == 'False' else 'not recorded'}"
                      for m, n in counts.sort_index().items())
    return f"Deterministic algorithms: mixed ({parts}): runs made without it can differ with what shares their GPU."


# ------------------------------------------------------------------------------------------- layouts
def _baseline(cells: pd.DataFrame, arch) -> Optional[pd.Series]:
    b = cells[(cells["arch"] == arch) & (cells["kappa"] == 0) & (cells["upsilon"] == 0)]
    return b.iloc[0] if len(b) else None


def _metric_cells(row, metrics, scale=100.0) -> Dict[str, str]:
    out = {}
    for m, label in metrics:
        out[label] = pm(row.get(f"{m}_mean"), row.get(f"{m}_ci95", math.nan), int(row["n"]), scale) if row["n"] else ""
    return out


def _delta(row, base, metric="val_top1") -> str:
    if base is None or row is None or not row["n"] or not base["n"] or row["cell"] == base["cell"]:
        return ""
    return f"{(row[f'{metric}_mean'] - base[f'{metric}_mean']) * 100:+.2f}"


def _paper(rows: List[dict], **match) -> Optional[dict]:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def cells_table(cells: pd.DataFrame, caption: str) -> Table:
    disp, nums = [], []
    for _, r in cells.iterrows():
        base = _baseline(cells, r["arch"])
        d = {"Cell": r["cell"], "Architecture": r["arch"], "κ": _num(r["kappa"]), "υ": _num(r["upsilon"]),
             "N_h": "" if pd.isna(r["num_heads"]) else str(int(r["num_heads"])), "Encoding": ENC_NAMES.get(r["pos_enc"], r["pos_enc"]),
             "GFLOPs": _num(r["gflops"], 3), "Params (M)": _num(r["params"], 3, 1e-6)}
        d.update(_metric_cells(r, [("val_top1", "top-1"), ("val_top5", "top-5")]))
        d["n"] = str(int(r["n"])) if r["n"] else missing(r)
        d["Δ top-1"] = _delta(r, base)
        d["top-1 per seed"] = r.get("val_top1_values", "")
        disp.append(d)
        nums.append(r.to_dict())
    return Table("cells", "Every cell of the study", caption + " Δ top-1: difference of means against the "
                 "no-attention baseline; its CI and verdict are in the contrasts table.", pd.DataFrame(disp),
                 pd.DataFrame(nums))


def table5(cells: pd.DataFrame, caption: str, paper: dict) -> Table:
    """κ = υ sweep with relative embeddings: baseline, 0.25, 0.5, 0.75, 1.0 (and any other κ the study ran), the
    paper's row beside each (reports/paper_values.yaml), GFLOPs by our full count and by convolutions only."""
    disp, nums = [], []
    rows_paper = paper.get("table5", [])
    for arch in sorted(cells["arch"].dropna().unique()):
        sub = cells[(cells["arch"] == arch)]
        base = _baseline(cells, arch)
        tied = sub[(sub["kappa"] == sub["upsilon"]) & (sub["kappa"] > 0) & (sub["pos_enc"] == "relative")]
        kappas = sorted(set(TABLE5_KAPPAS) | set(tied["kappa"].round(6)))
        rows = [("baseline (κ=υ=0)", 0.0, base)] + [
            (f"κ=υ={k:g}", k, tied[(tied["kappa"] - k).abs() < 1e-9].iloc[0] if ((tied["kappa"] - k).abs() < 1e-9).any() else None)
            for k in kappas]
        for label, k, r in rows:
            p = _paper(rows_paper, arch=arch, kappa=float(k))
            d = {"Architecture": arch, "Setting": label}
            if r is None:
                d.update({"GFLOPs": "", "GFLOPs (conv only)": "", "Params (M)": "", "top-1": "", "top-5": "",
                          "n": "not in this study", "Δ top-1": ""})
            else:
                d.update({"GFLOPs": _num(r["gflops"], 3), "GFLOPs (conv only)": _num(r.get("gflops_conv"), 3),
                          "Params (M)": _num(r["params"], 3, 1e-6)})
                d.update(_metric_cells(r, [("val_top1", "top-1"), ("val_top5", "top-5")]))
                d["n"] = str(int(r["n"])) if r["n"] else missing(r)
                d["Δ top-1"] = _delta(r, base)
                nums.append({"setting": label, **r.to_dict()})
            for key, col in (("gflops", "paper GFLOPs"), ("params", "paper params (M)"), ("top1", "paper top-1"),
                             ("top5", "paper top-5")):
                d[col] = _num(p[key], 1) if p and p.get(key) is not None else ""
            disp.append(d)
    src = paper.get("sources", {}).get("table5", "")
    return Table("table5", "Table 5: attention channels κ = υ (relative embeddings)",
                 caption + f" Paper columns: {src}; the paper's values are for AA-ResNet-50 on ImageNet (the other "
                 "architectures have none). GFLOPs: ours count every multiply-add of the network, attention's "
                 "matmuls included; 'conv only' leaves attention's matmuls out, the convention nearest the paper's "
                 "falling GFLOPs (benchmarks/results/paper-gflops.md). Δ: difference of means against the baseline; "
                 "its CI and whether it is resolved are in the contrasts table.", pd.DataFrame(disp), pd.DataFrame(nums))


def table6(cells: pd.DataFrame, caption: str, paper: dict, metrics=None, name="table6") -> Table:
    """Encodings: rows architecture × {none, 2D sine, CoordConv, relative} at each κ > 0 of the study."""
    metrics = metrics or [("val_top1", "top-1"), ("val_top5", "top-5")]
    paper_rows = paper.get(name, [])
    disp, nums = [], []
    for arch in sorted(cells["arch"].dropna().unique()):
        sub = cells[(cells["arch"] == arch) & (cells["kappa"] > 0)]
        for (k, u) in sorted(set(zip(sub["kappa"], sub["upsilon"]))):
            block = sub[(sub["kappa"] == k) & (sub["upsilon"] == u)]
            ref = block[block["pos_enc"] == "none"]
            ref = ref.iloc[0] if len(ref) else None
            for enc in ENCODINGS + sorted(set(block["pos_enc"]) - set(ENCODINGS)):
                hit = block[block["pos_enc"] == enc]
                r = hit.iloc[0] if len(hit) else None
                p = _paper(paper_rows, arch=arch, pos_enc=enc) or _paper(paper_rows, pos_enc=enc)
                d = {"Architecture": arch, "κ, υ": f"{k:g}, {u:g}", "Encoding": ENC_NAMES.get(enc, enc)}
                if r is None:
                    d.update({label: "" for _, label in metrics})
                    d.update({"n": "not in this study", "Δ vs none": ""})
                else:
                    d.update(_metric_cells(r, metrics))
                    d["n"] = str(int(r["n"])) if r["n"] else missing(r)
                    d["Δ vs none"] = _delta(r, ref, metrics[0][0])
                    nums.append(r.to_dict())
                for m, label in metrics:
                    key = {"val_top1": "top1", "val_top5": "top5", "map": "map", "ap50": "ap50", "ap75": "ap75"}[m]
                    d[f"paper {label}"] = _num(p.get(key)) if p and p.get(key) is not None else ""
                d["paper model"] = p["model"] if p else ""
                disp.append(d)
    title = ("Table 7: positional encodings, detection (RetinaNet)" if name == "table7"
             else "Table 6: positional encodings, classification")
    return Table(name, title, caption + " Paper columns: the paper's row for the same encoding (its model and "
                 "dataset named; see reports/paper_values.yaml for provenance). Δ vs none: difference of means; its "
                 "CI and whether it is resolved are in the contrasts table.", pd.DataFrame(disp), pd.DataFrame(nums))


def figure5_points(cells: pd.DataFrame) -> pd.DataFrame:
    """Top-1 against κ (κ = υ), one series per encoding in {relative, none}; κ = 0 belongs to both."""
    rows = []
    for arch in sorted(cells["arch"].dropna().unique()):
        sub = cells[(cells["arch"] == arch) & (cells["kappa"] == cells["upsilon"]) & (cells["n"] > 0)]
        base = sub[sub["kappa"] == 0]
        for enc in ("relative", "none"):
            pts = pd.concat([base, sub[(sub["kappa"] > 0) & (sub["pos_enc"] == enc)]])
            for _, r in pts.sort_values("kappa").iterrows():
                rows.append({"arch": arch, "series": enc, "kappa": r["kappa"], "top1": r["val_top1_mean"] * 100,
                             "ci95": r["val_top1_ci95"] * 100, "n": int(r["n"]), "cell": r["cell"]})
    return pd.DataFrame(rows, columns=["arch", "series", "kappa", "top1", "ci95", "n", "cell"])


def figure5(cells: pd.DataFrame, caption: str, out: Path, chance: Optional[float] = None) -> Table:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "aa-study"  # the same runs give the same SVG, byte for byte
    pts = figure5_points(cells)
    series = {}
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    groups = list(pts.groupby(["arch", "series"], sort=True))
    span = float(pts["kappa"].max() - pts["kappa"].min()) if len(pts) else 1.0
    for i, ((arch, series_name), g) in enumerate(groups):
        label = ("with relative embeddings" if series_name == "relative" else "without position encoding")
        if pts["arch"].nunique() > 1:
            label = f"{arch}, {label}"
        x = g["kappa"] + dodge(i, len(groups), span)
        drawn = ax.errorbar(x, g["top1"], yerr=g["ci95"].fillna(0), capsize=3, label=label,
                            linestyle="--" if series_name == "none" else "-", **style(series_name))
        series[label] = (list(g["kappa"]), list(drawn.lines[0].get_ydata()))  # x as data, before the dodge
    draw_chance(ax, chance)
    ax.set_xlabel("fraction of attentional channels κ = υ")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Figure 5: relative embeddings vs none as κ grows", fontsize=10)
    ax.grid(alpha=0.3)
    if len(pts):
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figure5.png", dpi=150, metadata={"Software": None})
    fig.savefig(out / "figure5.svg", metadata={"Date": None})
    plt.close(fig)
    # the table lists the κ = 0 baseline once (it starts both drawn series)
    shown = pts.assign(series=[BASELINE_LABEL if k == 0 else s for k, s in zip(pts["kappa"], pts["series"])])
    shown = shown.drop_duplicates(subset=["arch", "cell"]).reset_index(drop=True)
    disp = shown.assign(kappa=shown["kappa"].map(lambda v: f"{v:g}"), top1=[
        pm(t / 100, c / 100, n) for t, c, n in zip(shown["top1"], shown["ci95"], shown["n"])]).drop(columns=["ci95"])
    return Table("figure5", "Figure 5: top-1 against κ, relative embeddings vs none",
                 caption + " Error bars: 95% CI (series offset slightly in κ so that bars do not hide each other); "
                 "dotted: chance. Paper points: not known to us (blank). Whether the gap grows with κ: see the "
                 "contrasts table.", disp, pts,
                 series=series)  # label -> (x, y) as drawn, for tests


# ------------------------------------------------------------------------------------------ renderers
def _caption(t: Table, context: Optional[str]) -> str:
    """The caption, less the study's setting where a report states that once at its top."""
    if context and context in t.caption:
        return " ".join(t.caption.replace(context, "").split())
    return t.caption


def to_markdown(t: Table, context: Optional[str] = None) -> str:
    df = t.display
    lines = [f"### {t.title}", "", _caption(t, context), ""]
    if df.empty:
        return "\n".join(lines + ["(no rows)", ""])
    cols = list(df.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("κ", r"$\kappa$"), ("υ", r"$\upsilon$"), ("Δ", r"$\Delta$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    df = t.display
    cols = list(df.columns)
    out = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
           " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    for _, r in df.iterrows():
        out.append(" & ".join(_tex(r[c]) for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(t.title + ". " + t.caption) + "}",
            r"\end{table}", ""]
    return "\n".join(out)


def to_html(t: Table, context: Optional[str] = None) -> str:
    return (f"<h3>{html.escape(t.title)}</h3>\n<p>{html.escape(_caption(t, context))}</p>\n"
            + t.display.to_html(index=False, escape=True, border=0, classes="tbl") + "\n")
