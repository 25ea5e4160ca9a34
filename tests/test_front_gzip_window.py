"""gzip's deflate state sized as nginx sizes it: window bits 15 and memLevel 8, both one
less while the body would fit in half the window (ngx_http_gzip_filter_module), so a
small response does not allocate and clear 256 KiB of zlib state; what the front sends
still decodes to the file byte for byte at each size where the choice changes."""

from __future__ import annotations

import gzip
import hashlib
import http.client

import pytest

from gantry.front.compress import zlib_sizes
from tests.process import Launcher
from tests.support_static import static_config

# (body length, window bits, memLevel): nginx's loop
#   while (len < (1 << (wbits - 1)) - 262) { wbits--; memlevel--; }
NGINX = [
    (None, 15, 8),  # not known: a stream
    (102_400, 15, 8),
    (16_122, 15, 8),
    (16_121, 14, 7),
    (7_930, 14, 7),
    (7_929, 13, 6),
    (762, 11, 4),
    (761, 10, 3),
    (256, 10, 3),
    (250, 10, 3),
    (249, 9, 2),
    (1, 9, 2),
]


@pytest.mark.parametrize(("length", "wbits", "memlevel"), NGINX)
def test_the_window_and_memlevel_are_nginx_s(length: int | None, wbits: int, memlevel: int) -> None:
    assert zlib_sizes(length) == (wbits, memlevel)


LOCATIONS = """
[[front.server.location]]
path = "/squeezed/"
alias = "SITE/"
gzip = true
gzip_min_length = 1
"""


def test_each_size_decodes_to_the_file(launch: Launcher) -> None:
    site = launch.workdir / "site"
    site.mkdir()
    text = b"".join(b"<li>item %d of the list, %x</li>\n" % (n, n * 7919) for n in range(5000))
    sizes = [length for length, _, _ in NGINX if length is not None]
    for size in sizes:
        (site / f"{size}.html").write_bytes(text[:size])
    port = launch.front(static_config(site, LOCATIONS)).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for size in sizes:
            conn.request("GET", f"/squeezed/{size}.html", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("Content-Encoding") == "gzip", size
            plain = gzip.decompress(body)
            assert hashlib.sha256(plain).digest() == hashlib.sha256(text[:size]).digest(), size
    finally:
        conn.close()
