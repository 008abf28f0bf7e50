"""`aa-study serve`: a study server that keeps a local Ray, Tune, MLflow and warm trial processes up between launches.

A launch on its own (`aa-study run`) pays, before its first trial trains: its own start (imports, the plan), a local
Ray's start (4.4 s on the GPU host), the deep checks in a second interpreter that imports torch, the store's opening,
and then, once Tune asks for the trial, a new process that imports ray.tune, torch and Lightning (about 14 s there);
and Ray's stop after the last. The server pays them ahead: it is a Ray driver kept up, with Tune, MLflow, torch and
Lightning imported, whose Ray starts one idle worker process per CPU that imports what a trial imports before Ray
may hand it work (`driver.start_local_ray(warm=True)`, pipelines/launch/warm_site). It runs each launch a client
hands it as `driver.launch` with Ray already up (`serving()`: the deep checks in a thread, Ray left running); Tune
then gets those processes for the trials. After a launch that used up half of them, Ray is restarted (`refresh`).
The trial code is the same, and so is its result (tested).

Clients: `aa-study run` / `resume` for the same study folder ($AA_STUDY_HOME, else ./aa-study-runs) hand their launch
to the server listening for that folder (a Linux abstract socket named after it; peers of another user are
refused), with their terminal's file descriptors (SCM_RIGHTS), so the live view, the lines and the final table are
the client's own; Ctrl-C in the client stops the launch as it would stop its own. A launch the server cannot run as
the client would have run it is run by the client itself, with one line saying why: the code changed since the
server started (it would run the old modules), another working folder, other values of the variables that travel
to trials (AA_STUDY_FAULT*, AA_STUDY_TIMING, CUDA_VISIBLE_DEVICES), `--mps` where the server has no MPS daemon
(`aa-study serve --mps`), or a launch already running there. `--address` or $RAY_ADDRESS (another cluster) are never
handed over. Without a server nothing changes.

The server runs in the foreground of its terminal; Ctrl-C or SIGTERM stops it and its Ray (a launch in progress is
stopped as a Ctrl-C would stop it). Nothing of it outlives the command.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import driver
from .outcome import one_line
from .output import UntilGone

SAME_ENV = driver.TRIAL_ENV + ("CUDA_VISIBLE_DEVICES",)  # must match between client and server
PASSED_ENV = ("MLFLOW_TRACKING_URI",)  # the client's, set in the server for its launch
PACKAGES = ("aa_modules", "aa_study", "pipelines", "reports")
REQUEST_DEADLINE_S = 5.0  # a client sends its request at once; one that does not is dropped after this


def address(home: Path) -> str:
    """The server's socket for a study folder: an abstract name (no file to go stale, no path-length limit)."""
    return "\0aa-study-serve-" + hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:20]


def code_fingerprint(root: Optional[Path] = None) -> str:
    """Every module file of the project (path, size, modification time): a served launch runs the server's modules,
    so a change since it started sends the launch back to the client."""
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    h = hashlib.sha1(sys.executable.encode())
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _env(keys) -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(keys)}


def _send(conn: socket.socket, obj: dict) -> None:
    conn.sendall((json.dumps(obj) + "\n").encode())


def _recv_line(f) -> Optional[dict]:
    line = f.readline()
    return json.loads(line) if line else None


# ------------------------------------------------------------------------------------------- client
def delegate(argv: List[str], home: Path, mps: bool = False) -> Optional[int]:
    """In `aa-study run` / `resume`: hand the launch to the server for `home`, if one listens. Returns the launch's
    exit code, or None where the client must launch itself (no server, or the server's one-line reason, printed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fds = [sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, OSError, ValueError):  # no terminal to hand over (a test's captured output)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address(home))
    except OSError:
        sock.close()
        return None
    sys.stdout.flush(), sys.stderr.flush()
    request = {"argv": argv, "cwd": os.getcwd(), "same": _env(SAME_ENV), "passed": _env(PASSED_ENV),
               "code": code_fingerprint(), "mps": mps}
    with sock, sock.makefile("r") as f:
        socket.send_fds(sock, [(json.dumps(request) + "\n").encode()], fds)
        answer = _recv_line(f)
        if not answer or not answer.get("accepted"):
            why = answer.get("why") if answer else "it closed the connection"
            print(f"study server: {why}; this launch starts its own Ray", file=sys.stderr, flush=True)
            return None
        try:
            done = _recv_line(f)
        except KeyboardInterrupt:  # the launch is stopped as a Ctrl-C stops a launch of its own
            with contextlib.suppress(OSError):
                sock.sendall(b"interrupt\n")
            done = _recv_line(f)
    if not done:
        print("aa-study: error: the study server ended during the launch", file=sys.stderr)
        return 1
    return int(done["rc"])


# ------------------------------------------------------------------------------------------- server
class _Request:
    def __init__(self, conn: socket.socket, request: dict, fds: List[int], pid: int = 0):
        self.conn, self.request, self.fds, self.pid = conn, request, fds, pid


def _flush() -> None:
    """Flush the launch's output; a client's terminal that is gone (a closed pipe) is not the server's error."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class Server:
    """command: what runs a client's arguments and returns the exit code (the CLI's main, which hands it over: the
    launch layer does not import the CLI)."""

    def __init__(self, home: Path, mps: bool = False, command: Optional[Callable[[List[str]], int]] = None):
        self.home, self.mps, self.command = Path(home).resolve(), mps, command
        self.cwd = os.getcwd()
        self.same = _env(SAME_ENV)
        self.code = code_fingerprint()
        self.requests: "queue.Queue[_Request]" = queue.Queue()
        self.busy = threading.Lock()
        self.running: Optional[_Request] = None
        self.interrupted = self.client_gone = False
        self.terminal_lock = threading.Lock()

    # the acceptor thread: never reads from a client itself, so no client can stall it
    def accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:  # who it is, from the kernel, before anything is read: another user's client gets one line
                _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            except OSError:
                conn.close()
                continue
            if uid != os.getuid():
                conn.settimeout(REQUEST_DEADLINE_S)
                with contextlib.suppress(OSError):
                    _send(conn, {"accepted": False, "why": "it belongs to another user"})
                conn.close()
                continue
            threading.Thread(target=self._take_safely, args=(conn,), daemon=True, name="aa-study-client").start()

    def _take_safely(self, conn: socket.socket) -> None:
        try:
            self._take(conn)
        except Exception as e:  # noqa: BLE001 - one bad client must not stop the server
            with contextlib.suppress(OSError, ValueError):
                print(f"study server: a request was dropped ({e.__class__.__name__}: {e})", file=sys.stderr,
                      flush=True)
            conn.close()

    def _take(self, conn: socket.socket) -> None:
        """One client's request, read within REQUEST_DEADLINE_S (a client that sends nothing, or too little, is
        dropped when it passes), then refused or queued for the main thread."""
        conn.settimeout(REQUEST_DEADLINE_S)
        fds: List[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
            while not msg.endswith(b"\n") and len(msg) < 1 << 22:
                more = conn.recv(1 << 20)
                if not more:
                    break
                msg += more
            request = json.loads(msg)
            if not isinstance(request, dict) or len(fds) != 2:
                raise ValueError("not a launch request")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        why = self._refusal(request)
        if why is None and not self.busy.acquire(blocking=False):
            why = "it is running another launch"
        if why:
            with contextlib.suppress(OSError):
                _send(conn, {"accepted": False, "why": why})
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        conn.settimeout(None)  # from here the launch's own length: the client waits for its result
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        self.requests.put(_Request(conn, request, fds, pid))

    def _refusal(self, r: dict) -> Optional[str]:
        if r.get("code") != self.code:
            return "the code changed since it started (restart aa-study serve)"
        if r.get("cwd") != self.cwd:
            return f"it serves launches from {self.cwd}"
        if r.get("mps") and not self.mps:
            return "it runs without MPS (aa-study serve --mps)"
        if r.get("same") != self.same:
            keys = sorted(k for k in set(r.get("same", {})) | set(self.same) if r["same"].get(k) != self.same.get(k))
            return f"{', '.join(keys)} differ from its own (restart aa-study serve with them)"
        return None

    # the main thread
    def run(self, req: _Request) -> int:
        main = self.command
        self.running, self.interrupted = req, False
        threading.Thread(target=self._watch, args=(req,), daemon=True).start()
        saved_env = {k: os.environ.get(k) for k in PASSED_ENV}
        saved_argv = sys.argv
        rc, error = 1, None
        what = " ".join(["aa-study"] + [str(a) for a in req.request.get("argv", [])])[:300]
        t0 = time.time()
        print(f"study server: runs `{what}` (client pid {req.pid})", flush=True)
        try:
            with _terminal(req.fds):
                try:
                    _send(req.conn, {"accepted": True})
                    os.environ.update(req.request["passed"])
                    for k in PASSED_ENV:
                        if k not in req.request["passed"]:
                            os.environ.pop(k, None)
                    sys.argv = ["aa-study"] + req.request["argv"]
                    print(f"study server (pid {os.getpid()}) runs this launch", flush=True)
                    try:
                        rc = main(req.request["argv"])
                    except KeyboardInterrupt:
                        if not self.interrupted:
                            raise
                        rc = 130
                    except SystemExit as e:  # argparse
                        rc = e.code if isinstance(e.code, int) else 2
                    except Exception as e:  # noqa: BLE001 - the client's terminal gets the traceback, the server goes on
                        import traceback

                        error = f"{e.__class__.__name__}: {one_line(str(e), 200)}"
                        with contextlib.suppress(OSError, ValueError):  # a client's terminal that is gone
                            traceback.print_exc()
                        rc = 1
                    _flush()
                finally:
                    with self.terminal_lock:  # from here the watch leaves fds 1 and 2 alone
                        self.running = None
        finally:
            sys.argv = saved_argv
            for k, v in saved_env.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            self.running = None
            with contextlib.suppress(OSError):
                _send(req.conn, {"rc": rc})
            req.conn.close()
            self.busy.release()
            how = ("stopped: its client went away" if self.client_gone else "stopped (Ctrl-C in the client)"
                   if self.interrupted else f"exit {rc}") + (f" ({error})" if error else "")
            print(f"study server: `{what}` ended after {time.time() - t0:.0f} s: {how}", flush=True)
            self.client_gone = False
        return rc

    def refresh(self) -> None:
        """After a launch: where its trials used up half the warm processes Ray started with (one per CPU), a fresh
        Ray, which starts a full set (5 s here, before the next launch is taken; the processes then warm up in the
        background)."""
        import ray

        idle, cpus = driver.idle_workers(), int(ray.cluster_resources().get("CPU", 1))
        if idle is None or idle < max(1, cpus // 2):
            driver.stop_ray(own=True)
            _start_ray()
            print(f"study server: Ray restarted with {cpus} fresh worker processes ({idle} were left)", flush=True)

    def _watch(self, req: _Request) -> None:
        """The client's Ctrl-C (or its end): stop the launch as a Ctrl-C in its own terminal would. A client that went
        away (killed, its ssh session closed) took its terminal with it: nothing more is written there (fds 1 and 2
        point to /dev/null until the launch ends), so the launch stops and the server carries on."""
        line = ""
        with contextlib.suppress(OSError, ValueError), req.conn.makefile("r") as f:
            line = f.readline()
        with self.terminal_lock:
            if self.running is not req:
                return
            if not line:
                self.client_gone = True
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1), os.dup2(null, 2)
                os.close(null)
            self.interrupted = True
        os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def _terminal(fds: List[int]):
    """File descriptors 1 and 2 are the client's for the launch (its terminal, pipe or file)."""
    _flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(fds[0], 1), os.dup2(fds[1], 2)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = UntilGone(sys.stdout, 1), UntilGone(sys.stderr, 2)
    try:
        yield
    finally:
        _flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in saved + list(fds):
            os.close(fd)


def _interrupt(*_):
    raise KeyboardInterrupt


def _start_ray() -> bool:
    """The server's Ray, warm (`driver.start_local_ray`), and SIGTERM as Ctrl-C: after Ray's start, which sets a
    handler of its own. Whether Tune's trials can get the pre-imported processes."""
    warm = driver.start_local_ray(warm=True)
    signal.signal(signal.SIGTERM, _interrupt)
    return warm


def serve(home: Path, command: Callable[[List[str]], int], mps: bool = False) -> int:
    """`aa-study serve`: until Ctrl-C or SIGTERM. Exit 2, in one line, where it cannot serve. mps: an NVIDIA MPS
    daemon for the server's Ray (`resources.Mps`), for every launch it runs, with or without --mps."""
    if not sys.platform.startswith("linux"):
        print("aa-study serve: error: the study server needs Linux (abstract sockets)", file=sys.stderr)
        return 2
    if os.environ.get("RAY_ADDRESS"):
        print("aa-study serve: error: RAY_ADDRESS is set: the server runs a local Ray of its own", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address(home))
    except OSError:
        print(f"aa-study serve: error: a study server for {home} is already running", file=sys.stderr)
        return 2
    t0 = time.time()
    from .outcome import LaunchError
    from .resources import Mps

    server = Server(home, mps, command)
    try:
        daemon = Mps(None, None) if mps else None
    except LaunchError as e:
        print(f"aa-study serve: error: {e}", file=sys.stderr)
        return 2
    try:
        with daemon or contextlib.nullcontext():
            return _serve(server, sock, t0)
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


def _serve(server: Server, sock: socket.socket, t0: float) -> int:
    try:
        warm = _start_ray()
        from ray import tune  # noqa: F401  (what a launch imports, imported once)
        import mlflow  # noqa: F401
        from ..training import checks  # noqa: F401  (torch, Lightning: the deep checks run in this process)

        driver._SERVED = True
        sock.listen(8)
        threading.Thread(target=server.accept, args=(sock,), daemon=True, name="aa-study-accept").start()
        print(f"study server (pid {os.getpid()}) ready in {time.time() - t0:.1f} s for launches from {server.cwd} "
              f"with the study folder {server.home}: `aa-study run` hands its launches here. Ctrl-C stops it.",
              flush=True)
        if not warm:  # the launches still run here, without Ray's start; their trials import on their own
            print("study server: this Ray's Tune has no actor-class cache to replace (ray.tune.execution.class_cache):"
                  " its trials start in processes of their own, not the pre-imported ones", flush=True)
        while True:
            try:
                req = server.requests.get(timeout=0.5)
            except queue.Empty:
                continue
            server.run(req)
            # Tune swaps in its own SIGINT handler for a launch and puts the old one back only when a signal
            # comes: the server's Ctrl-C is Python's again after each launch
            signal.signal(signal.SIGINT, signal.default_int_handler)
            server.refresh()
    except KeyboardInterrupt:
        print("study server: stopping", flush=True)
        return 0
    finally:
        driver._SERVED = False
        driver.stop_ray(own=True)
