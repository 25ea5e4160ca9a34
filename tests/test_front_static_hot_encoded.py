"""A browser's request (it always sends Accept-Encoding) for a small file with no
compressed sibling is answered from the hot-file path like a bare one; where a sibling
exists, or the location compresses on the fly, Accept-Encoding still decides."""

from __future__ import annotations

import gzip
import http.client
import os
from pathlib import Path

from tests.process import Launcher

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/static/"
alias = "SITE/"
gzip_static = true

[[front.server.location]]
path = "/squeezed/"
alias = "SITE/"
gzip = true
gzip_min_length = 1
"""

PAGE = b"<p>hello</p>" * 100


def _site(launch: Launcher) -> Path:
    site = launch.workdir / "site"
    site.mkdir()
    (site / "page.html").write_bytes(PAGE)
    (site / "page.html.gz").write_bytes(gzip.compress(PAGE))
    (site / "plain.html").write_bytes(PAGE)
    return site


def _get(port: int, path: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": accept} if accept else {})
        response = conn.getresponse()
        assert response.status == 200
        return {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_a_sibling_or_on_the_fly_compression_still_answers_accept_encoding(
    launch: Launcher,
) -> None:
    port = launch.front(CONFIG.replace("SITE", str(_site(launch)))).port
    for path in ("/static/page.html", "/squeezed/plain.html"):
        for accept in (None, "gzip", None, "gzip", "identity", "gzip"):
            fields, body = _get(port, path, accept)
            if accept == "gzip":
                assert fields.get("content-encoding") == "gzip", (path, fields)
                assert gzip.decompress(body) == PAGE
            else:
                assert "content-encoding" not in fields and body == PAGE, (path, fields)
            assert fields.get("vary") == "Accept-Encoding", (path, fields)


def test_a_file_without_a_sibling_is_hot_for_browsers_too(launch: Launcher) -> None:
    site = _site(launch)
    port = launch.front(CONFIG.replace("SITE", str(site))).port
    seen_old = False
    for attempt in range(10):
        old = PAGE if attempt % 2 == 0 else PAGE.upper()
        new = PAGE.upper() if attempt % 2 == 0 else PAGE
        for _ in range(2):
            fields, body = _get(port, "/static/plain.html", "gzip, br")
            assert body == old and "vary" not in fields and "content-encoding" not in fields
        # the same bytes count, written in place: only a copy held in memory still has
        # the old ones (for at most a second)
        fd = os.open(site / "plain.html", os.O_WRONLY)
        try:
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        _, body = _get(port, "/static/plain.html", "gzip, br")
        if body == old:
            seen_old = True
            break
        assert body == new
    assert seen_old, "a browser's request never reached the hot-file path"
