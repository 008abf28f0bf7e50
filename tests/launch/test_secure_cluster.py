"""The cluster recipe's tracking server as a worker node meets it: a real PostgreSQL, `deploy/tracking-server.sh`
as the README runs it (MLflow's basic-auth app over HTTPS), addressed by this machine's own non-loopback address. A
study launched through it with credentials from the environment finishes with one run per cell × seed (twice
launched: nothing rerun, nothing duplicated); a request without credentials, with a wrong password, with a foreign
Host header or over plain HTTP is refused; the password is never printed; Ray's token file is its owner's only."""
import os
import ssl
import subprocess
import sys
import urllib.request

import pytest

from conftest import ROOT, small_study

sys.path.insert(0, str(ROOT))
from benchmarks.secure_server import (own_address, postgres_available, postgres, psql, status_of,  # noqa: E402
                                      tracking_server)

PASSWORD = "wonderland-42-secret"


@pytest.mark.slow
def test_a_study_reports_through_the_secure_tracking_server_by_its_address(workdir, tmp_path):
    addr = own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql where it may)")
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)  # as Ray writes it: 0644
    os.chmod(home / ".ray" / "auth_token", 0o644)
    env = {**os.environ, "HOME": str(home), "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    with postgres() as (pg_port, pg_password), \
            tracking_server(pg_port, pg_password, home, "alice", PASSWORD, addr) as (url, cert):
        ctx = ssl.create_default_context(cafile=str(cert))
        state = home / ".aa-study" / "tracking-server"
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        for name in ("secret", "basic_auth.ini", "key.pem"):
            assert (state / name).stat().st_mode & 0o077 == 0, name
        # who you are: no credentials, a wrong password, a foreign Host header, plain HTTP, loopback (not bound)
        api = url + "/api/2.0/mlflow/experiments/search?max_results=5"
        port = url.rsplit(":", 1)[1]
        assert status_of(api, ctx) == 401
        assert status_of(api, ctx, "alice", "wrong-password") == 401
        assert status_of(api, ctx, "alice", PASSWORD) == 200
        assert status_of(api, ctx, "alice", PASSWORD, host=f"evil.example:{port}") == 403
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
        # the runs live in PostgreSQL: one FINISHED run per cell × seed, and the first launch
        rows = psql(pg_port, pg_password, "aa_mlflow", "select r.status, t.value from runs r join tags t on "
                    "t.run_uuid = r.run_uuid and t.key = 'kind' order by t.value, r.status").split()
        assert rows == ["FINISHED|launch", "FINISHED|trial", "FINISHED|trial"], rows  # a relaunch with nothing to run writes nothing
        cells = psql(pg_port, pg_password, "aa_mlflow", "select count(distinct c.value || '/' || s.value) from tags "
                     "c join tags s on s.run_uuid = c.run_uuid and s.key = 'seed' where c.key = 'cell'")
        assert int(cells) == 2


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
