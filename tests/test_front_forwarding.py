"""What gantry front passes upstream, against real upstreams that show what they got: no
client-made X-Script-Name, no field the client's Connection names; and next_upstream's
"error" decides whether a refused connection goes on to the next server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.process import GantryServer, free_port
from tests.support_front import RawUpstream, fields_of, start_front

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
SPOOFED = {
    "X-Script-Name": "/admin",
    "Connection": "X-Secret, keep-alive",
    "X-Secret": "token",
    "X-Other": "kept",
}


def test_spoofable_fields_do_not_reach_an_http_upstream(tmp_path: Path) -> None:
    upstream = RawUpstream(lambda head: OK)
    front = start_front(
        tmp_path,
        f"""
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "raw"
[[front.server.location]]
path = "/mount/"
proxy = "raw"
script_name = "/mount"
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{upstream.port}" }}]
""",
    )
    try:
        for path, script_names in (("/page", []), ("/mount/page", ["/mount"])):
            upstream.received.clear()
            response, body = front.request("GET", path, headers=SPOOFED)
            assert (response.status, body) == (200, b"ok")
            fields = fields_of(upstream.received[0])
            names = [name for name, _ in fields]
            assert [v for n, v in fields if n == "x-script-name"] == script_names, path
            assert "x-secret" not in names and "connection" not in names, fields
            assert ("x-other", "kept") in fields
    finally:
        front.stop()
        upstream.close()


def test_spoofable_fields_do_not_reach_a_uwsgi_upstream(tmp_path: Path) -> None:
    """Both packets: the standard one, and gantry's own (gantry_keepalive)."""
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), log_path=tmp_path / "app.log"
    )
    app.start()
    front = start_front(
        tmp_path,
        f"""
[[front.server]]
server_name = ["standard.test"]
[[front.server.location]]
path = "/"
proxy = "standard"
[[front.server]]
server_name = ["kept.test"]
[[front.server.location]]
path = "/"
proxy = "kept"
[front.upstream.standard]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
[front.upstream.kept]
protocol = "uwsgi"
gantry_keepalive = true
servers = [{{ address = "unix:{sock}" }}]
""",
    )
    try:
        for host in ("standard.test", "kept.test"):
            response, body = front.request("GET", "/cgi", headers={"Host": host, **SPOOFED})
            assert response.status == 200, body
            environ = json.loads(body)
            assert "HTTP_X_SCRIPT_NAME" not in environ, host
            assert "HTTP_X_SECRET" not in environ, host
            assert environ.get("HTTP_X_OTHER") == "kept", host
    finally:
        front.stop()
        app.stop()


def test_refused_connection_retried_only_when_next_upstream_says_error(tmp_path: Path) -> None:
    refused = free_port()  # nothing listens there: connects are refused
    upstream = RawUpstream(lambda head: OK)
    servers = (
        f'servers = [{{ address = "127.0.0.1:{refused}", max_fails = 0 }}, '
        f'{{ address = "127.0.0.1:{upstream.port}", max_fails = 0 }}]'
    )
    front = start_front(
        tmp_path,
        f"""
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "with_error"
[[front.server.location]]
path = "/strict/"
proxy = "without_error"
[front.upstream.with_error]
{servers}
[front.upstream.without_error]
next_upstream = ["timeout"]
{servers}
""",
    )
    try:
        # round robin: every other request goes to the refusing server first
        assert [front.request("GET", "/a")[0].status for _ in range(4)] == [200] * 4
        statuses = sorted(front.request("GET", "/strict/a")[0].status for _ in range(4))
        assert statuses == [200, 200, 502, 502], statuses
        # a POST may go on after a refused connect too (nothing was sent), when told to
        assert [front.request("POST", "/a", b"x")[0].status for _ in range(4)] == [200] * 4
    finally:
        front.stop()
        upstream.close()
