"""Helpers for the tests of the front's static files and their compression (a helper
module, not a test module): a one-worker front whose locations alias a site folder, a
GET with or without Accept-Encoding, and the check that an answer came from the hot-file
path (a copy of the file held in memory for a second)."""

from __future__ import annotations

import gzip
import http.client
import os
from collections.abc import Callable
from pathlib import Path

#: the page of the sites below: small enough for the hot-file path, compressible
PAGE = b"<p>hello</p>" * 100


def static_config(site: Path, locations: str) -> str:
    """A front of one worker on FRONT_PORT, one default server holding ``locations``
    (TOML ``[[front.server.location]]`` tables), where SITE stands for ``site``."""
    return (
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\nworkers = 1\n\n'
        "[[front.server]]\ndefault = true\n" + locations.replace("SITE", str(site))
    )


def write_site(site: Path) -> Path:
    """``site`` made with page.html and its gzip sibling page.html.gz, and plain.html
    (no sibling), each ``PAGE``."""
    site.mkdir()
    (site / "page.html").write_bytes(PAGE)
    (site / "page.html.gz").write_bytes(gzip.compress(PAGE))
    (site / "plain.html").write_bytes(PAGE)
    return site


def get(port: int, path: str, accept: str | None = None) -> tuple[dict[str, str], bytes]:
    """A GET of ``path`` on a new connection (Accept-Encoding: ``accept`` if given), which
    must be answered 200: its fields (lower-case names) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": accept} if accept else {})
        response = conn.getresponse()
        assert response.status == 200, (path, response.status)
        return {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def answered_from_memory(
    file: Path, page: bytes, warm: Callable[[bytes], None], fetch: Callable[[], bytes]
) -> bool:
    """Whether the front answered ``file`` from a copy held in memory: ``warm(old)`` asks
    for it (with the test's own checks, expecting ``old``), then the file is rewritten in
    place with as many bytes (its size and perhaps its mtime unchanged), and ``fetch()``
    (the body as served, decoded) still giving the old bytes is a hit on the copy. The
    copy lives a second, so a rewrite may fall after it: ten tries, alternating ``page``
    and ``page.upper()``."""
    for attempt in range(10):
        old = page if attempt % 2 == 0 else page.upper()
        new = page.upper() if attempt % 2 == 0 else page
        warm(old)
        fd = os.open(file, os.O_WRONLY)
        try:
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        body = fetch()
        if body == old:
            return True
        assert body == new
    return False
