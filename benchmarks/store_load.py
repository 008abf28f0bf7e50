"""The bookkeeping of a large study against the cluster recipe's tracking server, with the trainer replaced by a
stub: what the driver and the store add per trial, the store's write rate, and whether any record is lost.

    python3 benchmarks/store_load.py [--trials 2000] [--epochs 10] [--concurrent 64] [--epoch-s 0]
                                     [--workers 4] [--tracking-uri URI] [--out FILE.md]

Without --tracking-uri it starts, on this machine, a PostgreSQL and `deploy/tracking-server.sh` (MLflow's basic-auth
app over HTTPS, as README "Clusters" runs it; benchmarks/secure_server.py) with --workers uvicorn processes. Steps,
each timed, in the driver's own code:
  1. plan: the study (cells × seeds = --trials) loaded and the store read, as a launch does before Ray starts
     (`driver.read_plan`), on an empty store and again at the end on the full one;
  2. record: the store opened and the launch run started (`driver._open_store`), then the driver's Tune callback
     (`recorder.MlflowRecorder`) fed as Tune feeds it by stub trials, --concurrent at a time: each starts, reports
     --epochs results (every metric a trial reports) each with a checkpoint, and completes; events interleave over
     the running trials as Tune's do. With --epoch-s 0 they come as fast as the callback takes them (the driver's
     capacity); with --epoch-s S each running trial reports every S seconds and the lag of each event is printed;
  3. status and report (`aa-study status`, `aa-study report --no-log`) on the full store, as a user runs them;
  4. audit: one FINISHED run per cell × seed and every epoch of every metric present.
The callback runs on the driver's one thread (Tune calls it from its event loop), so its time per event is what
every trial's bookkeeping costs the launch; the store's requests are counted at MLflow's client.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.secure_server import own_address, postgres, tracking_server  # noqa: E402

USER, PASSWORD = "bench-owner", "bench-password-0123"


def study_yaml(trials: int, epochs: int) -> str:
    """A grid of cells × seeds with about `trials` trials (exactly, where it divides: 200 cells × 10 seeds)."""
    kappas = [round(0.05 * i, 2) for i in range(1, 11)]
    heads = [1, 2, 4, 8, 16]
    encs = ["none", "relative", "sine2d", "coordconv"]
    cells = len(kappas) * len(heads) * len(encs)
    seeds = max(1, round(trials / cells))
    if trials < cells:
        kappas = kappas[: max(1, trials // (len(heads) * len(encs)))]
        seeds = 1
    return f"""
name: load
description: bookkeeping load ({len(kappas) * len(heads) * len(encs) * seeds} trials, stub trainer)
grid:
  arch: [aa_resnet18]
  kappa: {kappas}
  num_heads: {heads}
  pos_enc: {encs}
seeds: {seeds}
train:
  dataset: synthetic
  data: {{task: relative_position, image_size: 16, train_samples: 128, val_samples: 64}}
  epochs: {epochs}
  batch_size: 64
  stages: [4]
  small_input: true
  device: cpu
resources: {{cpu: 1, gpu: 0}}
profiles:
  cpu: {{}}
"""


class Counting:
    """MLflow's client with every call counted and timed (one call is one request to the server)."""

    def __init__(self, client):
        self._client, self.calls, self.seconds = client, collections.Counter(), collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*a, **k):
            t = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self.calls[name] += 1
                self.seconds[name] += time.perf_counter() - t
        return call


class StubTrial:
    """What the recorder reads of a Tune trial."""

    def __init__(self, tid: str, t, epochs: int):
        self.trial_id, self.num_failures = tid, 0
        self.config = {"trial": {"cell": t.cell, "seed": t.seed, "name": t.name, "config": {**t.config,
                                                                                           "epochs": epochs}}}
        self.last_result = None


def result_of(epoch: int, tid: str) -> dict:
    from pipelines.settings import METRICS

    r = {k: 0.5 + 0.01 * epoch for k in METRICS}
    r.update(epoch=epoch, training_iteration=epoch, node_id="node-" + tid[-1])
    return r


def record(tracker, exp, parent, study, epochs: int, concurrent: int, epoch_s: float):
    """Feed the recorder as Tune would: returns (seconds, per-event seconds by kind, lags)."""
    from pipelines.launch.outcome import LaunchResult
    from pipelines.launch.recorder import MlflowRecorder

    result = LaunchResult(exp, parent, 0)
    rec = MlflowRecorder(None, study, {}, result)
    rec.tracker, rec.exp, rec.parent = tracker, exp, parent
    queue = [StubTrial(f"t{i:05d}", t, epochs) for i, t in enumerate(study.trials)]
    running, costs, lags = [], collections.defaultdict(list), []
    t0 = time.perf_counter()
    next_due = {}

    def timed(kind, fn, *a):
        s = time.perf_counter()
        fn(*a)
        costs[kind].append(time.perf_counter() - s)

    while queue or running:
        while queue and len(running) < concurrent:
            tr = queue.pop(0)
            timed("start", rec.on_trial_start, 0, [], tr)
            running.append([tr, 0])
            next_due[tr.trial_id] = time.perf_counter() + epoch_s
        rec.on_step_begin(0, [])
        for item in list(running):  # Tune's loop: one result of each running trial in turn
            tr, done = item
            if epoch_s:
                wait = next_due[tr.trial_id] - time.perf_counter()
                if wait > 0:
                    continue
                lags.append(-wait)
                next_due[tr.trial_id] += epoch_s
            done += 1
            item[1] = done
            res = result_of(done, tr.trial_id)
            tr.last_result = res
            timed("result", rec.on_trial_result, 0, [], tr, res)
            timed("checkpoint", rec.on_checkpoint, 0, [], tr,
                  type("C", (), {"path": f"/shared/ckpt/{tr.trial_id}/epoch{done}", "filesystem": None})())
            if done == epochs:
                timed("complete", rec.on_trial_complete, 0, [], tr)
                running.remove(item)
        if epoch_s:
            time.sleep(0.001)
    rec.finish("FINISHED")
    return time.perf_counter() - t0, costs, lags, result


def audit(tracker, exp, study, epochs: int) -> dict:
    from pipelines.tracking import search_runs

    runs = search_runs(tracker.client, exp, "trial")
    keys = collections.Counter((r.data.tags.get("cell"), r.data.tags.get("seed")) for r in runs)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    last_epoch_ok = sum(r.data.metrics.get("epoch") == epochs and "val_top1" in r.data.metrics for r in runs)
    sample = runs[:: max(1, len(runs) // 50)]  # every metric's history, on a sample of 50 runs
    histories_ok = sum(sorted(m.step for m in tracker.client.get_metric_history(r.info.run_id, "val_top1"))
                       == list(range(1, epochs + 1)) for r in sample)
    return {"runs": len(runs), "expected": len(study.trials), "finished": finished,
            "duplicated": sum(c - 1 for c in keys.values() if c > 1),
            "missing": len({(t.cell, str(t.seed)) for t in study.trials} - set(keys)),
            "last_epoch_ok": last_epoch_ok, "histories_ok": f"{histories_ok}/{len(sample)}"}


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed_cli(argv, env, cwd) -> tuple:
    step("aa-study " + argv[0])
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "aa_study.cli", *argv], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=3600)
    return time.perf_counter() - t, p.returncode, (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]


def run(args, uri: str, env: dict, work: Path) -> list:
    from pipelines.launch.driver import _open_store, read_plan
    from pipelines.spec import load_study

    spec = work / "load.yaml"
    spec.write_text(study_yaml(args.trials, args.epochs))
    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_")})
    study = load_study(str(spec), "cpu")
    lines = [f"# store load: {len(study.trials)} trials × {args.epochs} epochs, {args.concurrent} at a time, "
             f"epoch every {args.epoch_s or 0:g} s; store {uri.split('@')[-1]}",
             f"{time.strftime('%Y-%m-%d')} | {os.cpu_count()} CPUs | server workers {args.workers} | auth cache "
             f"{args.auth_cache_s} s" if not args.tracking_uri else "", ""]
    step("plan")
    t = time.perf_counter()
    _, exp_id, the_plan = read_plan(study, uri)
    plan_empty = time.perf_counter() - t
    t = time.perf_counter()
    tracker, exp, parent = _open_store(uri, exp_id, study, the_plan, "aa-study run load.yaml (store_load)", {})
    open_s = time.perf_counter() - t
    tracker.client = Counting(tracker.client)
    step("record")
    total, costs, lags, result = record(tracker, exp, parent, study, args.epochs, args.concurrent, args.epoch_s)
    calls = tracker.client.calls
    requests = sum(calls.values())
    step("plan again")
    t = time.perf_counter()
    _, _, full_plan = read_plan(study, uri)
    plan_full = time.perf_counter() - t
    status_s, status_rc, status_tail = timed_cli(["status", str(spec), "--profile", "cpu", "--tracking-uri", uri],
                                                 env, work)
    report_s, report_rc, report_tail = timed_cli(["report", str(spec), "--profile", "cpu", "--no-log", "--out",
                                                  str(work / "report"), "--tracking-uri", uri], env, work)
    tracker.client = tracker.client._client
    step("audit")
    a = audit(tracker, exp, study, args.epochs)
    n = len(study.trials)
    busy = sum(sum(v) for v in costs.values())
    lines += ["| step | seconds | per trial (ms) |", "|---|---|---|",
              f"| plan, empty store | {plan_empty:.2f} | {1000 * plan_empty / n:.2f} |",
              f"| store opened, launch run started | {open_s:.2f} | |",
              f"| record: the callback's time, all events | {busy:.1f} | {1000 * busy / n:.1f} |",
              f"| record: wall time | {total:.1f} | {1000 * total / n:.1f} |",
              f"| plan, full store (a relaunch) | {plan_full:.2f} | {1000 * plan_full / n:.2f} |",
              f"| `aa-study status` (exit {status_rc}) | {status_s:.1f} | |",
              f"| `aa-study report --no-log` (exit {report_rc}) | {report_s:.1f} | |", "",
              "| event | count | median ms | p99 ms |", "|---|---|---|---|"]
    for kind, v in costs.items():
        v = sorted(v)
        lines.append(f"| {kind} | {len(v)} | {1000 * statistics.median(v):.1f} | {1000 * v[int(0.99 * (len(v) - 1))]:.1f} |")
    lines += ["", f"store requests: {requests} ({requests / n:.1f} per trial), {requests / busy:.0f} per second "
                  f"while recording; by call: " + ", ".join(f"{k} {c}" for k, c in calls.most_common()),
              f"planned after recording: {len(full_plan.pending)} trials left to run (expect 0)"]
    if lags:
        lags.sort()
        lines.append(f"event lag behind its due time: median {1000 * statistics.median(lags):.0f} ms, "
                     f"p99 {1000 * lags[int(0.99 * (len(lags) - 1))]:.0f} ms, max {1000 * lags[-1]:.0f} ms")
    lines.append("audit: " + json.dumps(a))
    lost = a["runs"] != a["expected"] or a["finished"] != n or a["duplicated"] or a["missing"] or \
        a["last_epoch_ok"] != n or a["histories_ok"].split("/")[0] != a["histories_ok"].split("/")[1]
    lines.append("records lost or duplicated: " + ("YES" if lost else "none"))
    lines.append(f"status: {status_tail[0][:150]}")
    lines.append(f"report: {report_tail[0][:150]}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--epoch-s", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=4, help="the local server's uvicorn processes")
    ap.add_argument("--auth-cache-s", type=int, default=60, help="the local server's AA_TRACKING_AUTH_CACHE_S")
    ap.add_argument("--tracking-uri", help="a running tracking server (credentials from MLFLOW_TRACKING_*)")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers it started are stopped on the way out
    work = Path(tempfile.mkdtemp(prefix="aa-load-"))
    env = {**os.environ, "AA_STUDY_HOME": str(work / "home")}
    with contextlib.ExitStack() as stack:
        if args.tracking_uri:
            uri = args.tracking_uri
        else:
            addr = own_address() or sys.exit("store_load.py: no non-loopback address for the local server")
            pg_port, pg_password = stack.enter_context(postgres())
            home = work / "server"
            home.mkdir()
            uri, cert = stack.enter_context(tracking_server(pg_port, pg_password, home, USER, PASSWORD, addr,
                                                            args.workers,
                                                            AA_TRACKING_AUTH_CACHE_S=str(args.auth_cache_s)))
            env.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD,
                       MLFLOW_TRACKING_SERVER_CERT_PATH=str(cert))
        lines = run(args, uri, env, work)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
