"""A missing static directory is warned about at start; a file that cannot be opened is
named in the error log, as nginx does ('open() "..." failed (2: No such file ...)')."""

from __future__ import annotations

import http.client

from tests.process import Launcher, wait_for

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/gone/"
root = "MISSING"

[[front.server.location]]
path = "/site/"
alias = "SITE/"
"""


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_missing_root_warned_and_missing_file_named(launch: Launcher) -> None:
    site = launch.workdir / "site"
    site.mkdir()
    (site / "here.txt").write_text("here")
    missing = launch.workdir / "no-such-dir"
    front = launch.front(CONFIG.replace("MISSING", str(missing)).replace("SITE", str(site)))
    assert f"root {str(missing)!r} is not a directory" in front.log_text()
    assert _status(front.port, "/site/here.txt") == 200
    assert _status(front.port, "/site/absent.txt") == 404
    expected = f'open() "{site}/absent.txt" failed (2: No such file or directory)'
    assert wait_for(lambda: expected in front.log_text(), 5), front.log_text()
    assert _status(front.port, "/gone/x.html") == 404
    assert wait_for(lambda: f'open() "{missing}/gone/x.html" failed' in front.log_text(), 5)
