"""`aa-study`: run, resume and inspect ablation studies of attention-augmented networks.

  aa-study run STUDY.yaml [--profile P]      launch a study (skips cell x seed already FINISHED)
  aa-study resume STUDY.yaml [--profile P]   continue a launched study (unfinished trials from their checkpoints)
  aa-study status STUDY.yaml                 cells finished / running / failed / pending
  aa-study serve                             keep Ray and warm trial processes up: later launches start at once
  aa-study ui [STUDY.yaml]                   the MLflow UI on the study's store (127.0.0.1 unless --host)
  aa-study report STUDY.yaml                 the paper's tables and figures, and every axis, from MLflow
  aa-study make-data synthetic-coco --out D  a COCO-format detection proxy dataset
  aa-study train ...                         one trial, the same code path a study trial uses

Defaults: a local Ray started for the launch, an MLflow sqlite store at ./aa-study-runs/mlflow.db (or
$AA_STUDY_HOME), Ray storage in ./aa-study-runs/ray. Mistakes in a study are reported in one line naming
the field, with exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from pipelines.settings import POS_ENCODINGS, RECIPES


def _train_parser(sub):
    p = sub.add_parser("train", help="run one trial and print its final metrics",
                       description="Train one AA network on one dataset, from flags and/or a small YAML. "
                                   "Flags override the YAML.")
    p.add_argument("--config", help="YAML mapping of training settings (keys as the flags, data: {...})")
    p.add_argument("--arch")
    p.add_argument("--kappa", type=float)
    p.add_argument("--upsilon", type=float)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--pos-enc", choices=POS_ENCODINGS)
    p.add_argument("--stages", type=int, nargs="+")
    p.add_argument("--dataset")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="a data module option, e.g. --data task=same_corners --data image_size=32")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--recipe", choices=sorted(RECIPES))
    p.add_argument("--lr", type=float, help="base learning rate for a batch of 256")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE",
                   help="torch.compile the network; MODE: a torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic algorithms (default: on for classification, off for detection)")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    return p


def _train_config(a) -> dict:
    cfg = {}
    if a.config:
        from pipelines.spec import read_yaml  # the study files' limits (size, control characters, aliases, depth)
        cfg = read_yaml(a.config, "expected a mapping of training settings")
    flags = {k: getattr(a, k) for k in ("arch", "kappa", "upsilon", "num_heads", "pos_enc", "stages", "dataset",
                                        "epochs", "batch_size", "recipe", "seed", "device", "compile",
                                        "deterministic")}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if a.lr is not None:
        cfg.setdefault("optim", {})["base_lr"] = a.lr
    for item in a.data:
        if "=" not in item:
            raise ValueError(f"--data expects KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        cfg.setdefault("data", {})[key] = yaml.safe_load(value)
    return cfg


def _study_args(p, launch=True):
    p.add_argument("study", help="a study YAML (studies/*.yaml)")
    p.add_argument("--profile", help="a profile of the study (paper, gpu, cpu, ...); default: the study's "
                                     "default_profile, else cpu")
    p.add_argument("--tracking-uri", help="MLflow tracking URI: sqlite:///PATH/mlflow.db or http://HOST:PORT "
                                          "(default $MLFLOW_TRACKING_URI, else ./aa-study-runs/mlflow.db)")
    if launch:
        p.add_argument("--address", help="join this Ray cluster (default $RAY_ADDRESS, else a local Ray)")
        p.add_argument("--storage", help="Ray Tune storage (a local path, shared on clusters, or a URI); "
                                         "default ./aa-study-runs/ray")
        p.add_argument("--quiet", action="store_true",
                       help="one line per finished trial instead of the live table of cells")
        p.add_argument("--verbose", action="store_true",
                       help="Ray's, Tune's and Lightning's own output here (default: in a log file it names)")
        p.add_argument("--dry-run", action="store_true",
                       help="list the trials a launch would run, what each holds, how many run at once on the "
                            "cluster in view and the GPU-hours they take (from a few measured steps, or --rate); "
                            "start and write nothing")
        p.add_argument("--rate", type=float, help="with --dry-run: training images/s of one worker, instead of "
                                                  "measuring a few steps here")
        p.add_argument("--mps", action="store_true",
                       help="trials sharing a GPU run their kernels side by side (an NVIDIA MPS daemon of the "
                            "launch's own, stopped at its end) instead of taking turns; local Ray only")


def _fail(cmd, e) -> int:
    print(f"aa-study {cmd}: error: {e}", file=sys.stderr)
    return 2


def _launch(a, resume: bool) -> int:
    from pipelines.spec import SpecError
    from pipelines.launch.driver import LaunchError, launch, prepare
    from pipelines.tracking import TrackingError

    cmd = "resume" if resume else "run"
    try:
        # the checks that build networks and open datasets run once a launch knows something is left to run
        prepared = prepare(a.study, a.profile, a.tracking_uri, deep=a.dry_run)
    except (SpecError, TrackingError) as e:
        return _fail(cmd, e)
    if a.dry_run:
        from pipelines.launch.driver import plan
        if a.rate is not None and not a.rate > 0:
            return _fail(cmd, f"--rate must be a number of images/s > 0; got {a.rate}")
        print("\n".join(plan(a.study, a.profile, a.tracking_uri, a.address, a.rate, prepared=prepared)))
        return 0
    if a.rate is not None:
        return _fail(cmd, "--rate goes with --dry-run")
    from pipelines.launch.driver import serving
    from pipelines.launch.server import delegate

    if not (serving() or a.address or os.environ.get("RAY_ADDRESS")):  # a study server's launch, if one runs
        from pipelines.tracking import default_home

        rc = delegate(a.argv, default_home(), a.mps)
        if rc is not None:
            return rc
    try:
        res = launch(a.study, a.profile, a.tracking_uri, a.storage, a.address, resume=resume,
                     command=" ".join(["aa-study"] + a.argv), verbose=1, prepared=prepared,
                     console="verbose" if a.verbose else "lines" if a.quiet else "live", mps=a.mps)
    except (LaunchError, SpecError) as e:
        return _fail(cmd, e)
    print(f"done: {res.finished} finished, {res.failed} failed, {res.killed} killed, "
          f"{res.skipped} already finished before this launch")
    for name, err in res.errors.items():
        print(f"  FAILED {name}: {err}")
    if res.experiment_id is not None:
        _cell_summary(*prepared, res.experiment_id, a)
    return 1 if res.failed or res.killed else 0


def _cell_summary(study, uri, exp_id, a) -> None:
    """After a launch: each cell's finished seeds as mean ± 95 % CI (Student t), the report command and the UI."""
    from reports.stats import describe

    from pipelines.spec import cell_label
    from pipelines.tracking import open_reader, redact, ui_url

    metric = study.metric
    reader = open_reader(uri)  # an embedded store: sqlite3, no MLflow import
    latest = reader.latest_metrics(exp_id, (metric,))
    values: dict = {c: [] for c in study.cells}
    for r in reader.run_rows(exp_id, "trial"):
        cell = r.tags.get("cell")
        if r.status == "FINISHED" and cell in values and metric in latest.get(r.run_id, {}):
            values[cell].append(latest[r.run_id][metric])
    print(f"\n{'cell':44} {'n':>3}  {metric} % (mean ± 95% CI, Student t)")
    for cell, vals in values.items():
        d = describe(vals)
        m, ci = d["mean"], d["ci95"]
        value = "—" if m != m else f"{m * 100:.2f}" + (f" ± {ci * 100:.2f}" if ci == ci else " (one seed)")
        print(f"{cell_label(study.cells[cell]):44} {d['n']:>3}  {value}")
    prof = f" --profile {study.profile}" if study.profile else ""
    store = "" if a.tracking_uri is None else f" --tracking-uri {redact(uri)}"
    print(f"report: aa-study report {a.study}{prof}{store}")
    print(f"MLflow: {ui_url(uri, exp_id)}" if uri.startswith("http") else f"MLflow UI: aa-study ui {a.study}{prof}{store}")


def _status(a) -> int:
    from pipelines.spec import SpecError
    from pipelines.launch.driver import status
    from pipelines.tracking import TrackingError

    try:
        st = status(a.study, a.profile, a.tracking_uri)
    except (SpecError, TrackingError) as e:
        return _fail("status", e)
    study = st["study"]
    print(f"study {study.name} (profile {study.profile or '-'}), experiment {study.experiment!r}"
          f"{'' if st['experiment_id'] else ' (not launched yet)'}, store {st['uri']}")
    cols = ("finished", "running", "failed", "killed", "pending")
    print(f"{'cell':12}  {'arch':12} {'kappa':>5} {'upsilon':>7} {'heads':>5} {'pos_enc':9} " +
          " ".join(f"{c:>8}" for c in cols))
    totals = dict.fromkeys(cols, 0)
    for cell, ax in study.cells.items():
        row = st["rows"][cell]
        for c in cols:
            totals[c] += row[c]
        print(f"{cell:12}  {ax['arch']:12} {ax['kappa']:5.2f} {ax['upsilon']:7.2f} {ax['num_heads']:5d} "
              f"{ax['pos_enc']:9} " + " ".join(f"{row[c]:8d}" for c in cols))
    print("total" + " " * 53 + " ".join(f"{totals[c]:8d}" for c in cols))
    return 0


def _ui(a) -> int:
    import subprocess

    from pipelines.spec import SpecError, load_study
    from pipelines.tracking import (TrackingError, Tracker, check_tracking_uri, redact, resolve_tracking_uri, sqlite_path,
                                    ui_url)

    try:
        uri = resolve_tracking_uri(a.tracking_uri)
        check_tracking_uri(uri)
        study = load_study(a.study, a.profile) if a.study else None
    except (SpecError, TrackingError) as e:
        return _fail("ui", e)
    path = sqlite_path(uri)
    if path is None:
        return _fail("ui", f"tracking-uri: {redact(uri)} is already a server: open it in a browser")
    if not path.exists():
        return _fail("ui", f"no store at {path} yet: run a study first")
    if not _port_free(a.host, a.port):  # before any link is printed: it would lead to whatever holds the port
        return _fail("ui", f"port {a.port} on {a.host} is already in use (another server?): choose another --port")
    if a.host == "0.0.0.0":
        print("warning: --host 0.0.0.0 serves the store to every network this machine is on", file=sys.stderr)
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(study.experiment) if study else None
    if exp_id:  # a store written before the view existed gets it (an experiment tag; no run is touched)
        tracker.set_view(exp_id, study)
    base = f"http://{'127.0.0.1' if a.host == '0.0.0.0' else a.host}:{a.port}"
    print(f"MLflow UI: {ui_url(base, exp_id) if exp_id else base}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", a.host,
           "--port", str(a.port), "--workers", "1",
           "--default-artifact-root", (path.parent / "artifacts").as_uri()]
    return _serve(cmd)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: only a listener blocks
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _serve(cmd) -> int:
    """Run the MLflow server in its own process group and stop the whole group (its workers and job consumers too)
    when this command ends: Ctrl-C, SIGTERM, a hang-up (its terminal closed: SIGHUP) or the server's own exit."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, lambda *_: sys.exit(0)) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(a) -> int:
    from pathlib import Path

    from reports.build import make_report
    from reports.runs import ReportError

    from pipelines.profiles import experiment_name
    from pipelines.spec import SpecError, load_study
    from pipelines.tracking import (TrackingError, check_tracking_uri, default_home, resolve_tracking_uri, sqlite_path,
                           store_exists)

    try:
        if bool(a.study) == bool(a.experiment):
            raise ReportError("give a study YAML or --experiment NAME (one of them)")
        experiment, layouts, study, name, cells = a.experiment, None, None, a.experiment, None
        if a.study:  # its experiment, layouts and cells as this code version keys them (no data check)
            s = load_study(a.study, a.profile)
            experiment, study, cells = s.experiment, s.name, s.cells
            layouts = s.report.split(",") if s.report else []
            name = experiment_name(s.name, {}, s.profile or None)  # NAME-PROFILE even on a shared experiment
        uri = resolve_tracking_uri(a.tracking_uri)
        check_tracking_uri(uri, readonly=a.no_log)  # --no-log only reads the store
        if not store_exists(uri):
            raise ReportError(f"tracking-uri: no store at {sqlite_path(uri)} (run a study first)")
        out = Path(a.out) if a.out else default_home() / "reports" / name
        res = make_report(uri, experiment, out, layouts, log_to_mlflow=not a.no_log, study=study,
                          cells=cells, ui_base=a.ui_url)
    except (ReportError, TrackingError, SpecError) as e:
        return _fail("report", e)
    print(f"report of {experiment}: {res['runs']} runs, tables {', '.join(res['tables']) or 'none'} -> "
          f"{res['out']}/report.md, index.html" + (f" (logged to run {res['logged_to']})" if res["logged_to"] else ""))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="aa-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _study_args(sub.add_parser("run", help="launch a study", description="Launch a study: every cell x seed "
                               "not yet FINISHED in MLflow runs as a Ray Tune trial."))
    _study_args(sub.add_parser("resume", help="continue a launched study", description="Continue a study: "
                               "runs left unfinished (killed driver, failed trials) continue from their last "
                               "checkpoint; finished ones are never run again."))
    _study_args(sub.add_parser("status", help="cells finished / running / failed / pending"), launch=False)
    p = sub.add_parser("serve", help="a study server: later launches from this folder start at once",
                   description="Keep a local Ray, Tune, MLflow and warm trial processes (torch and Lightning "
                               "imported) up, in the foreground until Ctrl-C: `aa-study run` and `resume` from this "
                               "folder, with the same study folder ($AA_STUDY_HOME), hand their launches to it and "
                               "skip Ray's start and the trials' imports. A launch it cannot run as given (changed "
                               "code, --address, other trial variables) runs on its own, saying why.")
    p.add_argument("--mps", action="store_true", help="an NVIDIA MPS daemon for the server's Ray (every launch it "
                                                      "runs shares GPUs through it); needed for launches with --mps")
    p = sub.add_parser("ui", help="serve the MLflow UI on the study store")
    p.add_argument("study", nargs="?", help="a study YAML: print the link to its runs")
    p.add_argument("--profile")
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p = sub.add_parser("report", help="tables and figures of a study from MLflow",
                       description="Regenerate the study's paper tables (5, 6, 7) and Figure 5 with 95%% CIs, "
                                   "and a table of every cell, from MLflow only (works against a remote server).")
    p.add_argument("study", nargs="?", help="a study YAML (its experiment and report layouts)")
    p.add_argument("--profile")
    p.add_argument("--experiment", help="an MLflow experiment name instead of a study YAML")
    p.add_argument("--out", help="output directory (default ./aa-study-runs/reports/EXPERIMENT)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the study's latest launch run")
    p.add_argument("--ui-url", help="the MLflow UI the report's run links lead to (default: the tracking server, "
                                    "else aa-study ui's http://127.0.0.1:5000)")
    p.add_argument("--tracking-uri")
    p = sub.add_parser("make-data", help="write a generated dataset to disk",
                       description="Write a generated dataset: synthetic-coco = N images with 1-6 glyph objects of K "
                                   "classes, in the COCO 2017 layout (train2017/, val2017/, annotations/).")
    p.add_argument("kind", choices=["synthetic-coco"])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    _train_parser(sub)
    a = parser.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.command == "serve":
        from pipelines.launch.server import serve
        from pipelines.tracking import default_home

        return serve(default_home(), main, a.mps)
    if a.command == "make-data":
        from pipelines.data.coco import make_synthetic_coco
        from pipelines.data import DataError
        try:
            counts = make_synthetic_coco(a.out, images=a.images, size=a.size, classes=a.classes, seed=a.seed)
        except (DataError, OSError) as e:
            return _fail("make-data", e)
        print(f"wrote {counts['train']} train and {counts['val']} val images to {a.out} (COCO 2017 layout)")
        return 0
    if a.command == "report":
        return _report(a)
    if a.command in ("run", "resume"):
        return _launch(a, a.command == "resume")
    if a.command == "status":
        return _status(a)
    if a.command == "ui":
        return _ui(a)
    if a.command == "train":
        from pipelines.data import DataError
        from pipelines.training.fit import build, fit

        try:
            cfg = _train_config(a)
            built = build(cfg)  # every check before training starts
        except (ValueError, DataError, OSError, yaml.YAMLError) as e:
            print(f"aa-study train: error: {e}", file=sys.stderr)
            return 2
        metrics = fit(cfg, enable_progress_bar=a.progress, built=built)
        print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def entry() -> None:
    """The `aa-study` command: main(), then an exit that skips the interpreter's teardown of the torch, Ray and
    MLflow modules (seconds, measured, after a launch; nothing of ours waits on it: the store is committed, Ray is
    stopped, the server of `ui` is stopped, output is flushed first)."""
    import logging
    import os

    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)


if __name__ == "__main__":
    entry()
