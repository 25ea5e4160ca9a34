"""Static files as nginx serves them: safe path mapping, validators, ranges (sans-I/O)."""

from __future__ import annotations

import html
import mimetypes
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime

from gantry.front.model import Location

__all__ = [
    "FileAnswer",
    "OpenFileCache",
    "answer",
    "content_type",
    "multipart_parts",
    "resolve",
    "try_files",
]

MAX_RANGES = 16


@dataclass
class FileAnswer:
    """What to send for one static request."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    path: str | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    boundary: str | None = None
    body: bytes = b""


def resolve(location: Location, matched_prefix: str, path: str) -> str | None:
    """Map a normalized URL path to a file path under root/alias; None when it must be refused."""
    if "\0" in path or not path.startswith("/"):
        return None
    segments = [s for s in path.split("/") if s]
    if ".." in segments:
        return None
    if not location.hidden_files and any(s.startswith(".") for s in segments):
        return None
    if location.alias is not None:
        base = location.alias
        rest = path[len(matched_prefix) :] if path.startswith(matched_prefix) else path
        candidate = os.path.join(base, rest.lstrip("/"))
    elif location.root is not None:
        base = location.root
        candidate = os.path.join(base, path.lstrip("/"))
    else:
        return None
    if not location.follow_symlinks_outside_root:
        real_base = os.path.realpath(base)
        real = os.path.realpath(candidate)
        if real != real_base and not real.startswith(real_base.rstrip("/") + "/"):
            return None
    return candidate


def try_files(location: Location, url_path: str) -> tuple[str | None, str, int | None]:
    """nginx's try_files: the first candidate that exists, else the last entry.

    Returns (file path, the URL path it stands for, status). The last entry is
    "=CODE" (answer that status) or a path served from the same location (the
    usual "/index.html" of a single-page app; nginx would re-route it, Gantry
    serves it from this location).
    """
    *candidates, fallback = location.try_files
    for candidate in candidates:
        uri = candidate.replace("$uri", url_path)
        want_dir = uri.endswith("/")
        fs_path = resolve(location, location.path, uri)
        if fs_path is None:
            continue
        if os.path.isdir(fs_path) if want_dir else os.path.isfile(fs_path):
            return fs_path, uri, None
    if fallback.startswith("="):
        try:
            return None, url_path, int(fallback[1:])
        except ValueError:
            return None, url_path, 500
    uri = fallback.replace("$uri", url_path)
    return resolve(location, location.path, uri), uri, None


def _etag(st: os.stat_result) -> str:
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def content_type(path: str) -> str:
    """The Content-Type nginx would send for ``path`` (text gets charset=utf-8)."""
    kind, _ = mimetypes.guess_type(path)
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return f"{kind}; charset=utf-8"
    return kind


def _etag_matches(header: str, etag: str, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if weak:
            if candidate.removeprefix("W/") == etag.removeprefix("W/"):
                return True
        elif candidate == etag:
            return True
    return False


def _http_date(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges, coalesced; [] when none is satisfiable; None to ignore the header."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    ranges = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        try:
            if first == "":
                suffix = int(last)
                if suffix <= 0:
                    continue
                start, end = max(0, size - suffix), size - 1
            else:
                start = int(first)
                if last and int(last) < start:
                    return None  # not a valid range-spec: the header is ignored
                end = min(int(last) if last else size - 1, size - 1)
        except ValueError:
            return None
        if start < size and start <= end:
            ranges.append((start, end))
    if len(ranges) > MAX_RANGES:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _slash(directory: str, name: str) -> str:
    return "/" if os.path.isdir(os.path.join(directory, name)) else ""


def _directory(location: Location, fs_path: str, url_path: str) -> FileAnswer | str:
    if not url_path.endswith("/"):
        return FileAnswer(301, [("Location", url_path + "/"), ("Content-Length", "0")])
    for name in location.index:
        candidate = os.path.join(fs_path, name)
        if os.path.isfile(candidate):
            return candidate
    if not location.autoindex:
        return FileAnswer(403)
    names = sorted(n for n in os.listdir(fs_path) if location.hidden_files or not n.startswith("."))
    items = "".join(
        f'<a href="{html.escape(n, quote=True)}{_slash(fs_path, n)}">{html.escape(n)}</a>\n'
        for n in names
    )
    body = (
        f"<html><body><h1>Index of {html.escape(url_path)}</h1><pre>\n{items}</pre></body></html>\n"
    )
    data = body.encode()
    return FileAnswer(
        200,
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))],
        body=data,
    )


def answer(
    location: Location,
    fs_path: str | None,
    url_path: str,
    method: str,
    request_headers: Mapping[str, str],
    accept_encoding: str = "",
) -> FileAnswer:
    """Decide the response to a GET/HEAD of ``fs_path`` (headers keyed in lower case)."""
    if method not in ("GET", "HEAD"):
        return FileAnswer(405, [("Allow", "GET, HEAD"), ("Content-Length", "0")])
    if fs_path is None:
        return FileAnswer(404)
    try:
        st = os.stat(fs_path)
    except OSError:
        return FileAnswer(404)
    if stat.S_ISDIR(st.st_mode):
        found = _directory(location, fs_path, url_path)
        if isinstance(found, FileAnswer):
            return found
        fs_path = found
        st = os.stat(fs_path)
    if not stat.S_ISREG(st.st_mode):
        return FileAnswer(403)
    size = st.st_size
    etag = _etag(st)
    headers = [
        ("Content-Type", content_type(fs_path)),
        ("ETag", etag),
        ("Last-Modified", formatdate(st.st_mtime, usegmt=True)),
        ("Accept-Ranges", "bytes"),
    ]
    if location.expires is not None:
        headers.append(("Cache-Control", f"max-age={location.expires}"))
        headers.append(("Expires", formatdate(time.time() + location.expires, usegmt=True)))
    if_match = request_headers.get("if-match")
    if if_match is not None and not _etag_matches(if_match, etag, weak=False):
        return FileAnswer(412)
    unmodified = request_headers.get("if-unmodified-since")
    if if_match is None and unmodified is not None:
        limit = _http_date(unmodified)
        if limit is not None and int(st.st_mtime) > limit:
            return FileAnswer(412)
    none_match = request_headers.get("if-none-match")
    if none_match is not None:
        if _etag_matches(none_match, etag, weak=True):
            return FileAnswer(304, [h for h in headers if h[0] != "Accept-Ranges"])
    else:
        since = request_headers.get("if-modified-since")
        limit = _http_date(since) if since else None
        if limit is not None and int(st.st_mtime) <= limit:
            return FileAnswer(304, [h for h in headers if h[0] != "Accept-Ranges"])
    if location.gzip_static:
        for token, suffix in (("br", ".br"), ("gzip", ".gz")):
            if token in accept_encoding.lower():
                sibling = fs_path + suffix
                try:
                    sst = os.stat(sibling)
                except OSError:
                    continue
                if stat.S_ISREG(sst.st_mode) and sst.st_mtime >= st.st_mtime:
                    headers = [h for h in headers if h[0] not in ("Accept-Ranges", "ETag")]
                    headers += [
                        ("Content-Encoding", token),
                        ("Vary", "Accept-Encoding"),
                        ("ETag", _etag(sst)),
                        ("Content-Length", str(sst.st_size)),
                    ]
                    return FileAnswer(200, headers, sibling)
    range_header = request_headers.get("range")
    if range_header is not None and method == "GET":
        if_range = request_headers.get("if-range")
        honoured = True
        if if_range is not None:
            if if_range.startswith('"') or if_range.startswith("W/"):
                honoured = if_range == etag
            else:
                when = _http_date(if_range)
                honoured = when is not None and int(st.st_mtime) <= when
        ranges = _parse_ranges(range_header, size) if honoured else None
        if ranges == []:
            return FileAnswer(416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
        if ranges:
            if len(ranges) == 1:
                start, end = ranges[0]
                headers += [
                    ("Content-Range", f"bytes {start}-{end}/{size}"),
                    ("Content-Length", str(end - start + 1)),
                ]
                return FileAnswer(206, headers, fs_path, ranges)
            boundary = secrets.token_hex(12)
            part_type = headers[0][1]
            headers = [h for h in headers if h[0] != "Content-Type"]
            headers.insert(0, ("Content-Type", f"multipart/byteranges; boundary={boundary}"))
            result = FileAnswer(206, headers, fs_path, ranges, boundary)
            multipart_parts(result, size, part_type)
            return result
    headers.append(("Content-Length", str(size)))
    return FileAnswer(200, headers, fs_path)


def multipart_parts(
    result: FileAnswer, size: int, content_type: str
) -> list[tuple[bytes, tuple[int, int] | None]]:
    """The pieces of a multipart/byteranges body; also sets its Content-Length."""
    assert result.boundary is not None
    pieces: list[tuple[bytes, tuple[int, int] | None]] = []
    length = 0
    for start, end in result.ranges:
        framing = (
            f"\r\n--{result.boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n"
        ).encode("latin-1")
        pieces.append((framing, None))
        pieces.append((b"", (start, end)))
        length += len(framing) + end - start + 1
    closing = f"\r\n--{result.boundary}--\r\n".encode("latin-1")
    pieces.append((closing, None))
    length += len(closing)
    result.headers = [h for h in result.headers if h[0] != "Content-Length"]
    result.headers.append(("Content-Length", str(length)))
    return pieces


class OpenFileCache:
    """nginx's open_file_cache: hot files' descriptors and stat, revalidated every ``valid`` s."""

    def __init__(self, max_entries: int = 1000, valid_seconds: float = 1.0) -> None:
        self.max_entries = max_entries
        self.valid = valid_seconds
        self._entries: dict[str, tuple[int, os.stat_result, float]] = {}

    def open(self, path: str) -> tuple[int, os.stat_result]:
        """A descriptor (owned by the cache: do not close it) and its stat."""
        now = time.monotonic()
        entry = self._entries.get(path)
        if entry is not None:
            fd, st, checked = entry
            if now - checked < self.valid:
                return fd, st
            try:
                current = os.stat(path)
            except OSError:
                current = None
            if current is not None and (current.st_ino, current.st_mtime_ns, current.st_size) == (
                st.st_ino,
                st.st_mtime_ns,
                st.st_size,
            ):
                self._entries[path] = (fd, st, now)
                return fd, st
            os.close(fd)
            del self._entries[path]
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if len(self._entries) >= self.max_entries:
            old_path = next(iter(self._entries))
            os.close(self._entries.pop(old_path)[0])
        self._entries[path] = (fd, st, now)
        return fd, st

    def close_all(self) -> None:
        """Close every cached descriptor."""
        for fd, _, _ in self._entries.values():
            os.close(fd)
        self._entries.clear()
