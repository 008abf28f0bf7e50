"""MLflow tracking of studies: one experiment per study, one parent run per launch, one child run per
cell × seed. Only the study driver writes (fed by Ray Tune's result stream), so an embedded sqlite store
never sees two writers; on a cluster the same driver writes to a tracking server.

Names the MLflow UI's compare view lines up: params `arch`, `kappa`, `upsilon`, `num_heads`, `pos_enc`,
`seed` (+ the rest of the flattened trial config); tags `study`, `profile`, `cell`, `seed`, `kind`
(`trial` | `launch`), `code_version`, `ray_trial_id`, `node_id`, `nodes`, `error`, `checkpoint`.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional

TERMINAL = ("FINISHED", "FAILED", "KILLED")
VIEW_KEY = "aa-study"  # the experiment's shared view (MLflow's "share view": tag mlflow.sharedViewState.<key>)
# the experiment's runs tab (MLflow 3 opens experiments in its GenAI view otherwise) in the shared view below
UI_SUFFIX = f"/runs?viewStateShareKey={VIEW_KEY}"


class TrackingError(ValueError):
    """The tracking store cannot be used; one line."""


def default_home() -> Path:
    return Path(os.environ.get("AA_STUDY_HOME", "aa-study-runs")).expanduser().resolve()


def default_tracking_uri(home: Optional[Path] = None) -> str:
    return f"sqlite:///{(home or default_home()) / 'mlflow.db'}"


def sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite store under $AA_STUDY_HOME."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def store_exists(uri: str) -> bool:
    """A server always has a store; a sqlite store exists once its file does (opening it creates it)."""
    path = sqlite_path(uri)
    return path is None or path.exists()


def search_runs(client, experiment_id: str, kind: str, statuses: Iterable[str] = ()) -> List[Any]:
    """Every run of the experiment with tag kind (trial | launch), oldest first, all pages."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.kind = '{kind}'", max_results=1000,
                                  page_token=token, order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
        out.extend(r for r in page if not statuses or r.info.status in statuses)
        token = page.token
        if not token:
            return out


class RunRow(NamedTuple):
    run_id: str
    status: str
    start_time: int
    tags: Dict[str, str]


class SqliteReader:
    """A read-only view of an embedded sqlite store through sqlite3, for what the planner, `status` and a launch's
    summary read (an experiment's id, its runs' status, start time, tags and latest metrics) without importing
    MLflow (about 3 s on a two-core machine). It reads MLflow's own tables (experiments, runs, tags,
    latest_metrics), as MLflow's client does with its defaults (active runs only, oldest first); tests compare both
    on one store. `open_reader` falls back to MLflow's client for a server or a schema it cannot read."""

    def __init__(self, path: Path):
        import sqlite3

        self.path = path
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.db.execute("SELECT experiment_id, name FROM experiments LIMIT 0")
        self.db.execute("SELECT run_uuid, status, start_time, lifecycle_stage, experiment_id FROM runs LIMIT 0")
        self.db.execute("SELECT key, value, run_uuid FROM tags LIMIT 0")
        self.db.execute("SELECT key, value, run_uuid FROM latest_metrics LIMIT 0")

    def experiment_id(self, name: str) -> Optional[str]:
        row = self.db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def run_rows(self, experiment_id: str, kind: str = "trial") -> List[RunRow]:
        runs = self.db.execute(
            "SELECT r.run_uuid, r.status, r.start_time FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND k.key = 'kind' AND k.value = ? "
            "ORDER BY r.start_time ASC, r.run_uuid ASC", (int(experiment_id), kind)).fetchall()
        tags: Dict[str, Dict[str, str]] = {r[0]: {} for r in runs}
        for key, value, rid in self.db.execute(
                "SELECT t.key, t.value, t.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                "WHERE r.experiment_id = ?", (int(experiment_id),)):
            if rid in tags:
                tags[rid][key] = value
        return [RunRow(rid, status, start or 0, tags[rid]) for rid, status, start in runs]

    def latest_metrics(self, experiment_id: str, keys: Iterable[str]) -> Dict[str, Dict[str, float]]:
        keys = list(keys)
        out: Dict[str, Dict[str, float]] = {}
        rows = self.db.execute(
            "SELECT m.run_uuid, m.key, m.value FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            f"WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND m.key IN ({','.join('?' * len(keys))})",
            (int(experiment_id), *keys))
        for rid, key, value in rows:
            out.setdefault(rid, {})[key] = value
        return out


def open_reader(uri: str):
    """What reads the store: a `SqliteReader` for an embedded sqlite store, MLflow's client (a `Tracker`) for a
    server or a store the reader cannot read; None when no store exists yet (nothing is created)."""
    if not store_exists(uri):
        return None
    path = sqlite_path(uri)
    if path is not None:
        import sqlite3

        try:
            return SqliteReader(path)
        except sqlite3.Error:
            pass
    return Tracker(uri)


def _health_request(uri: str) -> urllib.request.Request:
    """GET /health of a tracking server, with HTTP basic credentials taken from the URI's user:password@ (which
    urllib cannot open as a URL) or else MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/"))
    user, password = parts.username, parts.password
    netloc = parts.netloc.rsplit("@", 1)[-1]
    req = urllib.request.Request(urlunsplit((parts.scheme, netloc, parts.path + "/health", "", "")))
    if user is None:
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{unquote(user)}:{unquote(password or '')}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    return req


def _tls_context():
    """The TLS settings MLflow's own client follows for an https tracking server, so that the health check trusts
    what the client trusts: MLFLOW_TRACKING_SERVER_CERT_PATH (a CA bundle, e.g. the cluster's own certificate) or
    MLFLOW_TRACKING_INSECURE_TLS=true (no verification); else the system's CAs."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


class StudyLocked(TrackingError):
    """Another launch of the study holds its lock."""


@contextlib.contextmanager
def study_lock(uri: str, experiment: str, discard_on: tuple = ()):
    """Held by a launch from before it plans until it ends, so that two launches of one study started together
    cannot both plan the same trials. For an embedded sqlite store: an exclusive flock on a file beside the store
    (STORE_DIR/.locks/, one per experiment), which the kernel releases when the holder dies, however it dies, so no
    lock outlives its launch. A server store takes no lock here (launches then rely on the planner's check of live
    launch runs). Raises StudyLocked (one line, naming the holder) where it is held. An exception of a type in
    ``discard_on`` (a refused launch: nothing may stay written) removes the lock file it created and the folders
    made for it."""
    path = sqlite_path(uri)
    if path is None:
        with _server_lock(uri, experiment):
            yield
        return
    import fcntl
    import socket

    folder = path.parent / ".locks"
    made = [d for d in (*reversed(folder.parents), folder) if not d.exists()]  # the folders this creates
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / (hashlib.sha1(experiment.encode()).hexdigest()[:16] + ".lock")
    new_file = not lock.exists()
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise StudyLocked(f"another launch of this study is running ({holder}); wait for it, or stop it "
                              "(Ctrl-C) and resume") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield  # closing the file releases the lock
        except discard_on:
            if new_file:
                lock.unlink(missing_ok=True)
                for d in reversed(made):
                    with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                        d.rmdir()
            raise


LOCK_SUFFIX = ".aa-study-lock"
HEARTBEAT_S = 20  # a live driver refreshes its launch run's (and its server lock's) heartbeat tag this often
STALE_S = 120  # a launch on another host with an older heartbeat is taken as dead


def holder_alive(host: str, pid: str, heartbeat: str, now: Optional[float] = None, this_host: Optional[str] = None,
                 pid_exists=None) -> bool:
    """Whether a launch (or a lock's holder) still runs: on this host its pid decides, elsewhere a heartbeat younger
    than STALE_S."""
    import socket

    this_host = socket.gethostname() if this_host is None else this_host
    if host == this_host and pid.isdigit():
        return (pid_exists or _pid_exists)(int(pid))
    now = time.time() if now is None else now
    return heartbeat.isdigit() and now - int(heartbeat) < STALE_S


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _server_lock(uri: str, experiment: str):
    """A tracking server's study lock: an experiment named EXPERIMENT.aa-study-lock, created by the holder. The
    store refuses a second experiment of a name (a unique key in its database), so creating it is atomic across
    every machine that shares the server. Its tags name the holder (host, pid) and carry a heartbeat refreshed
    every HEARTBEAT_S; a lock whose holder is dead (its pid gone on this host, else a heartbeat older than STALE_S)
    is taken over. Released by renaming it away and deleting it (MLflow keeps deleted experiments until
    `mlflow gc`; the name is free again at once)."""
    import socket
    import threading

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = experiment + LOCK_SUFFIX
    me = {"host": socket.gethostname(), "pid": str(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          "heartbeat": str(int(time.time()))}
    lock_id = None
    for _ in range(3):
        try:
            lock_id = client.create_experiment(name, tags=me)
            break
        except MlflowException as e:
            if "already exists" not in str(e) and getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise TrackingError(f"tracking-uri: {redact(uri)}: cannot take the study's lock "
                                    f"({redact(str(e).splitlines()[0])})") from None
        held = client.get_experiment_by_name(name)
        if held is None:  # released meanwhile
            continue
        t = held.tags
        alive = held.lifecycle_stage == "active" and holder_alive(t.get("host", ""), t.get("pid", ""),
                                                                   t.get("heartbeat", ""))
        if alive:
            raise StudyLocked(f"another launch of this study is running (host {t.get('host')}, pid {t.get('pid')}, "
                              f"since {t.get('since')}); wait for it, or stop it (Ctrl-C) and resume")
        _release_server_lock(client, held.experiment_id, name)  # a dead holder's: whoever creates it next holds it
    if lock_id is None:
        raise StudyLocked("another launch of this study took its lock at the same moment; run again to resume")
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a server that is briefly away: the launch itself will say so
                client.set_experiment_tag(lock_id, "heartbeat", str(int(time.time())))

    threading.Thread(target=beat, daemon=True, name="aa-study-lock-heartbeat").start()
    try:
        yield
    finally:
        stop.set()
        _release_server_lock(client, lock_id, name)


def _release_server_lock(client, experiment_id: str, name: str) -> None:
    import uuid

    with contextlib.suppress(Exception):  # already renamed or deleted by a launch that took it over
        client.rename_experiment(experiment_id, f"{name}.released-{uuid.uuid4().hex[:12]}")
    with contextlib.suppress(Exception):
        client.delete_experiment(experiment_id)


def check_tracking_uri(uri: str, timeout: float = 5.0, readonly: bool = False) -> None:
    """Reachable and usable, or TrackingError; writes nothing. An existing sqlite store must be an undamaged
    database; unless ``readonly`` (commands that only read it), it and its folder must be writable."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=timeout, context=_tls_context()) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking-uri: {redact(uri)} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking-uri: {redact(uri)} is unreachable ({redact(str(reason))})") from None
        return
    path = sqlite_path(uri)
    if path is None:
        raise TrackingError(f"tracking-uri: {redact(uri)!r} is not supported: use sqlite:///PATH/mlflow.db or "
                            "http(s)://HOST:PORT (MLflow's file store is deprecated)")
    if path.exists():
        _check_sqlite_store(path)
    if readonly:
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise TrackingError(f"tracking-uri: cannot create {path} (directory {parent} is not writable)")
    if path.exists() and not os.access(path, os.W_OK):
        raise TrackingError(f"tracking-uri: {path} is not writable (status, report --no-log and ui only read it)")


def _check_sqlite_store(path: Path) -> None:
    """An existing sqlite store is a readable, undamaged sqlite database, or TrackingError naming it: a truncated or
    overwritten mlflow.db is one line, not SQLAlchemy's traceback. Opens it read-only; writes nothing."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise TrackingError(f"tracking-uri: {path} is not a readable MLflow store ({e}); move it aside or restore "
                            "it from a backup") from None
    if verdict != "ok":
        raise TrackingError(f"tracking-uri: {path} is damaged (sqlite quick_check: {verdict}); move it aside or "
                            "restore it from a backup")


RESULT_PACKAGES = ("aa_modules", "pipelines")  # the code a trial's result depends on


def source_hash(root: Path) -> str:
    """A short hash of the Python source of `RESULT_PACKAGES` under root: names and bytes, in sorted order."""
    h = hashlib.sha256()
    for pkg in RESULT_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:10]


@functools.lru_cache(maxsize=1)
def code_version() -> str:  # once per process, not once per trial run
    """``<git describe>+src.<source hash>``, or the package version for the first part outside a checkout. The
    hash of the model and training code tells two versions apart where git cannot: a copy of the tree with an
    old or no .git (the GPU host's copy of this tree described itself as an earlier commit plus "-dirty", whatever
    the kernels in it), an installed package. A change of that code can change a trial's result for the same cell
    and seed."""
    here = Path(__file__).resolve().parent.parent
    base = None
    try:
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            base = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if base is None:
        from importlib.metadata import PackageNotFoundError, version
        try:
            base = version("aa-study")
        except PackageNotFoundError:
            base = "unknown"
    try:
        return f"{base}+src.{source_hash(here)}"
    except OSError:
        return base


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = str(v)
    return out


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Credentials never reach the store: user:password@ in URIs is replaced by ***@."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


def ui_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}{UI_SUFFIX}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def view_state(study) -> Dict[str, Any]:
    """The first screen the printed link opens: the study's trials as top-level rows (the launch runs filtered
    out, so no trial hides under a collapsed parent), ordered by their short names (κ0.5·h2·relative·s1), with
    the grid's axes, the seed and the validation metric as columns."""
    from .settings import GRID_AXES

    metric = study.metric
    axes = [a for a in GRID_AXES if a != "arch" or len(study.axes.get("arch", [])) > 1]
    # orderByKey as the UI names its run-name column (ATTRIBUTE_COLUMN_SORT_KEY.RUN_NAME); "attributes.run_name"
    # sorted server-side too but showed "Sort: undefined" in the UI. The cell_label tag is there to group by (the
    # UI's "Group by", or its column picker), not a selected column: MLflow 3's runs table did not show a selected
    # tag column, and the same label as a param column came first (params are shown alphabetically) and pushed υ
    # off a 1440-px first screen, a third of which the UI's Assistant panel takes on a browser's first visit.
    return {"searchFilter": "tags.kind = 'trial'", "orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
            "selectedColumns": [f"params.`{a}`" for a in axes] + ["params.`seed`", f"metrics.`{metric}`"]}


def _create_sqlite_store(path: Path) -> None:
    """Create an embedded store so that nobody ever sees it half made: MLflow builds its tables and runs its
    migrations in a private file beside `path`, which is then hard-linked into place (atomic, and refused if
    `path` appeared meanwhile: then the other creator's store is used and ours dropped).

    MLflow creates a store on first open, migrations and all, and any MLflow client that opens a half-made
    file runs the same migrations: two processes migrating one file fail ('table _alembic_tmp_... already
    exists'), e.g. `aa-study status` or a second launch while the first launch creates the store."""
    import uuid

    from mlflow.tracking import MlflowClient

    # unique per call: MLflow caches a store per URI, and a cached one would not create the file again
    tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}")
    try:
        store = MlflowClient(tracking_uri=f"sqlite:///{tmp}")._tracking_client.store
        engine = getattr(store, "engine", None)
        if engine is not None:
            engine.dispose()  # every connection closed: the file holds the whole store
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


_OPENED: Dict[str, tuple] = {}  # sqlite URI -> (device, inode) of the file this process's MLflow opened


def _file_id(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _forget_replaced_store(uri: str, path: Path) -> None:
    """MLflow keeps one store and one SQLAlchemy engine per URI for its process's life, and the engine's pooled
    connections keep the file they opened. In a process that lives across launches (`aa-study serve`), a store
    deleted or replaced since it was opened would be written through them ("attempt to write a readonly
    database", the runs lost with the deleted file): drop them, so that the next client opens the file anew.
    MLflow's caches are private (mlflow 3: the store registry's lru_cache, SqlAlchemyStore._engine_map); where
    they are not found, nothing is dropped."""
    if _OPENED.get(uri) in (None, _file_id(path)):
        return
    _OPENED.pop(uri, None)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service import utils

        type(utils._tracking_store_registry)._get_store_with_resolved_uri.cache_clear()
        with SqlAlchemyStore._engine_map_lock:
            engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    except (ImportError, AttributeError):
        pass


class Tracker:
    """The driver's handle on one study's experiment."""

    def __init__(self, uri: str, artifact_root: Optional[Path] = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        path = sqlite_path(uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _forget_replaced_store(uri, path)
            if not path.exists():
                _create_sqlite_store(path)
            _OPENED[uri] = _file_id(path)
        self.artifact_root = artifact_root or (path.parent / "artifacts" if path is not None else None)
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)

    # ---------------------------------------------------------------------------- experiments, runs
    def experiment_id(self, name: str, create: bool = False, tags: Optional[Dict[str, str]] = None) -> Optional[str]:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        location = (self.artifact_root / name).as_uri() if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location, tags=tags or {})

    def runs(self, experiment_id: str, kind: str = "trial", statuses: Iterable[str] = ()) -> List[Any]:
        return search_runs(self.client, experiment_id, kind, statuses)

    def run_rows(self, experiment_id: str, kind: str = "trial") -> List[RunRow]:
        """`SqliteReader.run_rows` through MLflow's client (the reference, and a server's reader)."""
        return [RunRow(r.info.run_id, r.info.status, r.info.start_time or 0, dict(r.data.tags))
                for r in self.runs(experiment_id, kind)]

    def latest_metrics(self, experiment_id: str, keys: Iterable[str]) -> Dict[str, Dict[str, float]]:
        keys = set(keys)
        out = {r.info.run_id: {k: v for k, v in r.data.metrics.items() if k in keys}
               for r in self.runs(experiment_id, "trial")}
        return {rid: m for rid, m in out.items() if m}

    def set_view(self, experiment_id: str, study) -> None:
        """The experiment's shared view (`view_state`), which the links we print open."""
        import json

        self.client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                                       json.dumps(view_state(study)))

    def start_launch(self, experiment_id: str, study, command: str, spec_text: Optional[str]) -> str:
        import socket

        run = self.client.create_run(experiment_id, run_name=f"{study.name}-{study.profile or 'default'}-launch",
                                     tags={"kind": "launch", "study": study.name, "profile": study.profile,
                                           "code_version": code_version(), "command": redact(command)[:5000],
                                           "host": socket.gethostname(), "pid": str(os.getpid()),
                                           "heartbeat": str(int(time.time()))})
        rid = run.info.run_id
        self.set_view(experiment_id, study)
        from mlflow.entities import Param
        self.client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in {
            "study": study.name, "profile": study.profile, "trials": len(study.trials),
            "cells": len(study.cells), "seeds": ",".join(map(str, study.seeds)),
            "resources.cpu": study.resources["cpu"], "resources.gpu": study.resources["gpu"],
            "resources.workers": study.resources.get("workers", 1),
            "max_failures": study.max_failures, "scheduler": study.scheduler["type"],
            "report": study.report or ""}.items()])
        if spec_text is not None:
            self.client.log_text(rid, spec_text, "study.yaml")
        # the expected cells, so that a report (MLflow only) shows cells that have no run yet
        self.client.log_dict(rid, {k: {a: v for a, v in axes.items()} for k, axes in study.cells.items()},
                             "cells.json")
        return rid

    def start_trial(self, experiment_id: str, parent_id: str, study, trial) -> str:
        from mlflow.entities import Param

        from .spec import KEY_VERSION, cell_label, run_label
        tags = {"kind": "trial", "study": study.name, "profile": study.profile, "cell": trial.cell,
                "cell_label": cell_label(study.cells[trial.cell]),  # a readable column to group runs by
                "seed": str(trial.seed), "code_version": code_version(), "mlflow.parentRunId": parent_id,
                "workers": str(study.resources.get("workers", 1)), "key_version": str(KEY_VERSION)}
        run = self.client.create_run(experiment_id, run_name=run_label(study, trial), tags=tags)
        params = {"cell": trial.cell, **flatten(trial.config)}
        self.client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        return run.info.run_id

    def reopen(self, run_id: str, parent_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "resumed_by", parent_id)

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)
