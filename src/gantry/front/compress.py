"""On-the-fly compression of responses at the front: gzip always, brotli and zstd when
their packages are installed (the ``compression`` extra).

A response filter, installed per request by the compression handler of the chain
(front.handlers) only where a location has ``gzip = true`` and the client sent
Accept-Encoding: a location without it never reaches this module. The connection asks
the request's :class:`ResponseCoder` about each response head and passes the body
through it: whole bodies at once, a proxied stream piece by piece (flushed once per
turn of the loop after its pieces, so what the upstream sent reaches the client as it
comes, without a flush per piece: see :meth:`ResponseCoder.stream`), a file in bounded
reads.
Compression comes after the cache: the cache keeps the identity body.

Nothing here holds compressed output: each piece goes to the client's connection at
once, whose write buffer (its high-water mark) pauses the upstream read or the file's
next read when the client is slow, as for an identity body (see
tests/test_front_compress_slow_reader.py). The encoders' own state is bounded by their
windows (brotli's lgwin, zlib's 32 KiB, zstd's block).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

from gantry.config.front_model import Compression

# The compression extra's codings, imported with the module (a worker imports it before it
# switches to its user, who may not read the library); config refuses "br" or "zstd"
# without them, so None here is never reached.
try:
    import brotli
except ImportError:
    brotli = None
try:
    import zstandard
except ImportError:
    zstandard = None  # type: ignore[assignment, unused-ignore]

__all__ = ["Encoder", "ResponseCoder", "choose_coding", "encoder_for", "zlib_sizes"]

#: the statuses compressed (nginx's: 200, 403, 404)
COMPRESSED_STATUSES: Final = frozenset({200, 403, 404})
_VARY_LINE: Final = b"Vary: Accept-Encoding\r\n"


class Encoder:
    """One compressed stream: ``piece`` returns what the data compressed to so far (all of
    it when ``flush``, so the client can decode what came), ``finish`` the rest."""

    def __init__(
        self,
        piece: Callable[[bytes], bytes],
        flush: Callable[[], bytes],
        finish: Callable[[], bytes],
    ) -> None:
        self._piece = piece
        self._flush = flush
        self._finish = finish

    def piece(self, data: bytes, flush: bool = True) -> bytes:
        """Compress ``data``; with ``flush`` everything so far comes out."""
        out = self._piece(data)
        return out + self._flush() if flush else out

    def flush(self) -> bytes:
        """Everything compressed so far that has not come out yet."""
        return self._flush()

    def finish(self) -> bytes:
        """The end of the stream."""
        return self._finish()


def zlib_sizes(length: int | None) -> tuple[int, int]:
    """deflate's window bits and memLevel for a body of ``length`` bytes (None: not
    known), as nginx's gzip filter chooses them: 15 and 8, both one less while the body
    would fit in half the window, so a small response does not allocate and clear the
    256 KiB of state a whole window takes (16 KiB for a 2 KiB body)."""
    wbits, memlevel = 15, 8
    if length is not None and length > 0:
        while length < (1 << (wbits - 1)) - 262:
            wbits -= 1
            memlevel -= 1
    return wbits, max(memlevel, 1)


def encoder_for(coding: str, level: int, length: int | None = None) -> Encoder:
    """A new encoder of ``coding`` ("gzip", "br", "zstd") at ``level`` (1-9) for a body
    of ``length`` bytes (None: not known)."""
    if coding == "br":
        # quality 1-9 is brotli's fast range; a small window keeps a stream's memory low
        br = brotli.Compressor(quality=level, lgwin=20)
        return Encoder(br.process, br.flush, br.finish)
    if coding == "zstd":
        zs = zstandard.ZstdCompressor(level=level).compressobj()
        return Encoder(zs.compress, lambda: zs.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), zs.flush)
    # 16 + wbits: the gzip wrapper
    wbits, memlevel = zlib_sizes(length)
    gz = zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memlevel)
    return Encoder(gz.compress, lambda: gz.flush(zlib.Z_SYNC_FLUSH), gz.flush)


def choose_coding(accept: bytes, offered: tuple[str, ...]) -> str | None:
    """The coding of ``offered`` (the server's preference first) the client's
    Accept-Encoding takes with the highest q; None when it takes none (q=0 refuses a
    coding; "*" stands for the codings it does not name)."""
    named: dict[str, float] = {}
    star: float | None = None
    for item in accept.split(b","):
        token, _, params = item.partition(b";")
        name = token.strip().lower().decode("latin-1")
        if not name:
            continue
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # a q we cannot read accepts nothing
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        if name == "*":
            star = q
        elif name == "x-gzip":
            named.setdefault("gzip", q)
        else:
            named[name] = q
    best: str | None = None
    best_q = 0.0
    for coding in offered:
        q = named.get(coding, star if star is not None else 0.0)
        if q > best_q:  # strictly: an equal q keeps the server's preference
            best, best_q = coding, q
    return best


def _media_type(value: bytes) -> str:
    return value.partition(b";")[0].strip().lower().decode("latin-1")


class ResponseCoder:
    """The compression of one request's response: ``coding`` is what the client takes of
    what the location offers (None: none, the response only gets its Vary)."""

    __slots__ = ("compression", "coding", "encoder", "owed")

    def __init__(self, compression: Compression, coding: str | None) -> None:
        self.compression = compression
        self.coding = coding
        self.encoder: Encoder | None = None
        #: pieces went in since the last flush (see stream)
        self.owed = False

    def start(self, status: int, lines: list[bytes], length: int | None = None) -> bool:
        """Decide for a response of ``status`` with the fields ``lines`` (each ending in
        CRLF), changed in place: Vary added; when compressed, Content-Encoding added,
        Content-Length and Accept-Ranges dropped and a strong ETag weakened. True when
        the body is to go through :meth:`piece` / :meth:`finish`. ``length``: the body's,
        when known other than by a Content-Length field."""
        if status not in COMPRESSED_STATUSES:
            return False
        compression = self.compression
        media = ""
        vary = -1
        for i, line in enumerate(lines):
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-type":
                media = _media_type(value)
            elif key == b"content-length":
                if length is None:
                    try:
                        length = int(value)
                    except ValueError:
                        return False
            elif key in (b"content-encoding", b"transfer-encoding"):
                return False  # encoded already (a transfer coding other than chunked too)
            elif key == b"cache-control":
                if b"no-transform" in value.lower():
                    return False
            elif key == b"vary":
                vary = i
        if not (compression.any_type or media in compression.types):
            return False
        if length is not None and length < compression.min_length:
            return False
        if compression.vary:
            if vary < 0:
                lines.append(_VARY_LINE)
            else:
                current = lines[vary].partition(b":")[2].strip()
                names = {n.strip().lower() for n in current.split(b",")}
                if b"*" not in names and b"accept-encoding" not in names:
                    lines[vary] = b"Vary: " + current + b", Accept-Encoding\r\n"
        coding = self.coding
        if coding is None:
            return False
        kept = []
        for line in lines:
            key = line.partition(b":")[0].strip().lower()
            if key in (b"content-length", b"accept-ranges"):
                continue
            if key == b"etag":
                value = line.partition(b":")[2].strip()
                if value.startswith(b'"'):
                    line = b"ETag: W/" + value + b"\r\n"
            kept.append(line)
        kept.append(b"Content-Encoding: " + coding.encode("ascii") + b"\r\n")
        lines[:] = kept
        self.encoder = encoder_for(coding, compression.level, length)
        return True

    def whole(self, status: int, lines: list[bytes], body: bytes) -> bytes:
        """A whole response: ``lines`` changed in place as :meth:`start` does (with the
        compressed body's Content-Length), and the body to send."""
        if not self.start(status, lines, len(body)):
            return body
        encoder = self.encoder
        assert encoder is not None
        body = encoder.piece(body, False) + encoder.finish()
        lines.append(b"Content-Length: %d\r\n" % len(body))
        return body

    def whole_head(self, status: int, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        """The same for a head given as its status line and fields (each ending in CRLF)."""
        first, _, rest = head.partition(b"\r\n")
        lines = [line + b"\r\n" for line in rest.split(b"\r\n")[:-1]]
        body = self.whole(status, lines, body)
        return first + b"\r\n" + b"".join(lines), body

    def piece(self, data: bytes, flush: bool = True) -> bytes:
        """A piece of the body, compressed (flushed: the client gets it now)."""
        encoder = self.encoder
        return encoder.piece(data, flush) if encoder is not None else data

    def stream(self, data: bytes) -> tuple[bytes, bool]:
        """A piece of a streamed body, compressed but not flushed: what came out, and True
        when this piece is the first since the last flush, i.e. the caller is to call
        :meth:`flush` once its turn of the loop is over. Flushing per piece cost a sync
        marker (and a chunk, and a write) per piece, and compressed worse."""
        encoder = self.encoder
        if encoder is None:
            return data, False
        first = not self.owed
        self.owed = True
        return encoder.piece(data, False), first

    def flush(self) -> bytes:
        """What the pieces since the last flush compressed to, all of it (b"" when none
        came, or the body has ended)."""
        encoder = self.encoder
        if encoder is None or not self.owed:
            return b""
        self.owed = False
        return encoder.flush()

    def finish(self) -> bytes:
        """The end of the compressed body."""
        encoder = self.encoder
        self.encoder = None
        self.owed = False
        return encoder.finish() if encoder is not None else b""
