"""A real PostgreSQL and the cluster recipe's tracking server (deploy/tracking-server.sh) on this machine, for the
recipe's test (tests/launch/test_secure_cluster.py) and the store's load benchmark (benchmarks/store_load.py)."""
from __future__ import annotations

import base64
import contextlib
import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent


def own_address() -> Optional[str]:
    """This machine's address on its network (not loopback), as another node reaches it; None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def postgres_available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl") and shutil.which("psql"))


@contextlib.contextmanager
def postgres() -> Iterator[Tuple[int, str]]:
    """A PostgreSQL server on loopback with password authentication, run as an unprivileged user (it refuses root).
    Yields (port, password); the databases aa_mlflow and aa_mlflow_auth exist, empty."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    run_as = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="aa-pg-"))  # pytest's folders are private to root: postgres can't enter
    os.chmod(folder, 0o755)
    pw = folder / "pw"
    pw.write_text("pg-secret\n")
    if run_as:
        shutil.chown(folder, "postgres")
        shutil.chown(pw, "postgres")
    data, port = folder / "data", free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(run_as + [initdb, "-D", str(data), "-E", "UTF8", "--locale=C", "-U", "aa", "-A",
                                 "scram-sha-256", f"--pwfile={pw}"], check=True, capture_output=True, env=env,
                       cwd=folder)
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
                                 f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"],
                       check=True, capture_output=True, env=env, cwd=folder)
        psql(port, "pg-secret", "postgres", "create database aa_mlflow", "create database aa_mlflow_auth")
        yield port, "pg-secret"
    finally:
        if data.exists():
            subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                           cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def psql(port: int, password: str, db: str, *commands: str) -> str:
    args = ["psql", "-tAq", "-h", "127.0.0.1", "-p", str(port), "-U", "aa", "-d", db]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True,
                          check=True).stdout


def status_of(url: str, ctx, user: Optional[str] = None, password: Optional[str] = None,
              host: Optional[str] = None) -> int:
    """The HTTP status of a GET, with basic credentials and a Host header if given."""
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@contextlib.contextmanager
def tracking_server(pg_port: int, pg_password: str, home: Path, user: str, password: str, addr: str,
                    workers: int = 1, **settings: str) -> Iterator[Tuple[str, Path]]:
    """deploy/tracking-server.sh as the README runs it, with HOME=home (its state folder under it), on addr.
    Yields (https URL, the certificate clients trust); stops the server's whole process group at the end.
    `settings`: more of the script's variables (AA_TRACKING_AUTH_CACHE_S=...)."""
    port = free_port()
    env = {**os.environ, "HOME": str(home), "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password,
           "PGPASSWORD": pg_password, "AA_TRACKING_DB": f"postgresql://aa@127.0.0.1:{pg_port}/aa_mlflow",
           "AA_TRACKING_ARTIFACTS": str(home / "artifacts"), "AA_TRACKING_HOST": addr,
           "AA_TRACKING_PORT": str(port), "AA_TRACKING_WORKERS": str(workers), **settings}
    log = home / "tracking-server.log"  # a file, not a pipe: a pipe nobody reads fills and blocks the server
    with open(log, "w") as out:
        server = subprocess.Popen(["bash", str(ROOT / "deploy" / "tracking-server.sh")], env=env, cwd=home,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cert, url = home / ".aa-study" / "tracking-server" / "cert.pem", f"https://{addr}:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"tracking server did not start: {log.read_text()[-3000:]}"
                                   if server.poll() is not None else "tracking server did not start in 120 s")
            time.sleep(1)
            if cert.exists():
                try:
                    if status_of(url + "/health", ssl.create_default_context(cafile=str(cert))) == 200:
                        break
                except OSError:
                    continue
        yield url, cert
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # uvicorn may wait on a client's keep-alive connection
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=15)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
