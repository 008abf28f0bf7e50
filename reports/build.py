"""`aa-study report`: a study's tables and figure from MLflow, written as Markdown, LaTeX, CSV, HTML, PNG, SVG."""
from __future__ import annotations

import datetime as _dt
import html
import os
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from pipelines.profiles import REPORT_LAYOUTS as LAYOUTS
from pipelines.tracking import search_runs

from . import runs as R
from . import tables as T
from .contrasts import Family, banner


def mixed_versions(runs) -> str:
    """A line where the finished runs shown come from more than one code version (each trial run's code_version tag:
    `git describe`, else the package version, plus a hash of the model and training source): a change of code can
    change a trial's result for the same cell and seed (the relative-attention kernel's v7 -> v8 moved the quickstart
    gpu cell's top-1 from 58.84 % to 61.21 %, bitwise repeatable under each), so the report says so instead of pooling
    them silently; "" otherwise."""
    done = runs[runs["status"] == "FINISHED"]
    counts = done["code_version"].replace("", "unknown").value_counts()
    if len(counts) < 2:
        return ""
    listed = ", ".join(f"{v} ({n} run{'s' * (n != 1)})" for v, n in sorted(counts.items()))
    return (f"**Mixed code versions.** The finished runs come from {len(counts)} code versions: {listed}. A change of "
            "code can change a trial's result for the same cell and seed; compare within one version, or re-run.\n\n")


def make_report(uri: str, experiment: str, out: Path, layouts: Optional[List[str]] = None,
                log_to_mlflow: bool = True, study: Optional[str] = None,
                cells: Optional[Dict[str, dict]] = None, ui_base: Optional[str] = None) -> dict:
    """The report of an experiment; with `cells` (key -> axes, from the study spec), of those cells only: an
    experiment may hold other studies' cells (figure5 and table6 share table5's runs) or cells of an older code
    version whose keys differ. The report is logged to the study's latest launch (else the experiment's).
    ui_base: the MLflow UI the run links lead to (default: the server of a server store, else `aa-study ui`'s
    http://127.0.0.1:5000)."""
    c = R.client(uri)
    exp_id = R.experiment_id(c, experiment)
    runs = R.load_runs(c, exp_id)
    launches = search_runs(c, exp_id, "launch")  # oldest first
    own = [r for r in launches if study is not None and r.data.tags.get("study") == study]
    other = 0
    if cells is not None:
        cells_expected = dict(cells)
        if len(runs):
            keep = runs["cell"].isin(list(cells_expected))
            other, runs = int((~keep).sum()), runs[keep].reset_index(drop=True)
    else:
        cells_expected = R.load_cells(c, launches)
    if layouts is None:  # from the launches
        layouts = []
        for r in launches:
            rep = r.data.params.get("report")
            for name in filter(None, (rep or "").split(",")):
                if name in LAYOUTS and name not in layouts:
                    layouts.append(name)
    detection = runs["map"].notna().any() if len(runs) else False
    metrics = ("map", "ap50", "ap75") if detection else ("val_top1", "val_top5")
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    statuses = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if not len(runs) or not ((runs["status"] == "FINISHED") & runs[metrics[0]].notna()).any():
        raise R.ReportError(f"experiment {experiment!r} has no finished run with {metrics[0]} yet ("
                            + (statuses or "no runs") + "): nothing to report")
    # from here on there are finished runs, so cells too
    cells = R.summarise(runs, cells_expected, metrics=metrics)
    caption = T.context_caption(runs)
    paper = T.paper_values()
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for name in layouts:
        if name == "table5":
            tables.append(T.table5(cells, caption, paper))
        elif name == "table6":
            tables.append(T.table6(cells, caption, paper))
        elif name == "table7":
            tables.append(T.table6(cells, caption, paper, metrics=[("map", "mAP"), ("ap50", "AP50"), ("ap75", "AP75")],
                                   name="table7"))
        elif name == "figure5":
            tables.append(T.figure5(cells, caption, out, T.chance_level(runs)))
    if not detection:
        tables.append(T.cells_table(cells, caption))
    from .generic import generic_report

    family = Family(cells, runs, metrics[0])
    skip = ("line_kappa_by_pos_enc",) if "figure5" in layouts else ()  # the same data as Figure 5
    gtables, figures, fixed_line = generic_report(runs, caption, out, metric=metrics[0], family=family,
                                                  skip_figures=skip)
    if family.order:
        tables.append(family.as_table(caption))
    tables += gtables
    thin = banner(family)
    if thin:  # every table of the report, the generic ones too
        for t in tables:
            t.caption = "Thin evidence (see the report's banner). " + t.caption
    for t in tables:  # a metric no run has (top-5 of a 2-class task) is not a column
        empty = [c for c in t.display.columns if c.endswith("top-5")
                 and not t.display[c].map(lambda v: v not in ("", "n/a")).any()]
        t.display = t.display.drop(columns=empty)
    for t in tables:
        (out / f"{t.name}.md").write_text(T.to_markdown(t))
        (out / f"{t.name}.tex").write_text(T.to_latex(t))
        t.numbers.to_csv(out / f"{t.name}.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = experiment if study is None or experiment.startswith(study) else f"{study} (experiment {experiment})"
    head = (f"# Report: {title}\n\nGenerated {stamp} from {_safe_uri(uri)} (experiment id {exp_id}) by "
            f"`aa-study report`. Runs: {len(runs)} ({statuses})"
            + (f"; {other} runs of cells outside study {study} (other studies sharing the experiment, or an "
               f"older code version) not shown" if other else "") + ".\n\n")
    head += (f"**{thin}**\n\n" if thin else "") + mixed_versions(runs) + f"Setting: {caption}\n\n"
    generic_md = ("\n## Every axis\n\n" + (fixed_line + "\n\n" if fixed_line else "")) if (gtables or figures) else ""
    figs_md = "".join(f"\n![{f}]({f}.png)\n" for f in figures)
    paper_tables = [t for t in tables if t not in gtables]
    md = head + "\n".join(T.to_markdown(t, caption) + (f"\n![{t.title}](figure5.png)\n" if t.name == "figure5" else "")
                          for t in paper_tables) + generic_md + "\n".join(T.to_markdown(t, caption) for t in gtables) + figs_md
    base = ui_base or (uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000")
    run_md, run_html = _run_links(runs, exp_id, base, metrics[0])
    md += run_md
    (out / "report.md").write_text(md)
    body = (f'<p class="banner"><strong>{html.escape(thin)}</strong></p>' if thin else "") + (
        f"<p>Setting: {html.escape(caption)}</p>")
    body += "\n".join(T.to_html(t, caption) + ('<img src="figure5.svg" alt="Figure 5" width="520">\n' if t.name == "figure5" else "")
                      for t in paper_tables)
    if generic_md:
        body += f"<h2>Every axis</h2><p>{html.escape(fixed_line)}</p>" + "\n".join(T.to_html(t, caption) for t in gtables)
        body += "".join(f'<img src="{f}.svg" alt="{f}" width="520">' for f in figures)
    body += run_html
    links = " · ".join(f'<a href="{t.name}.md">{t.name}.md</a> <a href="{t.name}.tex">.tex</a> '
                       f'<a href="{t.name}.csv">.csv</a>' for t in tables)
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}.tbl{border-collapse:collapse}"
        ".tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
        ".banner{background:#fff3cd;padding:0.5em 1em}</style>"
        f"<h1>Report: {html.escape(title)}</h1><p>{_code(html.escape(head.splitlines()[2]))}</p><p>{links} · "
        "<a href='runs.csv'>runs.csv</a></p>" + body)
    logged = None
    if log_to_mlflow and (own or launches):  # the report beside the runs it was made from
        logged = (own or launches)[-1].info.run_id
        c.log_artifacts(logged, str(out), "report")
    return {"experiment_id": exp_id, "tables": [t.name for t in tables], "runs": len(runs), "out": str(out),
            "cells": cells, "figures": figures, "logged_to": logged,
            "figure5_series": next((t.series for t in tables if t.name == "figure5"), None)}


def _code(text: str) -> str:
    """`x` (Markdown code) as <code>x</code> in HTML."""
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _safe_uri(uri: str) -> str:
    """The store's URI without machine paths: the file name of a sqlite store, or the server URL."""
    if uri.startswith("sqlite:///"):
        return "sqlite store " + os.path.basename(uri)
    return uri.split("@")[-1]


def _run_links(runs, exp_id: str, base: str, metric: str) -> tuple:
    """(markdown, html): every run of the report, by cell and seed, linked to its page in the MLflow UI."""
    from pipelines.spec import cell_label
    from pipelines.tracking import run_url

    if not len(runs):
        return "", ""
    note = (f"Each run's page in the MLflow UI at {base} (`aa-study ui STUDY` serves it there; another host or "
            "port: `aa-study report --ui-url`).")
    rows = []
    for _, r in runs.iterrows():
        axes = {k: r[k] for k in R.AXES}
        try:
            label = cell_label(axes, arch=runs["arch"].nunique() > 1)
        except (TypeError, ValueError, KeyError):
            label = str(r["cell"])
        value = r.get(metric)
        shown = "" if value is None or value != value else (f"{value * 100:.2f}" if metric.startswith("val_") else f"{value:.4f}")
        rows.append((label, r["cell"], int(r["seed"]), r["status"], shown, run_url(base, exp_id, r["run_id"]), r["run_id"]))
    rows.sort(key=lambda t: (t[1], t[2], t[6]))
    md = ("\n## Runs\n\n" + note + "\n\n| Cell | Seed | Status | " + metric + " | MLflow run |\n|---|---|---|---|---|\n"
          + "".join(f"| {l} ({c}) | {s} | {st} | {v} | [{rid[:8]}]({u}) |\n" for l, c, s, st, v, u, rid in rows))
    esc = html.escape
    body = "".join(f"<tr><td>{esc(l)} ({esc(c)})</td><td>{s}</td><td>{esc(st)}</td><td>{v}</td>"
                   f'<td><a href="{esc(u)}">{esc(rid[:8])}</a></td></tr>' for l, c, s, st, v, u, rid in rows)
    return md, (f"<h2>Runs</h2><p>{esc(note)}</p><table class='tbl'><tr><th>Cell</th><th>Seed</th><th>Status</th>"
                f"<th>{esc(metric)}</th><th>MLflow run</th></tr>{body}</table>")

