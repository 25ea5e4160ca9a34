"""`gantry up` with no -c: ./gantry.toml when there is one, or MODULE:APP behind the front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.process import Launcher, free_port, gantry_env, try_get, wait_for

APP = """
def app(environ, start_response):
    body = ("mine at " + environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

STACK = """
[front]
listen = ["127.0.0.1:{port}"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "site"

[[app]]
name = "site"
module = "site_app:app"
chdir = "{chdir}"
workers = 1
graceful_timeout = 5
"""


def _serve_and_get(
    launch: Launcher, args: list[str], cwd: Path, port: int, path: str
) -> tuple[bytes, str]:
    """Start `gantry up ARGS` in ``cwd``; the body its front answers on ``port`` and the log."""
    launch.program(
        [sys.executable, "-m", "gantry", "up", *args],
        ("127.0.0.1", port), "up", env=gantry_env(), cwd=cwd,
    )  # fmt: skip
    log = launch.workdir / "up.log"
    answers: list[bytes] = []

    def answered() -> bool:
        status, body = try_get(port, path)
        answers.append(body)
        return status == 200

    assert wait_for(answered, 30), log.read_text()
    return answers[-1], log.read_text()


def test_up_reads_the_gantry_toml_of_the_working_directory(
    launch: Launcher, tmp_path: Path
) -> None:
    port = free_port()
    (tmp_path / "site_app.py").write_text(APP)
    (tmp_path / "gantry.toml").write_text(STACK.format(port=port, chdir=tmp_path))
    body, log = _serve_and_get(launch, [], tmp_path, port, "/from-file")
    assert body == b"mine at /from-file"
    assert "gantry up: using ./gantry.toml" in log


def test_up_module_app_serves_it_behind_the_front(launch: Launcher, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "site_app.py").write_text(APP)
    args = ["site_app:app", "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    body, log = _serve_and_get(launch, args, tmp_path, port, "/x/y")
    assert body == b"mine at /x/y"
    assert "spawned worker 2" in log  # --workers reached the pool


def test_up_refuses_an_app_beside_a_file(tmp_path: Path) -> None:
    (tmp_path / "gantry.toml").write_text(STACK.format(port=free_port(), chdir=tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "up", "-c", "gantry.toml", "site_app:app"],
        cwd=tmp_path, env=gantry_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "MODULE:APP" in result.stderr
