"""What the front checks of HTTP/2 frames before the h2 state machine takes them.

The frames themselves are parsed by the ``h2`` package (with ``hpack`` and
``hyperframe``). h2 gathers a header block's CONTINUATION frames until the last one
(up to 64 frames of the peer's size) before it decodes anything, so a client may make
a server hold far more than its header limit (CVE-2024-27316 and its siblings). This
watch reads only the 9-byte frame headers as the bytes go by and says as soon as the
block being gathered passes the limit. Bytes in, a verdict out: no sockets.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PREFACE", "HeaderBlockWatch"]

#: what an HTTP/2 client sends first (RFC 9113 3.4)
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_FRAME_HEAD: Final = 9
_HEADERS: Final = 0x1
_PUSH_PROMISE: Final = 0x5
_CONTINUATION: Final = 0x9
_END_HEADERS: Final = 0x4


class HeaderBlockWatch:
    """Follows the frames of a client's byte stream (after its preface) and the size of
    the header block being sent (HEADERS or PUSH_PROMISE, then its CONTINUATIONs)."""

    __slots__ = ("limit", "_skip", "_head", "_block")

    def __init__(self, limit: int, preface: bool = True) -> None:
        self.limit = limit
        #: bytes still to pass over: the preface, then each frame's payload
        self._skip = len(PREFACE) if preface else 0
        #: a frame header split between two reads
        self._head = b""
        #: bytes of the header block so far (0: none is open)
        self._block = 0

    def feed(self, data: bytes) -> bool:
        """Follow ``data``; False once a header block has passed the limit."""
        pos = 0
        size = len(data)
        while pos < size:
            if self._skip:
                take = min(self._skip, size - pos)
                pos += take
                self._skip -= take
                continue
            want = _FRAME_HEAD - len(self._head)
            head = self._head + data[pos : pos + want]
            pos += min(want, size - pos)
            if len(head) < _FRAME_HEAD:
                self._head = head
                break
            self._head = b""
            length = int.from_bytes(head[:3], "big")
            kind = head[3]
            if kind == _HEADERS or kind == _PUSH_PROMISE or kind == _CONTINUATION:
                self._block += length
                if self._block > self.limit:
                    return False
                if head[4] & _END_HEADERS:
                    self._block = 0
            self._skip = length
        return True
