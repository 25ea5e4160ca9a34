"""The two ssl calls of every TLS connection that end in an exception on the normal path,
caught here, in interpreted code, and answered as a value.

``SSLObject.do_handshake`` raises SSLWantReadError after the ClientHello (the client's
Finished is still to come), and ``SSLObject.unwrap`` raises it after sending our
close_notify (the client's has not come: it is not waited for). The ssl module gives no
call that says so without raising. Caught inside a mypyc-compiled function, each such
exception costs a traceback entry made from nothing (an empty code object and a frame,
CPy_AddTraceback) and the exception state set and restored: measured with the same
SSLObject, 3.7-4.3 us a caught exception there against 3.0-3.2 us through this module.
So it stays out of gantry.compiled.MODULES, and front.tls_accept, compiled, calls it.
"""

from __future__ import annotations

import ssl
from typing import Final

__all__ = ["HANDSHAKE_DONE", "HANDSHAKE_WANTS_MORE", "handshake_step", "send_close_notify"]

#: the handshake is complete: the connection carries records from now on
HANDSHAKE_DONE: Final = True
#: the client's next flight is needed (ours, if any, waits in the outgoing BIO)
HANDSHAKE_WANTS_MORE: Final = False

_WantRead: Final = ssl.SSLWantReadError
_SSLError: Final = ssl.SSLError


def handshake_step(tls: ssl.SSLObject) -> bool:
    """Drive the handshake with what the incoming BIO holds: HANDSHAKE_DONE, or
    HANDSHAKE_WANTS_MORE when the client has more to send; a client we cannot speak
    with raises (ssl.SSLError, or ValueError from a callback), as do_handshake does."""
    try:
        tls.do_handshake()
    except _WantRead:
        return HANDSHAKE_WANTS_MORE
    return HANDSHAKE_DONE


def send_close_notify(tls: ssl.SSLObject) -> None:
    """Our close_notify into the outgoing BIO; the client's is not waited for (unwrap
    says it has not come by raising, which is the normal case here, as is any other
    ssl error on a connection that is closing anyway)."""
    try:
        tls.unwrap()
    except _SSLError:
        pass
