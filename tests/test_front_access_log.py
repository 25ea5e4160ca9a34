"""The access log: on by default under `gantry up` (to stderr), off on request, and in
nginx's combined format or as JSON lines."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from tests.process import Launcher, wait_for
from tests.support_up import demo_stack


def _hello(port: int, agent: str = "probe/1.0") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/hello?x=1", headers={"User-Agent": agent})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def test_gantry_up_logs_each_request_to_stderr_by_default(launch: Launcher) -> None:
    up = launch.up(demo_stack())
    assert wait_for(lambda: _hello(up.port) == 200, 30), up.log_text()
    line = '"GET /hello?x=1 HTTP/1.1" 200 12 "-" "probe/1.0"'
    assert wait_for(lambda: line in up.log_text(), 10), up.log_text()


def test_access_log_off(launch: Launcher) -> None:
    up = launch.up(demo_stack(front='access_log = "off"'))
    assert wait_for(lambda: _hello(up.port) == 200, 30), up.log_text()
    for _ in range(3):
        assert _hello(up.port) == 200
    assert "GET /hello" not in up.log_text()


def test_json_lines(launch: Launcher) -> None:
    path = launch.workdir / "access.json"
    config = f'access_log = "{path}"\naccess_log_format = "json"'
    up = launch.up(demo_stack(front=config))
    assert wait_for(lambda: _hello(up.port, 'quote " and \\ back') == 200, 30), up.log_text()

    def entries() -> list[dict[str, object]]:
        text = Path(path).read_text() if Path(path).exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    assert wait_for(lambda: any(e["status"] == 200 for e in entries()), 10)
    entry = next(e for e in entries() if e["status"] == 200)
    assert entry["method"] == "GET" and entry["uri"] == "/hello?x=1"
    assert entry["request"] == "GET /hello?x=1 HTTP/1.1" and entry["protocol"] == "HTTP/1.1"
    assert entry["http_user_agent"] == 'quote " and \\ back'
    assert entry["body_bytes_sent"] == 12 and entry["remote_addr"] == "127.0.0.1"
    upstreams = entry["upstream_addr"]
    assert isinstance(upstreams, list) and upstreams[0].startswith("unix:")
    assert isinstance(entry["request_time"], float)
