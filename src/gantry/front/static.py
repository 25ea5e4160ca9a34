"""Static files as nginx serves them: safe path mapping, validators, ranges (sans-I/O).

``resolve`` maps a URL path to a file path, ``answer`` decides status and headers
from the file's stat and the request's conditional headers; the server sends the
bytes. Only ``OpenFileCache`` holds resources (descriptors).
"""

from __future__ import annotations

import calendar
import html
import mimetypes
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_tz
from urllib.parse import quote

from gantry.config.front_model import Location

__all__ = [
    "FileAnswer",
    "MAX_RANGES",
    "OpenFileCache",
    "answer",
    "autoindex_page",
    "content_type",
    "multipart_parts",
    "parse_ranges",
    "resolve",
    "try_files",
    "expand_fallback",
]

#: More ranges than this and the Range header is ignored (nginx's max_ranges): many tiny
#: ranges cost far more to frame than to send the whole file.
MAX_RANGES = 16


@dataclass
class FileAnswer:
    """What to send for one static request."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    path: str | None = None  # the file whose bytes make the body
    ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive; [] = whole file
    boundary: str | None = None  # multipart/byteranges when set
    body: bytes = b""  # a generated body (autoindex), sent instead of a file
    #: why the file could not be opened, for the error log (nginx's 'open() "..." failed')
    error: str | None = None


# --- mapping URL paths to files ---------------------------------------------------------------


def resolve(location: Location, matched_prefix: str, path: str) -> str | None:
    """Map a normalized URL path to a file path under root/alias; None when it must be refused."""
    if not path.startswith("/") or "\0" in path:
        return None
    segments = path.split("/")
    if ".." in segments:
        return None
    if not location.hidden_files and any(s.startswith(".") for s in segments):
        return None
    if location.alias is not None:
        base = location.alias
        if location.modifier in ("~", "~*"):
            # nginx: without captures, an alias in a regex location names the file itself.
            candidate = base
        else:
            if not path.startswith(matched_prefix):
                return None
            rest = path[len(matched_prefix) :]
            if rest and not rest.startswith("/") and not matched_prefix.endswith("/"):
                # "/files" + "../x" or "/files" + "X": nginx would glue the rest onto the
                # alias and step out of it (the off-by-slash alias hole). Refuse instead.
                return None
            candidate = base.rstrip("/") + "/" + rest.lstrip("/") if rest else base
    elif location.root is not None:
        base = location.root
        candidate = base.rstrip("/") + path
    else:
        return None
    if not location.follow_symlinks_outside_root and not _inside(base, candidate):
        return None
    return candidate


def _inside(base: str, candidate: str) -> bool:
    # Resolved per request, not cached: a deploy swaps the root symlink under a running server.
    prefix = base.rstrip("/")
    if candidate.startswith(prefix + "/"):
        # The common case, one lstat a segment below the base: with no symlink among
        # them the kernel resolves the path under the base, whatever the base itself
        # points to. A path through a symlink is resolved whole (below).
        path = prefix
        through_link = False
        for segment in candidate[len(prefix) + 1 :].split("/"):
            if not segment or segment == ".":
                continue
            path += "/" + segment
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                # nothing there to step out through: the open or stat that follows fails
                return True
            except ValueError:  # NUL, unencodable surrogates
                return False
            if stat.S_ISLNK(mode):
                through_link = True
                break
        if not through_link:
            return True
    try:
        real_base = os.path.realpath(base)
        real = os.path.realpath(candidate)
    except (OSError, ValueError):  # ValueError: NUL, unencodable surrogates
        return False
    return real == real_base or real.startswith(real_base.rstrip("/") + "/")


def _base(location: Location) -> str:
    return location.alias if location.alias is not None else location.root or "/"


def try_files(
    location: Location, url_path: str, script_name: str = ""
) -> tuple[str | None, str, int | None]:
    """nginx's try_files: the first candidate that exists, else the last entry.

    Returns (file path, the URL path it stands for, status). "$uri" is the request
    path; a candidate ending in "/" must be a directory, any other a file. The last
    entry is "=CODE" (answer that status) or a URL path served from this location
    (nginx would re-route it; Gantry serves it here: the usual single-page-app
    "/index.html"). "$fastcgi_script_name" is ``script_name`` (else the path).
    """
    if not location.try_files:
        return resolve(location, location.path, url_path), url_path, None
    *candidates, fallback = location.try_files
    for candidate in candidates:
        if "$fastcgi_script_name" in candidate:
            candidate = candidate.replace("$fastcgi_script_name", script_name or url_path)
        uri = candidate.replace("$uri", url_path).partition("?")[0]
        want_dir = uri.endswith("/")
        if want_dir:
            uri = uri.rstrip("/") + "/"  # "$uri/" of "/a/" is "/a/", not "/a//"
        fs_path = resolve(location, location.path, uri)
        if fs_path is None:
            continue
        try:
            mode = os.stat(fs_path).st_mode
        except (OSError, ValueError):
            continue
        if stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode):
            return fs_path, uri, None
    if fallback.startswith("="):
        code = fallback[1:]
        status = int(code) if code.isascii() and code.isdigit() else 500
        return None, url_path, status if 100 <= status <= 599 else 500
    uri = expand_fallback(fallback, url_path, "")[0]
    return resolve(location, location.path, uri), uri, None


def expand_fallback(fallback: str, url_path: str, query: str) -> tuple[str, str]:
    """try_files' last entry as (path, args): $uri, $is_args ("?" when there are args)
    and $args (the request's query) filled in."""
    text = fallback.replace("$uri", url_path).replace("$is_args", "?" if query else "")
    path, _, args = text.replace("$args", query).partition("?")
    return path, args


# --- types and validators ---------------------------------------------------------------------

# Beyond /etc/mime.types (absent in slim containers) for the types a site needs most.
_FALLBACK_TYPES = {
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".avif": "image/avif",
}
_CHARSET_TYPES = frozenset(
    {"application/javascript", "application/json", "application/xml", "application/rss+xml"}
)


def _with_charset(kind: str) -> str:
    if kind.startswith("text/") or kind in _CHARSET_TYPES or kind.endswith("+json"):
        return f"{kind}; charset=utf-8"
    return kind


def _build_types() -> dict[str, str]:
    mimetypes.init()
    table = dict(_FALLBACK_TYPES)
    table.update(mimetypes.common_types)
    table.update(mimetypes.types_map)
    return {ext.lower(): _with_charset(kind) for ext, kind in table.items()}


# Built once at import: guess_type parses its argument as a URL on every call.
_TYPES = _build_types()


def content_type(path: str) -> str:
    """The Content-Type nginx would send for ``path`` (text gets charset=utf-8)."""
    ext = os.path.splitext(path)[1].lower()
    return _TYPES.get(ext, "application/octet-stream")


def _etag(st: os.stat_result) -> str:
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


_ENTITY_TAG = re.compile(r'(W/)?"[^"]*"')


def _etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an If-Match/If-None-Match list holds ``etag`` (weak or strong comparison)."""
    if header.strip() == "*":
        return True
    for tag in _ENTITY_TAG.finditer(header):
        if tag.group(1):  # a weak tag never matches strongly
            if weak and tag.group(0)[2:] == etag:
                return True
        elif tag.group(0) == etag:
            return True
    return False


def _http_date(text: str) -> int | None:
    """Seconds since the epoch of an HTTP date (all three formats), None if not a date."""
    try:
        parsed = parsedate_tz(text)
        if parsed is None:
            return None
        return calendar.timegm(parsed[:6] + (0, 0, 0)) - (parsed[9] or 0)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _cache_headers(expires: int | None, now: float) -> list[tuple[str, str]]:
    if expires is None:
        return []
    # nginx: a negative "expires" means "do not cache", with an Expires in the past.
    control = "no-cache" if expires < 0 else f"max-age={expires}"
    return [("Cache-Control", control), ("Expires", formatdate(now + expires, usegmt=True))]


def _preconditions(headers: Mapping[str, str], etag: str, mtime: int) -> int | None:
    """412 or 304 per RFC 9110 section 13.2.2 (GET/HEAD), None to go on."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _etag_matches(if_match, etag, weak=False):
            return 412
    else:
        unmodified = headers.get("if-unmodified-since")
        limit = _http_date(unmodified) if unmodified is not None else None
        if limit is not None and mtime > limit:
            return 412
    none_match = headers.get("if-none-match")
    if none_match is not None:
        return 304 if _etag_matches(none_match, etag, weak=True) else None
    since = headers.get("if-modified-since")
    limit = _http_date(since) if since is not None else None
    if limit is not None and mtime <= limit:
        return 304
    return None


def _if_range_holds(value: str, etag: str, mtime: int) -> bool:
    value = value.strip()
    if value.startswith("W/"):
        return False  # If-Range needs a strong validator
    if value.startswith('"'):
        return value == etag
    # A date must be exactly the Last-Modified sent, not merely later.
    return _http_date(value) == mtime


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable byte ranges, sorted, adjacent ones joined; [] if none; None to ignore the
    header (unparsable, more than MAX_RANGES, or overlapping ranges)."""
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [part.strip() for part in spec.split(",") if part.strip()]
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for part in specs:
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not _digits(first)) or (last and not _digits(last)):
            return None
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix == 0 or size == 0:
                continue  # the empty suffix selects nothing
            ranges.append((max(0, size - suffix), size - 1))
            continue
        start = int(first)
        if last and int(last) < start:
            return None  # an invalid range-spec: the whole header is ignored
        if start >= size:
            continue
        ranges.append((start, min(int(last), size - 1) if last else size - 1))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            # Overlapping ranges: RFC 9110 14.2 lets a server ignore the set (it would ask
            # for the same bytes again and again); the whole file goes instead.
            return None
        if merged and start == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], end)  # adjacent: one part
        else:
            merged.append((start, end))
    return merged


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # int() would also take "+1", "1_0", "١"


# --- precompressed siblings -------------------------------------------------------------------

_SIBLINGS = {"br": ".br", "gzip": ".gz"}


def _codings(accept_encoding: str) -> list[str]:
    """The sibling codings the client takes, best first (br before gzip at equal q)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name.strip()] = q
    star = weights.get("*", 0.0)
    chosen = [(weights.get(c, star), i, c) for i, c in enumerate(_SIBLINGS)]
    return [c for q, _, c in sorted(chosen, key=lambda t: (-t[0], t[1])) if q > 0]


def _sibling(
    location: Location, fs_path: str, suffix: str, original: os.stat_result
) -> tuple[str, os.stat_result] | None:
    sibling = fs_path + suffix
    try:
        st = os.lstat(sibling)
        if stat.S_ISLNK(st.st_mode):
            if not location.follow_symlinks_outside_root and not _inside(_base(location), sibling):
                return None
            st = os.stat(sibling)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns < original.st_mtime_ns:
        return None  # an older sibling is stale: the file was edited after compression
    return sibling, st


# --- directories ------------------------------------------------------------------------------


def _directory(
    location: Location, fs_path: str, url_path: str, method: str
) -> FileAnswer | tuple[str, os.stat_result]:
    if not url_path.endswith("/"):
        # Quoted: the path is decoded and may hold CR/LF or non-Latin-1 characters.
        return FileAnswer(301, [("Location", quote(url_path + "/")), ("Content-Length", "0")])
    for name in location.index:
        candidate = os.path.join(fs_path, name)
        try:
            st = os.lstat(candidate)
            if stat.S_ISLNK(st.st_mode):
                if not location.follow_symlinks_outside_root and not _inside(
                    _base(location), candidate
                ):
                    continue
                st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            return candidate, st
    if not location.autoindex:
        return FileAnswer(403)
    page = autoindex_page(fs_path, url_path, location.hidden_files)
    if page is None:
        return FileAnswer(403)
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))]
    return FileAnswer(200, headers, body=b"" if method == "HEAD" else page)


def autoindex_page(directory: str, url_path: str, hidden_files: bool = False) -> bytes | None:
    """nginx's autoindex listing of ``directory`` (directories first), None if unreadable."""
    rows: list[tuple[bool, str, str, str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") and not hidden_files:
                    continue
                try:
                    is_dir = entry.is_dir()
                    st = entry.stat()
                except OSError:
                    continue  # a dangling symlink: nginx skips it too
                when = time.strftime("%d-%b-%Y %H:%M", time.gmtime(st.st_mtime))
                size = "-" if is_dir else str(st.st_size)
                rows.append((not is_dir, entry.name, when, size))
    except OSError:
        return None
    rows.sort()
    title = html.escape(url_path)
    lines = [
        f"<html>\n<head><title>Index of {title}</title></head>\n<body>\n",
        f"<h1>Index of {title}</h1><hr><pre>",
        '<a href="../">../</a>\n' if url_path != "/" else "",
    ]
    for is_file, name, when, size in rows:
        slash = "" if is_file else "/"
        raw = os.fsencode(name)  # names that are not UTF-8 still get a working link
        href = html.escape(quote(raw) + slash, quote=True)
        shown = html.escape(raw.decode("utf-8", "replace") + slash)
        lines.append(f'<a href="{href}">{shown}</a> {when} {size:>12}\n')
    lines.append("</pre><hr></body>\n</html>\n")
    return "".join(lines).encode("utf-8")


# --- the answer -------------------------------------------------------------------------------


def _open_failed(path: str, exc: OSError) -> str:
    """As nginx words it: open() "/srv/site/a.html" failed (2: No such file or directory)."""
    return f'open() "{path}" failed ({exc.errno}: {exc.strerror})'


def answer(
    location: Location,
    fs_path: str | None,
    url_path: str,
    method: str,
    request_headers: Mapping[str, str],
    accept_encoding: str = "",
    *,
    now: float | None = None,
) -> FileAnswer:
    """Decide the response to a GET/HEAD of ``fs_path`` (``request_headers`` keyed in lower case).

    ``fs_path`` comes from ``resolve`` or ``try_files`` (None: refused, 404). Errors carry no
    body: the server renders its error pages. ``now`` (epoch seconds) dates Expires.
    """
    if method not in ("GET", "HEAD"):
        return FileAnswer(405, [("Allow", "GET, HEAD"), ("Content-Length", "0")])
    if fs_path is None:
        return FileAnswer(404)
    try:
        st = os.stat(fs_path)
    except PermissionError as exc:
        return FileAnswer(403, error=_open_failed(fs_path, exc))
    except OSError as exc:
        return FileAnswer(404, error=_open_failed(fs_path, exc))
    except ValueError:  # a NUL in the path
        return FileAnswer(404)
    if stat.S_ISDIR(st.st_mode):
        found = _directory(location, fs_path, url_path, method)
        if isinstance(found, FileAnswer):
            return found
        fs_path, st = found
    if not stat.S_ISREG(st.st_mode):
        return FileAnswer(403)
    kind = content_type(fs_path)
    send_path, send_st, coding, varies = fs_path, st, "", False
    if location.gzip_static:
        for name in _codings(accept_encoding) if accept_encoding else ():
            sibling = _sibling(location, fs_path, _SIBLINGS[name], st)
            if sibling is not None:
                (send_path, send_st), coding = sibling, name
                break
        # The plain file is one variant too when a compressed sibling exists: without Vary
        # a shared cache would store it for clients that take gzip, or the reverse.
        varies = bool(coding) or any(
            _sibling(location, fs_path, suffix, st) is not None for suffix in _SIBLINGS.values()
        )
    # Validators are the representation's sent: a .gz has its own, as in nginx.
    etag, mtime, size = _etag(send_st), int(send_st.st_mtime), send_st.st_size
    kept = [("ETag", etag), ("Last-Modified", formatdate(mtime, usegmt=True))]
    kept += _cache_headers(location.expires, time.time() if now is None else now)
    if varies:
        kept.append(("Vary", "Accept-Encoding"))
    verdict = _preconditions(request_headers, etag, mtime)
    if verdict == 412:
        return FileAnswer(412)
    if verdict == 304:
        return FileAnswer(304, kept)
    headers = [("Content-Type", kind), *kept]
    if coding:  # no ranges on an encoded body: offsets would not be the file's
        headers += [("Content-Encoding", coding), ("Content-Length", str(size))]
        return FileAnswer(200, headers, send_path)
    headers.append(("Accept-Ranges", "bytes"))
    range_header = request_headers.get("range")
    if range_header is not None and method == "GET":
        if_range = request_headers.get("if-range")
        if if_range is None or _if_range_holds(if_range, etag, mtime):
            partial = _ranged(headers, send_path, size, kind, parse_ranges(range_header, size))
            if partial is not None:
                return partial
    headers.append(("Content-Length", str(size)))
    return FileAnswer(200, headers, send_path)


def _ranged(
    headers: list[tuple[str, str]],
    path: str,
    size: int,
    kind: str,
    ranges: list[tuple[int, int]] | None,
) -> FileAnswer | None:
    if ranges is None:
        return None
    if not ranges:
        return FileAnswer(416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
    if len(ranges) == 1:
        start, end = ranges[0]
        headers += [
            ("Content-Range", f"bytes {start}-{end}/{size}"),
            ("Content-Length", str(end - start + 1)),
        ]
        return FileAnswer(206, headers, path, ranges)
    boundary = secrets.token_hex(10)
    headers[0] = ("Content-Type", f"multipart/byteranges; boundary={boundary}")
    result = FileAnswer(206, headers, path, ranges, boundary)
    multipart_parts(result, size, kind)
    return result


def multipart_parts(
    result: FileAnswer, size: int, content_type: str
) -> list[tuple[bytes, tuple[int, int] | None]]:
    """The pieces of a multipart/byteranges body: framing ``(bytes, None)`` between file
    ranges ``(b"", (start, end))``; also sets the answer's Content-Length to their sum."""
    if result.boundary is None:
        raise ValueError("not a multipart answer")
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


# --- open file cache --------------------------------------------------------------------------


@dataclass
class _OpenFile:
    fd: int
    st: os.stat_result
    checked: float
    pins: int = 0
    retired_at: float = 0.0


class OpenFileCache:
    """nginx's open_file_cache: hot files' descriptors and stat, revalidated every ``valid`` s.

    Bounded (least recently used out). A descriptor replaced (file changed or evicted) is
    closed ``linger_seconds`` later, so a response still reading it does not read a reused
    descriptor; one pinned by ``acquire`` stays open until ``release``.
    """

    def __init__(
        self,
        max_entries: int = 1000,
        valid_seconds: float = 1.0,
        linger_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(1, max_entries)
        self.valid = valid_seconds
        self.linger = linger_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _OpenFile] = OrderedDict()
        self._pinned: dict[int, _OpenFile] = {}
        self._retired: list[_OpenFile] = []

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, path: str) -> tuple[int, os.stat_result]:
        """A descriptor (owned by the cache: do not close it) and its stat; raises OSError."""
        entry = self._lookup(path)
        return entry.fd, entry.st

    def acquire(self, path: str) -> tuple[int, os.stat_result]:
        """Like ``open``, and the descriptor stays open until ``release(fd)``."""
        entry = self._lookup(path)
        entry.pins += 1
        self._pinned[entry.fd] = entry
        return entry.fd, entry.st

    def release(self, fd: int) -> None:
        """Unpin a descriptor from ``acquire``."""
        entry = self._pinned.get(fd)
        if entry is None:
            return
        entry.pins -= 1
        if entry.pins <= 0:
            del self._pinned[fd]

    def _lookup(self, path: str) -> _OpenFile:
        now = self._clock()
        if self._retired:
            self._sweep(now)
        entry = self._entries.get(path)
        if entry is not None:
            if now - entry.checked < self.valid:
                self._entries.move_to_end(path)
                return entry
            try:
                current = os.stat(path)
            except OSError:
                self._retire(self._entries.pop(path), now)
                raise
            if (current.st_dev, current.st_ino) == (entry.st.st_dev, entry.st.st_ino):
                # Same file, maybe rewritten in place: the descriptor still reads it.
                entry.st = os.fstat(entry.fd)
                entry.checked = now
                self._entries.move_to_end(path)
                return entry
            self._retire(self._entries.pop(path), now)  # replaced (a deploy's rename)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        while len(self._entries) >= self.max_entries:
            self._retire(self._entries.popitem(last=False)[1], now)
        entry = _OpenFile(fd, st, now)
        self._entries[path] = entry
        return entry

    def _retire(self, entry: _OpenFile, now: float) -> None:
        entry.retired_at = now
        if entry.pins <= 0 and self.linger <= 0:
            os.close(entry.fd)
        else:
            self._retired.append(entry)

    def _sweep(self, now: float) -> None:
        keep = []
        for entry in self._retired:
            if entry.pins <= 0 and now - entry.retired_at >= self.linger:
                os.close(entry.fd)
            else:
                keep.append(entry)
        self._retired = keep

    def close_all(self) -> None:
        """Close every descriptor, cached, lingering or pinned."""
        for entry in [*self._entries.values(), *self._retired]:
            os.close(entry.fd)
        self._entries.clear()
        self._retired.clear()
        self._pinned.clear()
