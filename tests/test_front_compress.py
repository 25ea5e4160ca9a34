"""On-the-fly compression at the front (issue 17, gzip = true): what the front sends
decompresses to the original bytes (by sha256) for static files and for proxied streams
(HTTP and uwsgi upstreams, cached too), for gzip, br and zstd; the responses that must
not be compressed are not; q-values, Vary, weak ETags; curl --compressed; and a handful
of decisions side by side with a real nginx running the same gzip rules."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli
import pytest
import zstandard

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from gantry.front.compress import choose_coding
from tests.apps_compress import text
from tests.process import Launcher, free_port, recv_until
from tests.support_rewrite import Answer, ask, start_nginx

CODINGS = ("gzip", "br", "zstd")
PAGE = text(100 * 1024, seed=7)  # the static page (answered whole)
BIG = text(700 * 1024, seed=9)  # past the front's small-file size: read from the file
SIBLING = b"/* the precompressed sibling's own text */\n" * 20


def decode(coding: str, data: bytes) -> bytes:
    """The body of ``coding`` decompressed."""
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    # a streamed zstd frame carries no content size: decode it as a stream
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Site:
    """The front under test, the static files' folder, and the app's ports."""

    port: int
    root: Path
    flags: Path
    #: the HTTP upstream's port
    app: int


def _front_config(root: Path, http_port: int, uwsgi_port: int, cache: Path) -> str:
    return f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.http]
servers = [{{ address = "127.0.0.1:{http_port}" }}]

[front.upstream.uwsgi]
protocol = "uwsgi"
servers = [{{ address = "127.0.0.1:{uwsgi_port}" }}]

[front.cache.pages]
path = "{cache}"
valid = {{ "200" = "10m" }}

[[front.server]]
server_name = ["site.test"]
gzip = true
gzip_comp_level = 1
gzip_types = ["text/css", "application/javascript", "application/json", "image/svg+xml"]
gzip_min_length = 256

[[front.server.location]]
path = "/static/"
root = "{root}"

[[front.server.location]]
path = "/off/"
alias = "{root}/static/"
gzip = false

[[front.server.location]]
path = "/h/"
proxy = "http"

[[front.server.location]]
path = "/u/"
proxy = "uwsgi"

[[front.server.location]]
path = "/c/"
proxy = "http"
cache = "pages"

[[front.server.location]]
path = "/gz9/"
proxy = "http"
gzip_comp_level = 9
compress = ["gzip"]
gzip_min_length = "1k"
"""


@pytest.fixture(scope="module")
def site(module_launch: Launcher) -> Iterator[Site]:
    root = module_launch.workdir / "www"
    static = root / "static"
    static.mkdir(parents=True)
    (static / "page.html").write_bytes(PAGE)
    (static / "big.html").write_bytes(BIG)
    (static / "small.html").write_bytes(b"<p>small</p>\n")
    (static / "pic.png").write_bytes(text(20_000, seed=3))
    (static / "app.css").write_bytes(text(5000, seed=4))
    (static / "app.css.gz").write_bytes(gzip.compress(SIBLING))
    flags = module_launch.workdir / "flags"
    flags.mkdir()
    http_port, uwsgi_port = free_port(), free_port()
    # threads: /hold waits without holding the app server's loop
    module_launch.serve(
        "tests.apps_compress:app", "--threads", "4", port=http_port, name="app-http"
    )
    module_launch.serve(
        "tests.apps_compress:app",
        "--threads",
        "4",
        "--uwsgi-socket",
        f"127.0.0.1:{uwsgi_port}",
        http=False,
        name="app-uwsgi",
        wait_for=("127.0.0.1", uwsgi_port),
    )
    config = _front_config(root, http_port, uwsgi_port, module_launch.workdir / "cache")
    front = module_launch.front(config)
    yield Site(front.port, root, flags, http_port)


def get(site: Site, path: str, accept: str | None = None, **fields: str) -> Answer:
    headers = dict(fields)
    if accept is not None:
        headers["Accept-Encoding"] = accept
    return ask(site.port, path, headers={k.replace("_", "-"): v for k, v in headers.items()})


# --- what comes out decompresses to what went in ------------------------------------------


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("name,original", [("page.html", PAGE), ("big.html", BIG)])
def test_static_files_decompress_to_the_original(
    site: Site, coding: str, name: str, original: bytes
) -> None:
    answer = get(site, f"/static/{name}", coding)
    assert answer.status == 200
    assert answer.field("content-encoding") == coding
    assert answer.field("vary") == "Accept-Encoding"
    assert sha(decode(coding, answer.body)) == sha(original)
    assert len(answer.body) < len(original) / 2
    etag = answer.field("etag")
    assert etag is not None and etag.startswith('W/"')
    assert answer.field("accept-ranges") is None
    if name == "big.html":  # streamed from the file: its compressed length is not known
        assert answer.field("transfer-encoding") == "chunked"
        assert answer.field("content-length") is None
    else:
        assert answer.field("content-length") == str(len(answer.body))


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("prefix", ["/h/", "/u/"])
def test_proxied_streams_decompress_to_the_original(site: Site, coding: str, prefix: str) -> None:
    size = 1_000_000
    answer = get(site, f"{prefix}stream?size={size}", coding)
    assert answer.status == 200
    assert answer.field("content-encoding") == coding
    assert answer.field("transfer-encoding") == "chunked"
    assert answer.field("content-length") is None
    assert sha(decode(coding, answer.body)) == sha(text(size))


@pytest.mark.parametrize("prefix", ["/h/", "/u/"])
def test_a_proxied_body_with_a_length_gets_the_compressed_length(site: Site, prefix: str) -> None:
    """Relayed as it comes (chunked) or, when it came whole, with the length it compressed
    to: never the upstream's own length."""
    answer = get(site, f"{prefix}fields?size=50000&etag=%22v1%22", "gzip")
    assert answer.field("content-encoding") == "gzip"
    assert answer.field("content-length") in (None, str(len(answer.body)))
    assert answer.field("etag") == 'W/"v1"'
    assert gzip.decompress(answer.body) == text(50000)


def test_a_proxied_stream_is_compressed_as_it_comes(site: Site) -> None:
    """The upstream sends 1000 bytes, then waits: the client decodes those 1000 bytes
    before the rest exists (nothing is held back until the end)."""
    flag = site.flags / "go"
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(
            f"GET /h/hold?size=200000&flag={flag} HTTP/1.1\r\nHost: site.test\r\n"
            "Accept-Encoding: gzip\r\n\r\n".encode()
        )
        inflater = zlib_stream()
        got = b""
        data = recv_until(sock, lambda d: b"\r\n\r\n" in d)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert b"Content-Encoding: gzip" in head
        assert b"Transfer-Encoding: chunked" in head
        buffer = rest
        while len(got) < 1000:  # the first chunks, decoded while the upstream holds
            while not _whole_chunk(buffer):
                more = sock.recv(65536)
                assert more, "closed before the first piece"
                buffer += more
            chunk, buffer = _take_chunk(buffer)
            got += inflater.decompress(chunk)
        assert got == text(200000)[:1000]
        flag.touch()
        while True:
            while not _whole_chunk(buffer):
                more = sock.recv(65536)
                assert more
                buffer += more
            chunk, buffer = _take_chunk(buffer)
            if not chunk:
                break
            got += inflater.decompress(chunk)
    assert sha(got) == sha(text(200000))


def test_many_pieces_that_arrive_together_are_flushed_together(site: Site) -> None:
    """3000 pieces of 40 bytes come in a few reads: the compressed stream is flushed once
    a read (a loop turn), not once a piece (a sync flush marker, 00 00 ff ff, each)."""
    size = 120_000
    answer = get(site, f"/h/tiny?size={size}", "gzip")
    assert answer.field("content-encoding") == "gzip"
    assert gzip.decompress(answer.body) == text(size)
    flushes = answer.body.count(b"\x00\x00\xff\xff")
    # a flush per piece gives one each (3002); a read per turn, far fewer, however the
    # app server's writes happen to be split on a busy machine
    assert flushes < size // 40 // 2, f"{flushes} flushes for {size // 40} pieces"


def zlib_stream() -> object:
    import zlib

    return zlib.decompressobj(31)


def _whole_chunk(buffer: bytes) -> bool:
    line, sep, rest = buffer.partition(b"\r\n")
    return bool(sep) and len(rest) >= int(line, 16) + 2


def _take_chunk(buffer: bytes) -> tuple[bytes, bytes]:
    line, _, rest = buffer.partition(b"\r\n")
    size = int(line, 16)
    return rest[:size], rest[size + 2 :]


def test_http10_clients_get_a_close_delimited_body(site: Site) -> None:
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(
            b"GET /h/stream?size=100000 HTTP/1.0\r\nHost: site.test\r\nAccept-Encoding: br\r\n\r\n"
        )
        data = b""
        while True:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Encoding: br" in head
    assert b"chunked" not in head.lower()
    assert b"content-length" not in head.lower()
    assert bytes(brotli.decompress(body)) == text(100000)


def test_the_cache_keeps_the_identity_body(site: Site) -> None:
    path = "/c/fields?size=40000&cache-control=max-age%3D60"
    first = get(site, path, "gzip")
    assert first.field("content-encoding") == "gzip"
    assert gzip.decompress(first.body) == text(40000)
    hit = get(site, path, "zstd")  # from the cache, compressed for this client
    assert hit.field("x-cache-status") in (None, "HIT")
    assert hit.field("content-encoding") == "zstd"
    assert decode("zstd", hit.body) == text(40000)
    plain = get(site, path)  # a client that takes no coding gets the stored identity body
    assert plain.field("content-encoding") is None
    assert plain.body == text(40000)


def test_a_higher_level_compresses_smaller(site: Site) -> None:
    level1 = get(site, "/h/fields?size=200000", "gzip")
    level9 = get(site, "/gz9/fields?size=200000", "gzip, br, zstd")
    assert level9.field("content-encoding") == "gzip"  # compress = ["gzip"] there
    assert gzip.decompress(level9.body) == gzip.decompress(level1.body) == text(200000)
    assert len(level9.body) < len(level1.body)


def test_curl_compressed(site: Site) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    for path, original in [("/static/page.html", PAGE), ("/u/stream?size=300000", text(300000))]:
        out = subprocess.run(
            [curl, "-sS", "--compressed", "-D", "-", "-H", "Host: site.test",
             f"http://127.0.0.1:{site.port}{path}"],
            capture_output=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"content-encoding:" in head.lower()
        assert sha(body) == sha(original)


# --- what must not be compressed ----------------------------------------------------------


def _plain(answer: Answer) -> None:
    assert answer.field("content-encoding") is None, answer.fields


def test_a_range_is_not_compressed(site: Site) -> None:
    answer = get(site, "/static/page.html", "gzip", Range="bytes=0-99")
    assert answer.status == 206
    _plain(answer)
    assert answer.body == PAGE[:100]


def test_head_is_not_compressed(site: Site) -> None:
    answer = ask(site.port, "/static/page.html", method="HEAD", headers={"Accept-Encoding": "gzip"})
    assert answer.status == 200
    _plain(answer)
    assert answer.field("content-length") == str(len(PAGE))


def test_204_and_304_are_not_compressed(site: Site) -> None:
    _plain(get(site, "/h/nocontent", "gzip"))
    etag = get(site, "/static/page.html").field("etag")
    assert etag is not None
    answer = get(site, "/static/page.html", "gzip", If_None_Match=etag)
    assert answer.status == 304
    _plain(answer)


def test_an_encoded_body_passes_as_it_is(site: Site) -> None:
    answer = get(site, "/h/fields?size=3000&content-encoding=identity", "gzip")
    assert answer.field("content-encoding") == "identity"
    assert answer.body == text(3000)


def test_no_transform_is_respected(site: Site) -> None:
    answer = get(site, "/u/fields?size=3000&cache-control=no-transform", "gzip")
    _plain(answer)
    assert answer.body == text(3000)


def test_short_bodies_and_other_types_are_not_compressed(site: Site) -> None:
    _plain(get(site, "/static/small.html", "gzip"))
    _plain(get(site, "/static/pic.png", "gzip"))
    _plain(get(site, "/h/fields?size=255", "gzip"))  # one under gzip_min_length
    assert get(site, "/h/fields?size=256", "gzip").field("content-encoding") == "gzip"
    answer = get(site, "/h/fields?size=3000&type=image/jpeg", "gzip")
    _plain(answer)
    assert answer.field("vary") is None  # no variant either


def test_a_location_can_turn_it_off(site: Site) -> None:
    answer = get(site, "/off/page.html", "gzip")
    _plain(answer)
    assert answer.field("vary") is None
    assert answer.body == PAGE


def test_the_precompressed_sibling_comes_first(site: Site) -> None:
    answer = get(site, "/static/app.css", "gzip")
    assert answer.field("content-encoding") == "gzip"
    assert gzip.decompress(answer.body) == SIBLING
    # a coding the sibling is not in: compressed on the fly from the file itself
    answer = get(site, "/static/app.css", "br")
    assert answer.field("content-encoding") == "br"
    assert bytes(brotli.decompress(answer.body)) == text(5000, seed=4)


# --- Accept-Encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept,chosen",
    [
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),  # the server's preference at equal q
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("gzip, br;q=0", "gzip"),
        ("gzip;q=0", None),
        ("GZIP;Q=1.0", "gzip"),
        ("*", "zstd"),
        ("*;q=0.1, zstd;q=0, br;q=0", "gzip"),
        ("identity", None),
        ("x-gzip", "gzip"),
        ("gzip;q=nonsense", None),
        ("", None),
    ],
)
def test_accept_encoding_choice(accept: str, chosen: str | None) -> None:
    assert choose_coding(accept.encode(), ("zstd", "br", "gzip")) == chosen


@pytest.mark.parametrize(
    "accept,coding",
    [("gzip;q=0.2, br;q=0.8", "br"), ("br;q=0, gzip", "gzip"), ("gzip;q=0", None)],
)
def test_q_values_at_the_front(site: Site, accept: str, coding: str | None) -> None:
    answer = get(site, "/h/fields?size=3000", accept)
    assert answer.field("content-encoding") == coding
    assert answer.field("vary") == "Accept-Encoding"  # the answer depended on it either way
    body = decode(coding, answer.body) if coding else answer.body
    assert body == text(3000)


def test_vary_is_merged_with_the_upstreams(site: Site) -> None:
    answer = get(site, "/h/fields?size=3000&vary=Cookie", "gzip")
    assert answer.all("vary") == ["Cookie, Accept-Encoding"]
    answer = get(site, "/h/fields?size=3000&vary=accept-encoding", "gzip")
    assert answer.all("vary") == ["accept-encoding"]


def test_no_accept_encoding_no_change(site: Site) -> None:
    answer = get(site, "/static/page.html")
    _plain(answer)
    assert answer.field("vary") == "Accept-Encoding"  # as nginx: the identity variant too
    assert answer.body == PAGE
    assert get(site, "/static/pic.png").field("vary") is None  # never compressed: no variant


# --- configuration -------------------------------------------------------------------------


def _config(**server: object) -> dict[str, object]:
    return {
        "listen": ["127.0.0.1:8080"],
        "server": [{"location": [{"path": "/", "root": "/srv"}], **server}],
    }


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"front\.server\[0\]\.gzip_comp_level.*1 to 9"):
        front_config_from_dict(_config(gzip=True, gzip_comp_level=10), "f.toml")
    with pytest.raises(ConfigError, match=r"front\.server\[0\]\.compress\[0\]"):
        front_config_from_dict(_config(gzip=True, compress=["deflate"]), "f.toml")
    with pytest.raises(ConfigError, match=r"front\.server\[0\]\.gzip_types\[0\]"):
        front_config_from_dict(_config(gzip=True, gzip_types=["html"]), "f.toml")


def test_location_keys_override_the_servers() -> None:
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:8080"],
            "server": [
                {
                    "gzip": True,
                    "gzip_types": ["text/css"],
                    "location": [
                        {"path": "/a/", "root": "/srv"},
                        {"path": "/b/", "root": "/srv", "gzip_comp_level": 6, "gzip_vary": False},
                        {"path": "/c/", "root": "/srv", "gzip": False},
                    ],
                }
            ],
        },
        "f.toml",
    )
    a, b, c = config.servers[0].locations
    assert a.compression is not None and a.compression.types == {"text/html", "text/css"}
    assert a.compression.level == 1 and a.compression.min_length == 256 and a.compression.vary
    assert b.compression is not None and b.compression.level == 6 and not b.compression.vary
    assert c.compression is None
    assert front_config_from_dict(_config(), "f.toml").servers[0].locations[0].compression is None


# --- side by side with nginx ---------------------------------------------------------------

NGINX_SERVER = """
server {
    listen 127.0.0.1:NGINX_PORT;
    types { text/html html; text/css css; image/png png; }
    gzip on;
    gzip_comp_level 1;
    gzip_types text/css application/javascript application/json image/svg+xml;
    gzip_min_length 256;
    gzip_vary on;
    location /static/ { root ROOT; }
    location /h/ { proxy_pass http://127.0.0.1:APP_PORT; }
}
"""


def test_decisions_match_nginx(site: Site, module_launch: Launcher) -> None:
    os.chmod(site.root, 0o755)
    os.chmod(site.root / "static", 0o755)
    for name in os.listdir(site.root / "static"):
        os.chmod(site.root / "static" / name, 0o644)
    nginx = start_nginx(
        module_launch,
        NGINX_SERVER.replace("ROOT", str(site.root)).replace("APP_PORT", str(site.app)),
    )
    cases: list[tuple[str, dict[str, str], str]] = [
        ("/static/page.html", {"Accept-Encoding": "gzip"}, "GET"),
        ("/static/page.html", {"Accept-Encoding": "gzip;q=0"}, "GET"),
        ("/static/page.html", {}, "GET"),
        ("/static/small.html", {"Accept-Encoding": "gzip"}, "GET"),
        ("/static/pic.png", {"Accept-Encoding": "gzip"}, "GET"),
        ("/static/big.html", {"Accept-Encoding": "gzip, deflate"}, "GET"),
        ("/static/app.css", {"Accept-Encoding": "deflate"}, "GET"),
        ("/h/stream?size=200000", {"Accept-Encoding": "gzip"}, "GET"),
        ("/h/fields?size=3000", {"Accept-Encoding": "gzip"}, "GET"),
        ("/h/fields?size=255", {"Accept-Encoding": "gzip"}, "GET"),
        ("/h/fields?size=3000&content-encoding=identity", {"Accept-Encoding": "gzip"}, "GET"),
        ("/h/fields?size=3000&type=image/jpeg", {"Accept-Encoding": "gzip"}, "GET"),
        ("/h/fields?size=3000&etag=%22v1%22", {"Accept-Encoding": "gzip"}, "GET"),
    ]
    # Two differ on purpose: nginx announces Content-Encoding: gzip for a HEAD, the front
    # answers it as it is, Content-Length and all (test_head_is_not_compressed); nginx
    # compresses a Cache-Control: no-transform response, which RFC 9110 forbids a proxy
    # (test_no_transform_is_respected).
    for path, headers, method in cases:
        ours = ask(site.port, path, method=method, headers={**headers})
        theirs = ask(nginx, path, host="localhost", method=method, headers={**headers})
        # gantry offers zstd and br too: compare which responses are compressed at all
        assert (ours.field("content-encoding") is None) == (
            theirs.field("content-encoding") is None
        ), (path, headers, method, ours.fields, theirs.fields)
        assert (ours.field("vary") is None) == (theirs.field("vary") is None), (path, headers)
        assert ours.status == theirs.status
        assert ours.field("etag") == theirs.field("etag") or path.startswith("/static/")
        if ours.field("content-encoding") == "gzip":
            assert gzip.decompress(ours.body) == gzip.decompress(theirs.body)
            if path.startswith("/static/"):  # both weaken the file's strong ETag
                assert (ours.field("etag") or "").startswith('W/"')
                assert (theirs.field("etag") or "").startswith('W/"')
