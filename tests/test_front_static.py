"""Static-file decisions on real files: mapping, validators, ranges, encodings, try_files."""

from __future__ import annotations

import os
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from gantry.front.model import Location
from gantry.front.static import OpenFileCache, answer, multipart_parts, resolve, try_files

DATA = bytes(range(256)) * 4


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
    return root


def _h(result: object) -> dict[str, str]:
    return dict(result.headers)  # type: ignore[attr-defined]


def test_root_and_alias_mapping(site: Path) -> None:
    root = Location("/static/", root=str(site))
    alias = Location("/files/", alias=str(site / "static") + "/")
    assert resolve(root, "/static/", "/static/f.bin") == str(site / "static" / "f.bin")
    assert resolve(alias, "/files/", "/files/f.bin") == str(site / "static" / "f.bin")


@pytest.mark.parametrize(
    "path", ["/static/.env", "/static/../outside.txt", "/static/a\0b", "/static/link.txt"]
)
def test_refused_paths(site: Path, path: str) -> None:
    assert resolve(Location("/static/", root=str(site)), "/static/", path) is None


def test_symlink_out_of_root_only_when_allowed(site: Path) -> None:
    allowed = Location("/static/", root=str(site), follow_symlinks_outside_root=True)
    assert resolve(allowed, "/static/", "/static/link.txt") is not None


def test_full_file_headers(site: Path) -> None:
    loc = Location("/static/", root=str(site), expires=60)
    result = answer(loc, str(site / "static" / "f.bin"), "/static/f.bin", "GET", {})
    headers = _h(result)
    assert result.status == 200 and headers["Content-Length"] == str(len(DATA))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["ETag"].startswith('"') and headers["Cache-Control"] == "max-age=60"
    page = answer(loc, str(site / "static" / "page.html"), "/static/page.html", "HEAD", {})
    assert _h(page)["Content-Type"] == "text/html; charset=utf-8"


def test_conditionals(site: Path) -> None:
    loc = Location("/static/", root=str(site))
    path = str(site / "static" / "f.bin")
    etag = _h(answer(loc, path, "/static/f.bin", "GET", {}))["ETag"]
    assert answer(loc, path, "/x", "GET", {"if-none-match": etag}).status == 304
    assert answer(loc, path, "/x", "GET", {"if-none-match": f"W/{etag}"}).status == 304
    assert answer(loc, path, "/x", "GET", {"if-none-match": '"other"'}).status == 200
    later = formatdate(time.time() + 3600, usegmt=True)
    assert answer(loc, path, "/x", "GET", {"if-modified-since": later}).status == 304
    assert answer(loc, path, "/x", "GET", {"if-match": '"other"'}).status == 412
    assert answer(loc, path, "/x", "POST", {}).status == 405


def test_ranges(site: Path) -> None:
    loc = Location("/static/", root=str(site))
    path = str(site / "static" / "f.bin")
    one = answer(loc, path, "/x", "GET", {"range": "bytes=-10"})
    assert one.status == 206 and one.ranges == [(len(DATA) - 10, len(DATA) - 1)]
    assert answer(loc, path, "/x", "GET", {"range": "bytes=9999-"}).status == 416
    etag = _h(one)["ETag"]
    stale = answer(loc, path, "/x", "GET", {"range": "bytes=0-1", "if-range": '"old"'})
    assert stale.status == 200
    assert answer(loc, path, "/x", "GET", {"range": "bytes=0-1", "if-range": etag}).status == 206
    multi = answer(loc, path, "/x", "GET", {"range": "bytes=0-1,10-11,1-2"})
    assert multi.status == 206 and multi.ranges == [(0, 2), (10, 11)] and multi.boundary
    pieces = multipart_parts(multi, len(DATA), "application/octet-stream")
    body = b"".join(DATA[s[0] : s[1] + 1] if s else p for p, s in pieces)
    assert int(_h(multi)["Content-Length"]) == len(body)
    assert body.count(multi.boundary.encode()) == 3 and DATA[0:3] in body


def test_directories(site: Path) -> None:
    loc = Location("/static/", root=str(site))
    sub = str(site / "static" / "sub")
    assert answer(loc, sub, "/static/sub", "GET", {}).status == 301
    assert answer(loc, sub, "/static/sub/", "GET", {}).path == sub + "/index.html"
    listing = Location("/static/", root=str(site), autoindex=True, index=())
    page = answer(listing, str(site / "static"), "/static/", "GET", {})
    assert page.status == 200 and b"f.bin" in page.body and b".env" not in page.body
    assert (
        answer(Location("/", root=str(site), index=()), sub, "/static/sub/", "GET", {}).status
        == 403
    )


def test_precompressed_sibling(site: Path) -> None:
    (site / "static" / "page.html.gz").write_bytes(b"gz")
    loc = Location("/static/", root=str(site))
    result = answer(loc, str(site / "static" / "page.html"), "/x", "GET", {}, "gzip, deflate")
    assert result.path and result.path.endswith(".gz")
    assert _h(result)["Content-Encoding"] == "gzip" and _h(result)["Vary"] == "Accept-Encoding"


def test_try_files(site: Path) -> None:
    app = Location("/", root=str(site / "static"), try_files=("$uri", "$uri/", "/page.html"))
    assert try_files(app, "/f.bin")[0] == str(site / "static" / "f.bin")
    assert try_files(app, "/sub/")[1] == "/sub/"
    assert try_files(app, "/missing")[0] == str(site / "static" / "page.html")
    strict = Location("/", root=str(site / "static"), try_files=("$uri", "=404"))
    assert try_files(strict, "/missing")[2] == 404


def test_open_file_cache_revalidates(site: Path) -> None:
    cache = OpenFileCache(valid_seconds=0.0)
    path = str(site / "static" / "page.html")
    fd, st = cache.open(path)
    assert cache.open(path)[0] == fd
    time.sleep(0.01)
    Path(path).write_text("changed content")
    fd2, st2 = cache.open(path)
    assert st2.st_size != st.st_size and os.pread(fd2, 100, 0) == b"changed content"
    cache.close_all()
