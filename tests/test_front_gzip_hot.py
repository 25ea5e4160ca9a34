"""A file compressed on the fly is read from the hot-file path (its identity body held in
memory for a second) and compressed again for each request, as a plain request for it
is answered: up to the size read whole (256 KiB), within a byte budget."""

from __future__ import annotations

import gzip

from gantry.front import files
from gantry.front.files import StaticHandler
from tests.process import Launcher
from tests.support_static import answered_from_memory, get, static_config

LOCATIONS = """
[[front.server.location]]
path = "/squeezed/"
alias = "SITE/"
gzip = true
gzip_comp_level = 1
"""

#: 100 KiB of markup: over the 64 KiB the hot path took before
PAGE = b"".join(b'<p class="c%d">line %d of the page</p>\n' % (n % 7, n) for n in range(4000))[
    : 100 * 1024
]


def test_a_page_compressed_on_the_fly_comes_from_the_hot_path(launch: Launcher) -> None:
    site = launch.workdir / "site"
    site.mkdir()
    page = site / "page.html"
    page.write_bytes(PAGE)
    port = launch.front(static_config(site, LOCATIONS)).port

    def warm(old: bytes) -> None:
        for accept in ("gzip", None, "gzip"):
            fields, body = get(port, "/squeezed/page.html", accept)
            assert fields.get("vary") == "Accept-Encoding", fields
            if accept:
                assert fields.get("content-encoding") == "gzip", fields
                assert int(fields["content-length"]) == len(body) < len(old) // 2
                assert fields["etag"].startswith('W/"'), fields
                body = gzip.decompress(body)
            else:
                assert "content-encoding" not in fields and fields["etag"].startswith('"')
            assert body == old

    def fetch() -> bytes:
        fields, body = get(port, "/squeezed/page.html", "gzip")
        assert fields.get("content-encoding") == "gzip", fields
        return gzip.decompress(body)

    assert answered_from_memory(page, PAGE, warm, fetch), (
        "a request taking gzip never reached the hot-file path"
    )


def test_the_hot_bodies_stay_within_the_byte_budget() -> None:
    handler = StaticHandler()
    size = files.HOT_FILE_MAX
    count = files.HOT_BYTES // size
    for n in range(count + 3):
        handler._keep_hot((1, f"/f{n}"), (0.0, b"head", bytes(size), True))
        assert handler.hot_bytes == sum(len(e[2]) for e in handler.hot.values())
        assert handler.hot_bytes <= files.HOT_BYTES
    # the oldest went first
    assert (1, "/f0") not in handler.hot and (1, f"/f{count + 2}") in handler.hot
    assert len(handler.hot) == count
    # an entry held again replaces its own bytes
    handler._keep_hot((1, f"/f{count + 2}"), (0.0, b"head", b"x", True))
    assert handler.hot_bytes == (count - 1) * size + 1
    for n in range(files.HOT_FILES + 5):
        handler._keep_hot((2, f"/s{n}"), (0.0, b"head", b"", True))
    assert len(handler.hot) == files.HOT_FILES
