"""Reports from crafted MLflow runs: exact means, Student-t CIs, missing cells, layouts, formats."""
from conftest import ROOT
import math

import pytest
import yaml
from scipy import stats

from pipelines.spec import load_study
from pipelines.tracking import Tracker
from reports.build import make_report
from reports.runs import t_ci95


def test_t_ci95_matches_scipy():
    vals = [0.91, 0.93, 0.94]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(vals) / 3, scale=stats.sem(vals))
    assert t_ci95(vals) == pytest.approx((hi - lo) / 2)
    assert math.isnan(t_ci95([0.5]))


def _crafted(tiny_study, workdir, values, statuses=None):
    """Runs written with the launch's own Tracker calls; values: {(kappa, pos_enc, seed): top1}."""
    study = load_study(tiny_study, "cpu")
    uri = f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id(study.experiment, create=True)
    parent = tracker.start_launch(exp, study, "test", tiny_study.read_text())
    for t in study.trials:
        key = (t.config["kappa"], t.config["pos_enc"], t.seed)
        status = (statuses or {}).get(key, "FINISHED")
        rid = tracker.start_trial(exp, parent, study, t)
        if key in values:
            tracker.log_metrics(rid, {"val_top1": values[key], "params": 1e6, "gflops": 0.5 + t.config["kappa"],
                                      "num_classes": 2}, step=t.config["epochs"])
        if status != "RUNNING":
            tracker.end(rid, status)
    tracker.end(parent, "FINISHED")
    return uri, study


def test_report_numbers_missing_cells_and_formats(tiny_study, workdir):
    values = {(0.25, "none", 0): 0.60, (0.25, "none", 1): 0.70,
              (0.25, "relative", 0): 0.80, (0.25, "relative", 1): 0.90,
              (0.5, "none", 0): 0.55,  # seed 1 failed
              (0.5, "relative", 0): 0.75}  # seed 1 still running
    statuses = {(0.5, "none", 1): "FAILED", (0.5, "relative", 1): "RUNNING"}
    uri, study = _crafted(tiny_study, workdir, values, statuses)
    res = make_report(uri, "tiny-cpu", workdir / "rep", ["table6", "figure5"])
    cells = res["cells"].set_index(["kappa", "pos_enc"])
    rel = cells.loc[(0.25, "relative")]
    assert rel["n"] == 2 and rel["val_top1_mean"] == pytest.approx(0.85)
    assert rel["val_top1_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * stats.tstd([0.8, 0.9]) / math.sqrt(2))
    assert cells.loc[(0.5, "none")]["failed"] == 1 and cells.loc[(0.5, "none")]["n"] == 1
    assert cells.loc[(0.5, "relative")]["running"] == 1

    md = (workdir / "rep" / "report.md").read_text()
    assert "85.00 ± 63.53" in md  # 0.85 ± t(0.975, 1) * 0.0707 / sqrt(2), in %
    assert "+20.00" in md  # relative vs none at kappa 0.25
    assert "55.00 (n=1)" in md
    assert "PROXY study" in md and "synthetic (relative_position, 16 px)" in md
    assert "Deterministic algorithms: on." in md  # every run recorded the mode it used
    assert "not in this study" in md  # Table 6 rows for 2D sine and CoordConv
    t6 = (workdir / "rep" / "table6.md").read_text()
    assert "77.70" in t6 and "AA-ResNet-50" in t6  # the paper's relative row beside ours
    for name in ("table6.tex", "table6.csv", "figure5.png", "figure5.svg", "index.html", "cells.md", "runs.csv"):
        assert (workdir / "rep" / name).stat().st_size > 100, name
    pts = (workdir / "rep" / "figure5.csv").read_text().splitlines()
    assert len(pts) == 1 + 4  # relative and none at kappa 0.25 and 0.5 (no baseline in this study)


def test_report_contrasts_say_not_resolved_and_how_many_seeds(tiny_study, workdir):
    values = {(0.25, "none", 0): 0.60, (0.25, "none", 1): 0.70, (0.25, "relative", 0): 0.75,
              (0.25, "relative", 1): 0.68,  # relative - none: +15 and -2 points: noise, not resolved
              (0.5, "none", 0): 0.60, (0.5, "none", 1): 0.62, (0.5, "relative", 0): 0.90, (0.5, "relative", 1): 0.93}
    uri, _ = _crafted(tiny_study, workdir, values)
    make_report(uri, "tiny-cpu", workdir / "rep", ["table6", "figure5"], log_to_mlflow=False)
    md = (workdir / "rep" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| relative vs none (κ=0.25) |"))
    assert "| +6.50 |" in row and "not resolved" in row and "per cell" in row and "paired, n=2" in row
    row = next(line for line in md.splitlines() if line.startswith("| relative vs none (κ=0.5) |"))
    assert "| +30.50 |" in row
    assert "THIN EVIDENCE: 4 of 4 cells have fewer than 3 finished seeds" in md
    assert md.count("PROXY study") == 1  # the setting once, at the top, not in every table
    # the banner's mark on every table, the averages over axes too
    assert md.count("Thin evidence (see the report's banner).") == md.count("\n### ")


def test_figure5_table_lists_the_baseline_once(tmp_path):
    import pandas as pd

    from reports.tables import figure5

    cells = pd.DataFrame([
        {"cell": "b", "arch": "aa_resnet18", "kappa": 0.0, "upsilon": 0.0, "pos_enc": "none", "n": 2,
         "val_top1_mean": 0.5, "val_top1_ci95": 0.01},
        {"cell": "r", "arch": "aa_resnet18", "kappa": 0.5, "upsilon": 0.5, "pos_enc": "relative", "n": 2,
         "val_top1_mean": 0.7, "val_top1_ci95": 0.01},
        {"cell": "n", "arch": "aa_resnet18", "kappa": 0.5, "upsilon": 0.5, "pos_enc": "none", "n": 2,
         "val_top1_mean": 0.6, "val_top1_ci95": 0.01}])
    t = figure5(cells, "caption.", tmp_path, chance=0.5)
    assert len(t.numbers) == 4  # drawn: the baseline starts both series
    assert list(t.display["cell"]) == ["b", "r", "n"]  # listed: once
    assert list(t.display["series"]) == ["no attention (κ=0)", "relative", "none"]
    assert "chance (50 %)" in (tmp_path / "figure5.svg").read_text()


def test_report_shows_cells_without_any_run_as_missing(tiny_study, workdir):
    uri, _ = _crafted(tiny_study, workdir, {(0.25, "none", 0): 0.6, (0.25, "none", 1): 0.6},
                      statuses={(k, e, s): "KILLED" for k in (0.25, 0.5) for e in ("none", "relative") for s in (0, 1)
                                if (k, e) != (0.25, "none")})
    res = make_report(uri, "tiny-cpu", workdir / "rep", ["table6"])
    assert len(res["cells"]) == 4
    md = (workdir / "rep" / "cells.md").read_text()
    assert md.count("missing (2 killed)") == 3


def test_report_cli_errors(tiny_study, workdir, capsys):
    from aa_study.cli import main

    assert main(["report", str(tiny_study)]) == 2
    assert "no store at" in capsys.readouterr().err
    _crafted(tiny_study, workdir, {})
    assert main(["report", "--experiment", "nope"]) == 2
    assert "experiment 'nope' is not in the tracking store" in capsys.readouterr().err
    # runs, but none finished with a metric: one line, exit 2, no empty report
    assert main(["report", str(tiny_study), "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no finished run with val_top1 yet (8 FINISHED): nothing to report" in err and "\n" not in err


def test_table7_layout_from_detection_metrics(tiny_study, workdir):
    study = load_study(tiny_study, "cpu")
    tracker = Tracker(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    exp = tracker.experiment_id(study.experiment, create=True)
    parent = tracker.start_launch(exp, study, "test", None)
    for t in study.trials:
        rid = tracker.start_trial(exp, parent, study, t)
        base = 0.30 if t.config["pos_enc"] == "none" else 0.35
        tracker.log_metrics(rid, {"map": base + 0.01 * t.seed, "ap50": base + 0.2, "ap75": base - 0.05}, step=1)
        tracker.end(rid, "FINISHED")
    res = make_report(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}", "tiny-cpu", workdir / "rep", ["table7"])
    t7 = (workdir / "rep" / "table7.md").read_text()
    assert "Table 7" in t7 and "mAP" in t7 and "AP50" in t7 and "AP75" in t7
    assert "35.50 ± 6.35" in t7 and "+5.00" in t7  # relative: mean of 0.35, 0.36; vs none
    assert res["tables"][0] == "table7" and "cells" not in res["tables"]  # generic tables follow (on mAP)


def test_generic_report_marginals_pivots_plots(workdir):
    """A 3-axis grid (kappa float, num_heads int, pos_enc string) with crafted values: exact marginal and
    pivot numbers, one line per encoding with the expected points, the fixed axis shown as fixed."""
    from conftest import write_study
    from reports.generic import axes_of, line_series, marginal, pivot
    from reports.runs import client, experiment_id, load_runs

    path = write_study(workdir, """
        name: grid3
        grid: {arch: [aa_resnet18], kappa: [0.25, 0.5], num_heads: [1, 2], pos_enc: [none, relative]}
        seeds: 2
        train:
          dataset: synthetic
          data: {task: relative_position, image_size: 16, train_samples: 64, val_samples: 64}
          epochs: 1
          stages: [4]
          device: cpu
        profiles: {cpu: {}}
    """)
    study = load_study(path, "cpu")
    uri = f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id(study.experiment, create=True)
    parent = tracker.start_launch(exp, study, "test", None)

    def value(c, seed):  # top-1 = 0.5 + 0.2 kappa + 0.01 heads + 0.05 [relative] + 0.01 seed
        return 0.5 + 0.2 * c["kappa"] + 0.01 * c["num_heads"] + 0.05 * (c["pos_enc"] == "relative") + 0.01 * seed

    for t in study.trials:
        rid = tracker.start_trial(exp, parent, study, t)
        tracker.log_metrics(rid, {"val_top1": value(t.config, t.seed), "gflops": 0.1 + t.config["kappa"],
                                  "params": 1e6}, step=1)
        tracker.end(rid, "FINISHED")
    runs = load_runs(client(uri), experiment_id(client(uri), "grid3-cpu"))
    varying, fixed = axes_of(runs)
    assert set(varying) == {"kappa", "num_heads", "pos_enc"} and fixed["arch"] == "aa_resnet18"
    m = marginal(runs, "pos_enc").set_index("pos_enc")
    # none: mean over kappa {.25,.5}, heads {1,2}, seeds {0,1} = 0.5 + 0.075 + 0.015 + 0.005
    assert m.loc["none", "mean"] == pytest.approx(0.595) and m.loc["relative", "mean"] == pytest.approx(0.645)
    assert m.loc["none", "n"] == 8 and m.loc["none", "n_cells"] == 4  # averages of 4 cell means, 8 runs
    assert m.loc["none", "lo"] == pytest.approx(0.5 + 0.05 + 0.01 + 0.005)  # kappa .25, 1 head
    assert m.loc["none", "hi"] == pytest.approx(0.5 + 0.1 + 0.02 + 0.005)  # kappa .5, 2 heads
    p = pivot(runs, "kappa", "num_heads")
    assert p.loc[0.5, 2] == pytest.approx(0.5 + 0.1 + 0.02 + 0.025 + 0.005)
    series = line_series(runs, "kappa", "pos_enc")
    assert set(series) == {"none", "relative"} and list(series["relative"]["x"]) == [0.25, 0.5]
    assert list(series["relative"]["mean"]) == pytest.approx([0.5 + 0.05 + 0.015 + 0.05 + 0.005,
                                                              0.5 + 0.1 + 0.015 + 0.05 + 0.005])

    res = make_report(uri, "grid3-cpu", workdir / "rep", [])
    md = (workdir / "rep" / "report.md").read_text()
    assert "Fixed: arch = aa_resnet18" in md and "Average over the other axes: num_heads" in md
    assert "Mean top-1 (%): kappa × num_heads" in md and "**best**" not in md
    # relative leads none by exactly 5 points in every matched cell and seed: resolved; so is kappa .5 over .25
    assert "best: lead over none resolved in 4 matched cell pair(s)" in md
    assert "| relative vs none (κ=0.25, N_h=1) | +5.00 |" in md and "relative > none" in md
    assert {"line_kappa_by_pos_enc", "line_num_heads_by_pos_enc", "top1_vs_gflops"} <= set(res["figures"])
    assert (workdir / "rep" / "top1_vs_gflops.svg").exists()
    # logged beside the runs, on the launch run
    arts = [a.path for a in tracker.client.list_artifacts(res["logged_to"], "report")]
    assert "report/report.md" in arts and "report/index.html" in arts


def test_heads_study_rejects_heads_that_do_not_divide(workdir):
    from pathlib import Path

    from pipelines.spec import SpecError, parse_study
    from pipelines.training.checks import check_deep

    raw = yaml.safe_load((ROOT / "studies" / "heads.yaml").read_text())
    raw["grid"]["num_heads"] = [1, 3]
    raw["profiles"]["cpu"] = {}
    with pytest.raises(SpecError, match=r"layer3\.0\.conv1 \(F_out=256\): dk=64 is not divisible by num_heads=3"):
        check_deep(parse_study(raw, "cpu"))


def test_same_runs_same_files_figure_series_and_html_in_chromium(tiny_study, workdir, tmp_path):
    import re

    values = {(k, e, s): 0.5 + k * 0.2 + (0.05 if e == "relative" else 0) + 0.01 * s
              for k in (0.25, 0.5) for e in ("none", "relative") for s in (0, 1)}
    uri, _ = _crafted(tiny_study, workdir, values)
    a = make_report(uri, "tiny-cpu", workdir / "a", ["table6", "figure5"], log_to_mlflow=False)
    make_report(uri, "tiny-cpu", workdir / "b", ["table6", "figure5"], log_to_mlflow=False)
    names = sorted(p.name for p in (workdir / "a").iterdir())
    assert names == sorted(p.name for p in (workdir / "b").iterdir())
    for name in names:
        ta, tb = (workdir / "a" / name).read_bytes(), (workdir / "b" / name).read_bytes()
        if name in ("report.md", "index.html"):  # all but the generation time
            ta, tb = (re.sub(rb"Generated [0-9-]+ [0-9:]+ UTC", b"", x) for x in (ta, tb))
        assert ta == tb, name

    # the figure as drawn: two series, the expected points
    series = a["figure5_series"]
    assert set(series) == {"with relative embeddings", "without position encoding"}
    x, y = series["with relative embeddings"]
    assert x == [0.25, 0.5] and y == pytest.approx([100 * (0.5 + 0.05 + 0.05 + 0.005), 100 * (0.5 + 0.1 + 0.05 + 0.005)])
    svg = (workdir / "a" / "figure5.svg").read_text()
    assert "with relative embeddings" in svg and "without position encoding" in svg and "chance (50 %)" in svg
    # Figure 5 and the generic κ line plot would draw the same data: only Figure 5 is drawn
    assert "line_kappa_by_pos_enc" not in a["figures"] and "top1_vs_gflops" in a["figures"]
    assert "chance (50 %)" in (workdir / "a" / "top1_vs_gflops.svg").read_text()


    from conftest import CHROMIUM, chromium_dom
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (scripts/test.sh installs it)")
    dom = chromium_dom((workdir / "a" / "index.html").as_uri(), tmp_path / "chr")
    assert "Table 6: positional encodings" in dom and "Figure 5" in dom and "60.50 ±" in dom
    assert "THIN EVIDENCE" in dom and "Contrasts: each value" in dom and "**best**" not in dom
    assert "<code>aa-study report</code>" in dom  # Markdown code as code, not backticks
    assert re.search(r'<img src="figure5.svg"', dom) and (workdir / "a" / "figure5.svg").exists()


def test_a_study_sharing_an_experiment_reports_its_own_cells_only(tiny_study, workdir, capsys):
    """figure5 and table6 share table5's runs: a study's report shows the cells its spec defines and says how
    many runs of other cells it left out (another study's, or an older code version's keys)."""
    from aa_study.cli import main

    values = {(k, e, s): 0.5 + k / 10 + (e == "relative") / 10 + s / 100
              for k in (0.25, 0.5) for e in ("none", "relative") for s in (0, 1)}
    uri, study = _crafted(tiny_study, workdir, values)
    sub = yaml.safe_load(tiny_study.read_text())
    sub.update(name="sub", experiment="tiny-cpu", report="table6")
    sub["grid"]["kappa"] = [0.5]
    path = workdir / "sub.yaml"
    path.write_text(yaml.safe_dump(sub))
    out = workdir / "rep-sub"
    assert main(["report", str(path), "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    md = (out / "report.md").read_text()
    assert "Report: sub (experiment tiny-cpu)" in md and "Runs: 4 (4 FINISHED); 4 runs of cells outside" in md
    cells = (out / "cells.md").read_text()
    assert cells.count("| aa_resnet18 | 0.50 |") == 2 and "| 0.25 |" not in cells
    assert "65.50" in (out / "table6.md").read_text()  # relative at kappa 0.5: mean of 0.65 and 0.66
    assert main(["report", "--experiment", "tiny-cpu", "--tracking-uri", uri, "--out", str(workdir / "all"),
                 "--no-log"]) == 0  # the experiment as a whole still shows every cell
    assert (workdir / "all" / "cells.md").read_text().count("| aa_resnet18 |") == 4


def test_report_says_when_its_runs_come_from_several_code_versions(tiny_study, workdir):
    """A change of code can change a trial's result for the same cell and seed (a kernel that rounds differently):
    a report pooling runs of several code versions says which, with how many finished runs each."""
    from mlflow.tracking import MlflowClient

    values = {(k, p, s): 0.6 + 0.1 * s for k in (0.25, 0.5) for p in ("none", "relative") for s in (0, 1)}
    uri, study = _crafted(tiny_study, workdir, values)
    make_report(uri, "tiny-cpu", workdir / "one", ["table6"])
    assert "Mixed code versions" not in (workdir / "one" / "report.md").read_text()

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tiny-cpu").experiment_id
    trials = [r for r in c.search_runs([exp]) if r.data.tags.get("kind") == "trial"]
    version = trials[0].data.tags["code_version"]
    for r in trials[:3]:  # three runs re-done by another version of the code
        c.set_tag(r.info.run_id, "code_version", "v-other")
    make_report(uri, "tiny-cpu", workdir / "two", ["table6"])
    md = (workdir / "two" / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("**Mixed code versions.**"))
    assert "The finished runs come from 2 code versions: " in line
    assert f"{version} (5 runs)" in line and "v-other (3 runs)" in line, line
    runs_csv = (workdir / "two" / "runs.csv").read_text()
    assert runs_csv.count("v-other") == 3


def test_code_version_carries_a_hash_that_changes_with_the_model_or_training_code(tmp_path):
    from pipelines import tracking
    for pkg in tracking.RESULT_PACKAGES:
        (tmp_path / pkg / "sub").mkdir(parents=True)
        (tmp_path / pkg / "sub" / "m.py").write_text("x = 1\n")
    (tmp_path / "aa_study").mkdir()
    (tmp_path / "aa_study" / "cli.py").write_text("y = 1\n")
    first = tracking.source_hash(tmp_path)
    (tmp_path / "aa_study" / "cli.py").write_text("y = 2\n")  # not result code: same hash
    assert tracking.source_hash(tmp_path) == first
    (tmp_path / "aa_modules" / "sub" / "m.py").write_text("x = 2\n")
    assert tracking.source_hash(tmp_path) != first
    (tmp_path / "aa_modules" / "sub" / "m.py").write_text("x = 1\n")
    assert tracking.source_hash(tmp_path) == first
    assert "+src." + tracking.source_hash(tracking.Path(tracking.__file__).resolve().parent.parent) in \
        tracking.code_version()
