"""`gantry up` with an HTTPS front: Flask's url_for(_external=True) builds https links,
and a certificate renewed on disk is served after SIGHUP although gantry.toml did not
change (the unchanged front is reloaded in place: its master reads the files again)."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from tests.process import REPO, Launcher, wait_for
from tests.support_tls import TestCA, https_connection, serial_of, serial_of_file


def test_flask_links_are_https_and_a_renewed_certificate_is_served_after_sighup(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    pair = ca.issue("app.test")
    up = launch.up(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
[[front.server]]
server_name = ["app.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
proxy = "web"

[[app]]
name = "web"
module = "tests.apps_tls:app"
chdir = "{REPO}"
workers = 1
graceful_timeout = 5
""")  # fmt: skip
    context = ca.client_context()
    conn = https_connection(up.port, "app.test", context)
    try:
        assert wait_for(lambda: _status(conn) == 200, limit=20), up.log_text()[-2000:]
        conn.request("GET", "/link")
        seen = json.loads(conn.getresponse().read())
        assert seen["link"] == f"https://app.test:{up.port}/link", seen
        assert seen["url_scheme"] == "https"
    finally:
        conn.close()

    old = serial_of_file(pair.certificate)
    ca.issue("app.test")
    new = serial_of_file(pair.certificate)
    assert new != old
    assert up.process is not None
    up.process.send_signal(signal.SIGHUP)

    def served() -> int:
        with socket.create_connection(("127.0.0.1", up.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="app.test") as tls:
                return serial_of(tls)

    assert wait_for(lambda: _safe(served) == new, limit=30), up.log_text()[-3000:]


def _status(conn: object) -> int:
    from http.client import HTTPSConnection

    assert isinstance(conn, HTTPSConnection)
    try:
        conn.request("GET", "/link")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        conn.close()
        return 0


def _safe(read: object) -> int:
    try:
        return read()  # type: ignore[operator, no-any-return]
    except OSError:
        return 0
