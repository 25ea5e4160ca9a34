"""Static-file decisions on real files: mapping, validators, ranges, encodings, try_files, fds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from gantry.config.front_model import Location
from gantry.front.static import (
    MAX_RANGES,
    FileAnswer,
    OpenFileCache,
    answer,
    content_type,
    multipart_parts,
    resolve,
    try_files,
)

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable by its neighbours
SIZE = len(DATA)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "static" / "sub").mkdir(parents=True)
    (root / "static" / "f.bin").write_bytes(DATA)
    (root / "static" / "page.html").write_text("<p>x</p>")
    (root / "static" / "sub" / "index.html").write_text("index")
    (root / "static" / ".env").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside")
    os.symlink(tmp_path / "outside.txt", root / "static" / "link.txt")
    os.symlink(root / "static" / "page.html", root / "static" / "inner.html")
    return root


@pytest.fixture
def loc(site: Path) -> Location:
    return Location("/static/", root=str(site))


@pytest.fixture
def fbin(site: Path) -> str:
    return str(site / "static" / "f.bin")


def _h(result: FileAnswer) -> dict[str, str]:
    return dict(result.headers)


def _get(loc: Location, path: str, **headers: str) -> FileAnswer:
    return answer(
        loc, path, "/static/f.bin", "GET", {k.replace("_", "-"): v for k, v in headers.items()}
    )


# --- resolve ----------------------------------------------------------------------------------


def test_root_and_alias_mapping(site: Path) -> None:
    static = site / "static"
    root = Location("/static/", root=str(site))
    assert resolve(root, "/static/", "/static/f.bin") == str(static / "f.bin")
    assert resolve(Location("/", root=str(site) + "/"), "/", "/static/f.bin") == str(
        static / "f.bin"
    )
    alias = Location("/files/", alias=str(static) + "/")
    assert resolve(alias, "/files/", "/files/f.bin") == str(static / "f.bin")
    assert resolve(alias, "/files/", "/files/sub/index.html") == str(static / "sub/index.html")
    assert resolve(alias, "/files/", "/files/") == str(static) + "/"
    # A prefix without slash maps onto the alias directory at a segment boundary only.
    bare = Location("/files", alias=str(static))
    assert resolve(bare, "/files", "/files/f.bin") == str(static / "f.bin")
    assert resolve(bare, "/files", "/files") == str(static)
    # root keeps the whole URL path, alias drops the location's prefix.
    assert resolve(Location("/files/", root=str(site)), "/files/", "/files/f.bin") == str(
        site / "files" / "f.bin"
    )


def test_alias_off_by_slash_hole_is_closed(site: Path) -> None:
    bare = Location("/files", alias=str(site / "static"))
    # nginx would map these to <alias>../outside.txt and <alias>X: outside the alias.
    assert resolve(bare, "/files", "/files../outside.txt") is None
    assert resolve(bare, "/files", "/filesX") is None
    even_when_allowed = Location(
        "/files", alias=str(site / "static"), follow_symlinks_outside_root=True
    )
    assert resolve(even_when_allowed, "/files", "/files../outside.txt") is None
    assert resolve(Location("/files/", alias=str(site)), "/files/", "/other/x") is None


def test_alias_in_regex_location_names_the_file(site: Path) -> None:
    robots = str(site / "static" / "page.html")
    regex = Location(r"^/robots\.txt$", modifier="~", alias=robots)
    assert resolve(regex, regex.path, "/robots.txt") == robots


@pytest.mark.parametrize(
    "path",
    [
        "/static/.env",
        "/static/sub/../../outside.txt",
        "/static/../outside.txt",
        "/static/..",
        "/static/a\0b",
        "/static/link.txt",
        "static/f.bin",
        "",
        "/static/\ud800",
        "/static/.git/config",
    ],
)
def test_refused_paths(loc: Location, path: str) -> None:
    assert resolve(loc, "/static/", path) is None


def test_hidden_files_only_when_enabled(site: Path) -> None:
    shown = Location("/static/", root=str(site), hidden_files=True)
    assert resolve(shown, "/static/", "/static/.env") == str(site / "static" / ".env")
    assert resolve(shown, "/static/", "/static/../outside.txt") is None  # ".." never


def test_symlinks(site: Path) -> None:
    loc = Location("/static/", root=str(site))
    assert resolve(loc, "/static/", "/static/inner.html") is not None  # stays inside
    allowed = Location("/static/", root=str(site), follow_symlinks_outside_root=True)
    assert resolve(allowed, "/static/", "/static/link.txt") == str(site / "static" / "link.txt")


def test_root_behind_a_symlink_is_resolved_per_request(tmp_path: Path) -> None:
    for release in ("v1", "v2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "a.txt").write_text(release)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    loc = Location("/", root=str(current))
    first = resolve(loc, "/", "/a.txt")
    assert first is not None and Path(first).read_text() == "v1"
    tmp = tmp_path / "next"
    tmp.symlink_to(tmp_path / "v2")
    os.replace(tmp, current)  # an atomic deploy
    second = resolve(loc, "/", "/a.txt")
    assert second is not None and Path(second).read_text() == "v2"


# --- a whole file -----------------------------------------------------------------------------


def test_full_file_headers(loc: Location, fbin: str) -> None:
    st = os.stat(fbin)
    result = answer(loc, fbin, "/static/f.bin", "GET", {})
    headers = _h(result)
    assert (result.status, result.path, result.ranges, result.body) == (200, fbin, [], b"")
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["ETag"] == f'"{int(st.st_mtime):x}-{SIZE:x}"'
    assert headers["Last-Modified"] == formatdate(int(st.st_mtime), usegmt=True)
    assert headers["Accept-Ranges"] == "bytes"
    assert "Cache-Control" not in headers and "Content-Encoding" not in headers


def test_head_has_the_same_headers(loc: Location, fbin: str) -> None:
    get = answer(loc, fbin, "/static/f.bin", "GET", {})
    head = answer(loc, fbin, "/static/f.bin", "HEAD", {"range": "bytes=0-1"})
    assert head.status == 200 and head.headers == get.headers and head.body == b""


def test_method_missing_and_special_files(loc: Location, site: Path, fbin: str) -> None:
    refused = answer(loc, fbin, "/static/f.bin", "POST", {})
    assert refused.status == 405 and _h(refused)["Allow"] == "GET, HEAD"
    assert answer(loc, str(site / "static" / "nope"), "/static/nope", "GET", {}).status == 404
    assert answer(loc, fbin + "/x", "/static/f.bin/x", "GET", {}).status == 404
    assert answer(loc, None, "/static/.env", "GET", {}).status == 404
    os.mkfifo(site / "static" / "pipe")
    assert answer(loc, str(site / "static" / "pipe"), "/static/pipe", "GET", {}).status == 403


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_directory_is_403(loc: Location, site: Path) -> None:
    locked = site / "static" / "locked"
    locked.mkdir()
    (locked / "a.txt").write_text("a")
    locked.chmod(0)
    try:
        assert answer(loc, str(locked / "a.txt"), "/static/locked/a.txt", "GET", {}).status == 403
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.html", "text/html; charset=utf-8"),
        ("A.HTML", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.svg", "image/svg+xml"),
        ("a.wasm", "application/wasm"),
        ("a.woff2", "font/woff2"),
        ("a.tar.gz", "application/gzip"),
        ("a.unknownext", "application/octet-stream"),
        ("Makefile", "application/octet-stream"),
        ("/d.html/.bashrc", "application/octet-stream"),
    ],
)
def test_mime_types(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_expires(loc: Location, site: Path, fbin: str) -> None:
    cached = Location("/static/", root=str(site), expires=60)
    headers = _h(answer(cached, fbin, "/static/f.bin", "GET", {}, now=1_000_000.0))
    assert headers["Cache-Control"] == "max-age=60"
    assert headers["Expires"] == formatdate(1_000_060, usegmt=True)
    never = Location("/static/", root=str(site), expires=-1)
    headers = _h(answer(never, fbin, "/static/f.bin", "GET", {}, now=1_000_000.0))
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Expires"] == formatdate(999_999, usegmt=True)
    etag = headers["ETag"]
    not_modified = answer(cached, fbin, "/static/f.bin", "GET", {"if-none-match": etag})
    assert _h(not_modified)["Cache-Control"] == "max-age=60"  # a 304 refreshes the cache


# --- conditional requests ---------------------------------------------------------------------


def test_if_none_match(loc: Location, fbin: str) -> None:
    etag = _h(_get(loc, fbin))["ETag"]
    for header in (etag, f"W/{etag}", f'"a", {etag}', f'"a",W/{etag} ', "*"):
        result = _get(loc, fbin, if_none_match=header)
        assert result.status == 304, header
    headers = _h(_get(loc, fbin, if_none_match=etag))
    assert headers["ETag"] == etag and "Last-Modified" in headers
    assert "Content-Length" not in headers and "Content-Type" not in headers
    for header in ('"other"', etag[:-2] + '"', "", "garbage"):
        assert _get(loc, fbin, if_none_match=header).status == 200, header


def test_if_modified_since(loc: Location, fbin: str) -> None:
    mtime = int(os.stat(fbin).st_mtime)
    same = formatdate(mtime, usegmt=True)
    assert _get(loc, fbin, if_modified_since=same).status == 304
    assert _get(loc, fbin, if_modified_since=formatdate(mtime + 60, usegmt=True)).status == 304
    assert _get(loc, fbin, if_modified_since=formatdate(mtime - 1, usegmt=True)).status == 200
    assert _get(loc, fbin, if_modified_since="not a date").status == 200
    # Obsolete formats still parse (RFC 850 and asctime).
    os.utime(fbin, (784111777, 784111777))
    assert _get(loc, fbin, if_modified_since="Sunday, 06-Nov-94 08:49:37 GMT").status == 304
    assert _get(loc, fbin, if_modified_since="Sun Nov  6 08:49:37 1994").status == 304
    # If-None-Match wins: a mismatching tag means 200 whatever the date says.
    assert _get(loc, fbin, if_none_match='"x"', if_modified_since=same).status == 200


def test_if_match_and_if_unmodified_since(loc: Location, fbin: str) -> None:
    etag = _h(_get(loc, fbin))["ETag"]
    mtime = int(os.stat(fbin).st_mtime)
    assert _get(loc, fbin, if_match='"other"').status == 412
    assert _get(loc, fbin, if_match=f"W/{etag}").status == 412  # strong comparison
    assert _get(loc, fbin, if_match=etag).status == 200
    assert _get(loc, fbin, if_match=f'"a", {etag}').status == 200
    assert _get(loc, fbin, if_match="*").status == 200
    earlier = formatdate(mtime - 10, usegmt=True)
    assert _get(loc, fbin, if_unmodified_since=earlier).status == 412
    assert _get(loc, fbin, if_unmodified_since=formatdate(mtime, usegmt=True)).status == 200
    assert _get(loc, fbin, if_unmodified_since="junk").status == 200
    # If-Match present: If-Unmodified-Since is not looked at.
    assert _get(loc, fbin, if_match=etag, if_unmodified_since=earlier).status == 200


# --- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, SIZE - 1)),
        ("bytes=-500", (SIZE - 500, SIZE - 1)),
        ("bytes=-5000", (0, SIZE - 1)),
        ("bytes=1000-99999", (1000, SIZE - 1)),
        ("Bytes = 7-7", (7, 7)),
        ("bytes=0-1,2-5,6-9", (0, 9)),  # adjacent ranges coalesce
        ("bytes=10-19,20-29", (10, 29)),
        ("bytes=5000-,0-0", (0, 0)),  # the unsatisfiable one is dropped
    ],
)
def test_single_range(loc: Location, fbin: str, spec: str, expected: tuple[int, int]) -> None:
    result = _get(loc, fbin, range=spec)
    start, end = expected
    assert result.status == 206 and result.ranges == [expected] and result.boundary is None
    assert _h(result)["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert _h(result)["Content-Length"] == str(end - start + 1)
    assert _h(result)["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=5-1",
        "items=0-1",
        "bytes=",
        "bytes=abc",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=-",
        "0-10",
        "bytes=0-1,1-5,3-9",  # overlapping ranges: the whole file (RFC 9110 14.2)
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1)),
    ],
)
def test_ignored_range_header_gives_200(loc: Location, fbin: str, spec: str) -> None:
    result = _get(loc, fbin, range=spec)
    assert result.status == 200 and result.ranges == [] and _h(result)["Content-Length"] == "1024"


def test_sixteen_ranges_are_still_served(loc: Location, fbin: str) -> None:
    spec = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES))
    assert len(_get(loc, fbin, range=spec).ranges) == MAX_RANGES


@pytest.mark.parametrize(
    "spec", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=2000-,3000-"]
)
def test_unsatisfiable_range_is_416(loc: Location, fbin: str, spec: str) -> None:
    result = _get(loc, fbin, range=spec)
    assert result.status == 416 and result.path is None
    assert _h(result)["Content-Range"] == f"bytes */{SIZE}"


def test_any_range_of_an_empty_file_is_416(loc: Location, site: Path) -> None:
    empty = site / "static" / "empty.txt"
    empty.write_bytes(b"")
    result = _get(loc, str(empty), range="bytes=0-")
    assert result.status == 416 and _h(result)["Content-Range"] == "bytes */0"
    assert _get(loc, str(empty)).status == 200


def _parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """An independent reading of a multipart/byteranges body (RFC 2046 delimiters)."""
    delimiter = b"\r\n--" + boundary.encode()
    assert body.startswith(delimiter) and body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body[: -len(delimiter + b"--\r\n")].split(delimiter)[1:]:
        assert chunk.startswith(b"\r\n")
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append((fields, data))
    return parts


def test_multiple_ranges_framed_as_multipart(loc: Location, fbin: str) -> None:
    result = _get(loc, fbin, range="bytes=900-909, 0-1,2-2,-5")
    assert result.status == 206 and result.boundary
    assert result.ranges == [(0, 2), (900, 909), (SIZE - 5, SIZE - 1)]
    headers = _h(result)
    assert headers["Content-Type"] == f"multipart/byteranges; boundary={result.boundary}"
    assert "Content-Range" not in headers
    pieces = multipart_parts(result, SIZE, "application/octet-stream")
    assert [span for _, span in pieces if span] == result.ranges
    assert all(piece == b"" for piece, span in pieces if span)
    fd = os.open(fbin, os.O_RDONLY)
    try:
        body = b"".join(
            os.pread(fd, span[1] - span[0] + 1, span[0]) if span else piece
            for piece, span in pieces
        )
    finally:
        os.close(fd)
    assert int(_h(result)["Content-Length"]) == len(body)
    assert [h for h in result.headers if h[0] == "Content-Length"] == [
        ("Content-Length", str(len(body)))
    ]
    parts = _parse_multipart(body, result.boundary)
    assert len(parts) == 3
    for (fields, data), (start, end) in zip(parts, result.ranges, strict=True):
        assert fields == {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end}/{SIZE}",
        }
        assert data == DATA[start : end + 1]


def test_multipart_parts_refuses_a_single_range_answer() -> None:
    with pytest.raises(ValueError):
        multipart_parts(FileAnswer(206, ranges=[(0, 1)]), 10, "text/plain")


def test_if_range(loc: Location, fbin: str) -> None:
    etag = _h(_get(loc, fbin))["ETag"]
    mtime = int(os.stat(fbin).st_mtime)
    date = formatdate(mtime, usegmt=True)

    def status(if_range: str) -> int:
        return _get(loc, fbin, range="bytes=0-1", if_range=if_range).status

    assert status(etag) == 206
    assert status(date) == 206
    assert status('"old"') == 200
    assert status(f"W/{etag}") == 200  # weak validators never qualify
    assert status(formatdate(mtime + 60, usegmt=True)) == 200  # the date must match exactly
    assert status(formatdate(mtime - 60, usegmt=True)) == 200
    assert status("rubbish") == 200


# --- directories ------------------------------------------------------------------------------


def test_directory_without_slash_redirects(loc: Location, site: Path) -> None:
    sub = str(site / "static" / "sub")
    moved = answer(loc, sub, "/static/sub", "GET", {})
    assert moved.status == 301 and _h(moved)["Location"] == "/static/sub/" and moved.path is None
    odd = site / "static" / "é x\r\nSet-Cookie: a=b"
    odd.mkdir()
    moved = answer(loc, str(odd), "/static/é x\r\nSet-Cookie: a=b", "GET", {})
    location = _h(moved)["Location"]
    assert location == "/static/%C3%A9%20x%0D%0ASet-Cookie%3A%20a%3Db/"
    location.encode("ascii")  # a header value the server can write


def test_index_files_in_order(site: Path) -> None:
    sub = site / "static" / "sub"
    (sub / "index.htm").write_text("htm")
    loc = Location("/static/", root=str(site), index=("missing.html", "index.htm", "index.html"))
    result = answer(loc, str(sub), "/static/sub/", "GET", {})
    assert result.status == 200 and result.path == str(sub / "index.htm")
    assert _h(result)["Content-Length"] == "3"
    assert _h(result)["Content-Type"] == "text/html; charset=utf-8"


def test_index_symlink_out_of_root_is_not_served(site: Path, tmp_path: Path) -> None:
    sub = site / "static" / "sub"
    (sub / "index.html").unlink()
    (sub / "index.html").symlink_to(tmp_path / "outside.txt")
    loc = Location("/static/", root=str(site))
    assert answer(loc, str(sub), "/static/sub/", "GET", {}).status == 403
    allowed = Location("/static/", root=str(site), follow_symlinks_outside_root=True)
    served = answer(allowed, str(sub), "/static/sub/", "GET", {})
    assert served.status == 200 and served.path == str(sub / "index.html")


def test_directory_without_index_or_autoindex_is_403(site: Path) -> None:
    loc = Location("/static/", root=str(site), index=())
    assert answer(loc, str(site / "static" / "sub"), "/static/sub/", "GET", {}).status == 403


def test_autoindex_lists_escaped_names(site: Path) -> None:
    static = site / "static"
    (static / "<b>&x.txt").write_text("x")
    (static / "zdir").mkdir()
    (static / "a b.txt").write_text("ab")
    os.close(os.open(os.path.join(os.fsencode(static), b"\xff.bin"), os.O_CREAT | os.O_WRONLY))
    loc = Location("/static/", root=str(site), autoindex=True, index=())
    page = answer(loc, str(static), "/static/", "GET", {})
    assert page.status == 200 and page.path is None
    assert _h(page)["Content-Type"] == "text/html; charset=utf-8"
    assert _h(page)["Content-Length"] == str(len(page.body))
    text = page.body.decode("utf-8")
    assert "<title>Index of /static/</title>" in text and '<a href="../">../</a>' in text
    assert '<a href="%3Cb%3E%26x.txt">&lt;b&gt;&amp;x.txt</a>' in text
    assert '<a href="a%20b.txt">a b.txt</a>' in text
    assert '<a href="%FF.bin">\ufffd.bin</a>' in text
    assert "<b>" not in text and ".env" not in text
    # Directories first, each with a slash; a file shows its size.
    assert text.index('href="sub/"') < text.index('href="zdir/"') < text.index('href="a%20b.txt"')
    assert any(
        line.startswith('<a href="f.bin">') and line.endswith(" 1024") for line in text.splitlines()
    )
    head = answer(loc, str(static), "/static/", "HEAD", {})
    assert head.body == b"" and _h(head)["Content-Length"] == str(len(page.body))


def test_autoindex_shows_hidden_files_only_when_enabled(site: Path) -> None:
    loc = Location("/static/", root=str(site), autoindex=True, index=(), hidden_files=True)
    assert b".env" in answer(loc, str(site / "static"), "/static/", "GET", {}).body


# --- try_files --------------------------------------------------------------------------------


def test_try_files(site: Path) -> None:
    static = site / "static"
    app = Location("/", root=str(static), try_files=("$uri", "$uri.html", "$uri/", "/page.html"))
    assert try_files(app, "/f.bin") == (str(static / "f.bin"), "/f.bin", None)
    assert try_files(app, "/page") == (str(static / "page.html"), "/page.html", None)
    assert try_files(app, "/sub") == (str(static / "sub") + "/", "/sub/", None)
    assert try_files(app, "/sub/") == (str(static / "sub") + "/", "/sub/", None)
    assert try_files(app, "/missing") == (str(static / "page.html"), "/page.html", None)
    # A candidate that resolve refuses is skipped, never served.
    assert try_files(app, "/.env") == (str(static / "page.html"), "/page.html", None)
    assert try_files(app, "/link.txt")[1] == "/page.html"
    # "$uri/" found: answer serves the directory's index rather than redirecting.
    fs_path, uri, _ = try_files(app, "/sub")
    served = answer(app, fs_path, uri, "GET", {})
    assert served.status == 200 and served.path == str(static / "sub" / "index.html")


def test_try_files_status_fallbacks(site: Path) -> None:
    static = str(site / "static")
    assert try_files(Location("/", root=static, try_files=("$uri", "=404")), "/x") == (
        None,
        "/x",
        404,
    )
    assert try_files(Location("/", root=static, try_files=("$uri", "=418")), "/x")[2] == 418
    assert try_files(Location("/", root=static, try_files=("$uri", "=abc")), "/x")[2] == 500
    assert try_files(Location("/", root=static, try_files=("$uri", "=999")), "/x")[2] == 500
    assert try_files(Location("/", root=static, try_files=("$uri", "=404")), "/f.bin")[2] is None
    # A directory is not a "$uri" file.
    assert try_files(Location("/", root=static, try_files=("$uri", "=404")), "/sub")[2] == 404


# --- precompressed siblings -------------------------------------------------------------------


@pytest.fixture
def compressed(site: Path) -> Path:
    page = site / "static" / "page.html"
    (site / "static" / "page.html.gz").write_bytes(b"gzipped")
    (site / "static" / "page.html.br").write_bytes(b"brotli!!")
    return page


def _page(loc: Location, page: Path, accept: str, **headers: str) -> FileAnswer:
    request = {k.replace("_", "-"): v for k, v in headers.items()}
    return answer(loc, str(page), "/static/page.html", "GET", request, accept)


@pytest.mark.parametrize(
    ("accept", "suffix", "coding"),
    [
        ("gzip, deflate, br", ".br", "br"),
        ("br;q=0.5, gzip", ".gz", "gzip"),
        ("gzip", ".gz", "gzip"),
        ("GZIP", ".gz", "gzip"),
        ("br;q=0, *", ".gz", "gzip"),
        ("*", ".br", "br"),
    ],
)
def test_precompressed_choice(
    loc: Location, compressed: Path, accept: str, suffix: str, coding: str
) -> None:
    result = _page(loc, compressed, accept)
    sibling = str(compressed) + suffix
    headers = _h(result)
    assert result.status == 200 and result.path == sibling
    assert headers["Content-Encoding"] == coding and headers["Vary"] == "Accept-Encoding"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Length"] == str(os.path.getsize(sibling))
    assert "Accept-Ranges" not in headers


@pytest.mark.parametrize("accept", ["", "identity", "deflate", "gzip;q=0, br;q=0", "brotli"])
def test_no_acceptable_coding_sends_the_file(loc: Location, compressed: Path, accept: str) -> None:
    result = _page(loc, compressed, accept)
    assert result.path == str(compressed) and "Content-Encoding" not in _h(result)


def test_stale_or_disabled_sibling_is_not_used(site: Path, compressed: Path) -> None:
    gz = str(compressed) + ".gz"
    os.remove(str(compressed) + ".br")
    old = os.stat(compressed).st_mtime - 100
    os.utime(gz, (old, old))
    loc = Location("/static/", root=str(site))
    assert _page(loc, compressed, "gzip").path == str(compressed)
    os.utime(gz, None)
    os.utime(compressed, (old, old))
    assert _page(loc, compressed, "gzip").path == gz
    off = Location("/static/", root=str(site), gzip_static=False)
    assert _page(off, compressed, "gzip").path == str(compressed)


def test_sibling_symlink_out_of_root_is_ignored(site: Path, tmp_path: Path) -> None:
    page = site / "static" / "page.html"
    (tmp_path / "evil.gz").write_bytes(b"evil")
    (site / "static" / "page.html.gz").symlink_to(tmp_path / "evil.gz")
    loc = Location("/static/", root=str(site))
    assert _page(loc, page, "gzip").path == str(page)


def test_precompressed_validators_and_ranges(loc: Location, compressed: Path) -> None:
    result = _page(loc, compressed, "br")
    etag = _h(result)["ETag"]
    assert etag == f'"{int(os.stat(str(compressed) + ".br").st_mtime):x}-8"'
    not_modified = _page(loc, compressed, "br", if_none_match=etag)
    assert not_modified.status == 304 and _h(not_modified)["Vary"] == "Accept-Encoding"
    whole = _page(loc, compressed, "br", range="bytes=0-1")
    assert whole.status == 200 and whole.ranges == [] and _h(whole)["Content-Length"] == "8"


# --- open file cache --------------------------------------------------------------------------


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> Iterator[OpenFileCache]:
    files = OpenFileCache(max_entries=3, valid_seconds=1.0, linger_seconds=10.0, clock=clock)
    try:
        yield files
    finally:
        files.close_all()


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_open_file_cache_reuses_and_revalidates(
    cache: OpenFileCache, clock: Clock, site: Path
) -> None:
    path = site / "static" / "page.html"
    fd, st = cache.open(str(path))
    assert os.pread(fd, 100, 0) == b"<p>x</p>"
    assert cache.open(str(path)) == (fd, st)
    path.write_text("changed content")  # in place: same inode
    clock.now = 0.5
    assert cache.open(str(path))[1].st_size == st.st_size  # trusted until valid_seconds pass
    clock.now = 1.5
    fd2, st2 = cache.open(str(path))
    assert fd2 == fd and st2.st_size == len("changed content")
    assert os.pread(fd2, 100, 0) == b"changed content"


def test_open_file_cache_replaced_file_gets_a_new_descriptor(
    cache: OpenFileCache, clock: Clock, site: Path
) -> None:
    path = site / "static" / "page.html"
    old_fd, _ = cache.open(str(path))
    (site / "new.html").write_text("new version")
    os.replace(site / "new.html", path)
    clock.now = 2.0
    new_fd, st = cache.open(str(path))
    assert new_fd != old_fd and st.st_size == len("new version")
    assert os.pread(new_fd, 100, 0) == b"new version"
    # The old descriptor lingers for responses still reading it, then is closed.
    assert os.pread(old_fd, 100, 0) == b"<p>x</p>"
    clock.now = 12.5
    assert cache.open(str(path))[0] == new_fd
    assert _closed(old_fd)


def test_open_file_cache_is_bounded_lru(clock: Clock, site: Path) -> None:
    cache = OpenFileCache(max_entries=2, valid_seconds=100.0, linger_seconds=0.0, clock=clock)
    try:
        static = site / "static"
        a = cache.open(str(static / "f.bin"))[0]
        b = cache.open(str(static / "page.html"))[0]
        assert cache.open(str(static / "f.bin"))[0] == a  # a is now the most recent
        cache.open(str(static / "sub" / "index.html"))
        assert len(cache) == 2 and _closed(b) and not _closed(a)
    finally:
        cache.close_all()
    assert _closed(a) and len(cache) == 0


def test_open_file_cache_pins_until_release(clock: Clock, site: Path) -> None:
    cache = OpenFileCache(max_entries=1, valid_seconds=100.0, linger_seconds=0.0, clock=clock)
    try:
        static = site / "static"
        pinned, _ = cache.acquire(str(static / "f.bin"))
        cache.open(str(static / "page.html"))  # evicts f.bin while a response reads it
        assert os.pread(pinned, 4, 0) == DATA[:4]
        cache.release(pinned)
        cache.open(str(static / "page.html"))
        assert _closed(pinned)
    finally:
        cache.close_all()


def test_open_file_cache_deleted_and_missing_files(
    cache: OpenFileCache, clock: Clock, site: Path
) -> None:
    path = site / "static" / "page.html"
    cache.open(str(path))
    path.unlink()
    clock.now = 5.0
    with pytest.raises(FileNotFoundError):
        cache.open(str(path))
    assert len(cache) == 0
    with pytest.raises(FileNotFoundError):
        cache.open(str(site / "nope"))
