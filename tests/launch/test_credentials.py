"""A tracking URI with credentials: they reach the server (HTTP basic, as MLflow's client sends them) and are never
printed."""
import base64
import http.server
import socket
import threading

import pytest

from conftest import TINY_STUDY
from aa_study.cli import main
from pipelines.tracking import TrackingError, check_tracking_uri


class _Health(http.server.BaseHTTPRequestHandler):
    want = "Basic " + base64.b64encode(b"alice:s3cr%t").decode()

    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path == "/health" and self.headers.get("Authorization") == self.want
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_credentials_in_the_uri_or_mlflow_s_variables_reach_the_health_check(server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    check_tracking_uri(f"http://alice:s3cr%25t@127.0.0.1:{server}")  # percent-encoded '%' in the password
    with pytest.raises(TrackingError) as e:
        check_tracking_uri(f"http://alice:wrong@127.0.0.1:{server}")
    assert "wrong" not in str(e.value) and "***@" in str(e.value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr%t")
    check_tracking_uri(f"http://127.0.0.1:{server}")


def test_a_password_is_never_printed(workdir, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = workdir / "tiny.yaml"
    path.write_text(TINY_STUDY)
    uri = f"http://alice:hunter2@127.0.0.1:{port}"
    for argv in (["status", str(path)], ["run", str(path), "--dry-run"], ["report", str(path), "--no-log"]):
        assert main([*argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "unreachable" in err and "hunter2" not in err, err
