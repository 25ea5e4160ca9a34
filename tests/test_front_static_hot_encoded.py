"""A browser's request (it always sends Accept-Encoding) for a small file with no
compressed sibling is answered from the hot-file path like a bare one; where a sibling
exists, or the location compresses on the fly, Accept-Encoding still decides."""

from __future__ import annotations

import gzip

from tests.process import Launcher
from tests.support_static import PAGE, answered_from_memory, get, static_config, write_site

LOCATIONS = """
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


def test_a_sibling_or_on_the_fly_compression_still_answers_accept_encoding(
    launch: Launcher,
) -> None:
    port = launch.front(static_config(write_site(launch.workdir / "site"), LOCATIONS)).port
    for path in ("/static/page.html", "/squeezed/plain.html"):
        for accept in (None, "gzip", None, "gzip", "identity", "gzip"):
            fields, body = get(port, path, accept)
            if accept == "gzip":
                assert fields.get("content-encoding") == "gzip", (path, fields)
                assert gzip.decompress(body) == PAGE
            else:
                assert "content-encoding" not in fields and body == PAGE, (path, fields)
            assert fields.get("vary") == "Accept-Encoding", (path, fields)


def test_a_file_without_a_sibling_is_hot_for_browsers_too(launch: Launcher) -> None:
    site = write_site(launch.workdir / "site")
    port = launch.front(static_config(site, LOCATIONS)).port

    def warm(old: bytes) -> None:
        for _ in range(2):
            fields, body = get(port, "/static/plain.html", "gzip, br")
            assert body == old and "vary" not in fields and "content-encoding" not in fields

    def fetch() -> bytes:
        return get(port, "/static/plain.html", "gzip, br")[1]

    assert answered_from_memory(site / "plain.html", PAGE, warm, fetch), (
        "a browser's request never reached the hot-file path"
    )
