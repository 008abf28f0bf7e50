"""The cluster recipe's tracking server as a worker node meets it: a real PostgreSQL, `deploy/tracking-server.sh`
as the README runs it (MLflow's basic-auth app over HTTPS), addressed by this machine's own non-loopback address. A
study launched through it with credentials from the environment finishes with one run per cell × seed (twice
launched: nothing rerun, nothing duplicated); a request without credentials, with a wrong password, with a foreign
Host header or over plain HTTP is refused; the password is never printed; Ray's token file is its owner's only."""
import glob
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port, small_study

PASSWORD = "wonderland-42-secret"


def _own_address():
    """This machine's address on its network (not loopback), as another node would reach it; None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _pg_bin(name):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture
def postgres():
    """A PostgreSQL server on loopback with password authentication, run as an unprivileged user (it refuses root).
    Yields its port and password; the databases aa_mlflow and aa_mlflow_auth exist, empty."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("psql")):
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql where it may)")
    run_as = []
    if os.getuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="aa-pg-"))  # pytest's folders are private to root: postgres can't enter
    os.chmod(folder, 0o755)
    pw = folder / "pw"
    pw.write_text("pg-secret\n")
    if run_as:
        shutil.chown(folder, "postgres")
        shutil.chown(pw, "postgres")
    data, port = folder / "data", free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(run_as + [initdb, "-D", str(data), "-E", "UTF8", "--locale=C", "-U", "aa", "-A", "scram-sha-256",
                             f"--pwfile={pw}"], check=True, capture_output=True, env=env, cwd=folder)
    subprocess.run(run_as + [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
                             f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"],
                   check=True, capture_output=True, env=env, cwd=folder)
    try:
        psql = ["psql", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "aa", "-d", "postgres"]
        subprocess.run(psql + ["-c", "create database aa_mlflow", "-c", "create database aa_mlflow_auth"],
                       check=True, capture_output=True, env={**env, "PGPASSWORD": "pg-secret"})
        yield port, "pg-secret"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def _status(url, ctx, user=None, password=None, host=None):
    req = urllib.request.Request(url)
    if user:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_a_study_reports_through_the_secure_tracking_server_by_its_address(workdir, postgres, tmp_path):
    addr = _own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    pg_port, pg_password = postgres
    port, home = free_port(), tmp_path / "home"
    home.mkdir()
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)  # as Ray writes it: 0644
    os.chmod(home / ".ray" / "auth_token", 0o644)
    env = {**os.environ, "HOME": str(home), "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    server_env = {**env, "PGPASSWORD": pg_password, "AA_TRACKING_DB": f"postgresql://aa@127.0.0.1:{pg_port}/aa_mlflow",
                  "AA_TRACKING_ARTIFACTS": str(tmp_path / "artifacts"), "AA_TRACKING_HOST": addr,
                  "AA_TRACKING_PORT": str(port), "AA_TRACKING_WORKERS": "1"}
    server = subprocess.Popen(["bash", str(ROOT / "deploy" / "tracking-server.sh")], env=server_env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    cert = home / ".aa-study" / "tracking-server" / "cert.pem"
    url = f"https://{addr}:{port}"
    try:
        deadline, ctx = time.time() + 120, None
        while time.time() < deadline and server.poll() is None:
            time.sleep(1)
            if cert.exists():
                ctx = ssl.create_default_context(cafile=str(cert))
                try:
                    if _status(url + "/health", ctx) == 200:
                        break
                except OSError:
                    continue
        else:
            raise AssertionError(f"tracking server did not start: {server.stdout.read()[-3000:] if server.poll() is not None else ''}")
        state = home / ".aa-study" / "tracking-server"
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        for name in ("secret", "basic_auth.ini", "key.pem"):
            assert (state / name).stat().st_mode & 0o077 == 0, name
        # who you are: no credentials, a wrong password, a foreign Host header, plain HTTP, loopback (not bound)
        api = url + "/api/2.0/mlflow/experiments/search?max_results=5"
        assert _status(api, ctx) == 401
        assert _status(api, ctx, "alice", "wrong-password") == 401
        assert _status(api, ctx, "alice", PASSWORD) == 200
        assert _status(api, ctx, "alice", PASSWORD, host=f"evil.example:{port}") == 403
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{addr}:{port}/health", timeout=10)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=10, context=ctx)

        path = small_study(workdir, kappa=[0.25], pos_enc=["none", "relative"], epochs=2)
        client_env = {**env, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert)}
        cmd = [sys.executable, "-m", "aa_study.cli"]
        outs = []
        for _ in range(2):  # the second launch finds every trial finished: nothing rerun
            p = subprocess.run(cmd + ["run", str(path), "--quiet", "--tracking-uri", url], env=client_env, cwd=workdir,
                               capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
            outs.append(p.stdout + p.stderr)
        assert "done: 2 finished" in outs[0] and "done: 0 finished" in outs[1] and "2 already finished" in outs[1]
        for out in outs:
            assert PASSWORD not in out
        assert (home / ".ray" / "auth_token").stat().st_mode & 0o077 == 0  # narrowed to its owner

        from mlflow.tracking import MlflowClient

        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(cert)
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "alice", PASSWORD
        try:
            c = MlflowClient(url)
            exp = c.get_experiment_by_name("tiny-cpu")
            trials = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
        finally:
            for k in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k, None)
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        assert len({(r.data.tags["cell"], r.data.tags["seed"]) for r in trials}) == 2
        # the runs live in PostgreSQL, not in a file beside the server
        rows = subprocess.run(["psql", "-tA", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "aa", "-d", "aa_mlflow", "-c",
                               "select count(*) from runs"], env={**os.environ, "PGPASSWORD": pg_password},
                              capture_output=True, text=True, check=True)
        assert int(rows.stdout.strip()) >= 3  # two trials and the launch runs
    finally:
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):  # uvicorn may wait on a client's keep-alive connection
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=15)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue


def test_the_recipe_refuses_an_incomplete_or_unsafe_setting_in_one_line(tmp_path):
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AA_TRACKING_DB": "postgresql://aa@127.0.0.1/aa",
            "AA_TRACKING_ARTIFACTS": str(tmp_path / "a"), "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    cases = {
        "AA_TRACKING_DB": {"AA_TRACKING_DB": ""},
        "carries a password": {"AA_TRACKING_DB": "postgresql://aa:pw@127.0.0.1/aa"},
        "must be a postgresql": {"AA_TRACKING_DB": "sqlite:///x.db"},
        "not on every interface": {"AA_TRACKING_HOST": "0.0.0.0"},
        "at least 12": {"MLFLOW_TRACKING_PASSWORD": "short"},
        "MLFLOW_TRACKING_USERNAME and": {"MLFLOW_TRACKING_USERNAME": ""},
        "AA_TRACKING_PORT must be": {"AA_TRACKING_PORT": "80"},
    }
    for want, change in cases.items():
        p = subprocess.run(["bash", str(ROOT / "deploy" / "tracking-server.sh")], env={**base, **change},
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and want in p.stderr and len(p.stderr.strip().splitlines()) == 1, (want, p.stderr)
        assert not (tmp_path / ".aa-study").exists()  # refused before anything is written
