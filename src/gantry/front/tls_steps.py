"""The ssl call of every TLS connection that ends in an exception on the normal path,
caught here, in interpreted code, and answered as a value; and the connection object
the front drives (the ssl module's own, under ``ssl.SSLObject``).

``do_handshake`` raises SSLWantReadError after the ClientHello (the client's Finished is
still to come). The ssl module gives no call that says so without raising. Caught
inside a mypyc-compiled function, such an exception costs a traceback entry made from
nothing (an empty code object and a frame, CPy_AddTraceback) and the exception state set
and restored: measured with the same SSLObject, 3.7-4.3 us a caught exception there
against 3.0-3.2 us through this module. So it stays out of gantry.compiled.MODULES, and
front.tls_accept, compiled, calls it.

The connection object is ``ssl.SSLContext._wrap_bio``'s (``_ssl._SSLSocket``, CPython
3.7 on), which ``SSLContext.wrap_bio`` wraps in an ``ssl.SSLObject`` whose every method
is an interpreted call on to it: made and called directly, a connection costs ~2.4 us
less to make and a frame less a call (do_handshake, read, write, shutdown). Its
shutdown does not raise on the normal path (see TLSStream.close): the compiled
front.tls_accept calls it. Where a caller asks for the ``ssl.SSLObject``
(``get_extra_info("ssl_object")``), it gets one around the same connection
(``ssl_object``).
"""

from __future__ import annotations

import ssl
from typing import Any, Final, Protocol

__all__ = [
    "HANDSHAKE_DONE",
    "HANDSHAKE_WANTS_MORE",
    "TLSConnection",
    "handshake_step",
    "ssl_object",
]

#: the handshake is complete: the connection carries records from now on
HANDSHAKE_DONE: Final = True
#: the client's next flight is needed (ours, if any, waits in the outgoing BIO)
HANDSHAKE_WANTS_MORE: Final = False

_WantRead: Final = ssl.SSLWantReadError


class TLSConnection(Protocol):
    """What the front calls of a TLS connection over memory BIOs (``_ssl._SSLSocket``,
    made by ``ssl.SSLContext._wrap_bio``: the object an ``ssl.SSLObject`` wraps)."""

    context: ssl.SSLContext

    def do_handshake(self) -> None: ...
    def read(self, size: int) -> bytes: ...
    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def pending(self) -> int: ...
    def shutdown(self) -> object: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def compression(self) -> str | None: ...
    def getpeercert(self, der: bool = False) -> Any: ...
    def selected_alpn_protocol(self) -> str | None: ...


def handshake_step(tls: TLSConnection) -> bool:
    """Drive the handshake with what the incoming BIO holds: HANDSHAKE_DONE, or
    HANDSHAKE_WANTS_MORE when the client has more to send; a client we cannot speak
    with raises (ssl.SSLError, or ValueError from a callback), as do_handshake does."""
    try:
        tls.do_handshake()
    except _WantRead:
        return HANDSHAKE_WANTS_MORE
    return HANDSHAKE_DONE


def ssl_object(tls: TLSConnection) -> ssl.SSLObject:
    """The ``ssl.SSLObject`` view of ``tls`` (SSLObject keeps its connection in
    ``_sslobj``, which wrap_bio sets as this does)."""
    view = ssl.SSLObject.__new__(ssl.SSLObject)
    view._sslobj = tls  # type: ignore[attr-defined]
    return view
