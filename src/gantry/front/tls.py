"""The front's TLS contexts: one per certificate, the listener's default first, the
certificate chosen by SNI as nginx chooses a server by name.

Built in the master before it forks (and again on SIGHUP): the workers of one generation
inherit the same contexts, so the session-ticket key OpenSSL makes for each context is
the same in every worker and a ticket one worker issued resumes on another. The
session-ID cache is each worker's own (OpenSSL keeps it in process memory): a client
resuming by ID resumes only on the worker that issued it, one by ticket on any worker.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from gantry.config.certificates import load_pair
from gantry.config.front_model import FrontConfig, VirtualServer
from gantry.front.routing import Router

__all__ = ["INTERMEDIATE_CIPHERS", "FrontTLS", "server_context"]

#: Mozilla's "intermediate" configuration (v5.7) for TLS 1.2: ECDHE with AES-GCM or
#: ChaCha20 first, DHE after; TLS 1.3's suites are OpenSSL's own (all of them strong)
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

#: what ALPN offers on an ssl listener, and on one with the h2 flag (HTTP/2 preferred)
ALPN = ["http/1.1"]
ALPN_H2 = ["h2", "http/1.1"]

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(server: VirtualServer, http2: bool = False) -> ssl.SSLContext:
    """A server context for ``server``'s certificate (CertificateError if it cannot load);
    ALPN offers "h2" first when ``http2``."""
    assert server.ssl_certificate is not None and server.ssl_certificate_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[v] for v in server.ssl_protocols)
    context.minimum_version = versions[0]
    context.maximum_version = versions[-1]
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(ALPN_H2 if http2 else ALPN)
    # the server's order of ciphers, no renegotiation, no compression (CRIME)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_NO_COMPRESSION
    # the key-exchange groups stay OpenSSL's (X25519 first, then P-256 ...):
    # set_ecdh_curve would leave a single one
    load_pair(context, server.ssl_certificate, server.ssl_certificate_key)
    return context


class FrontTLS:
    """The TLS context of each ssl listener, with SNI switching to the server's own."""

    def __init__(self, config: FrontConfig) -> None:
        self.listeners: dict[int, ssl.SSLContext] = {}
        # one context per certificate and ALPN list: an h2 listener's SNI must switch to
        # a context that offers h2 as well
        by_files: dict[tuple[str | None, str | None, tuple[str, ...], bool], ssl.SSLContext] = {}
        for index, listener in enumerate(config.listeners):
            if not listener.ssl:
                continue
            http2 = listener.http2
            contexts: dict[int, ssl.SSLContext] = {}  # id(server) -> its context
            servers = [s for s in config.servers if not s.listen or index in s.listen]
            for server in servers:
                if server.ssl_certificate is None:
                    continue
                files = (
                    server.ssl_certificate,
                    server.ssl_certificate_key,
                    server.ssl_protocols,
                    http2,
                )
                context = by_files.get(files)
                if context is None:
                    context = by_files[files] = server_context(server, http2)
                contexts[id(server)] = context
            self.listeners[index] = self._listener_context(servers, contexts, http2)

    @staticmethod
    def _listener_context(
        servers: Sequence[VirtualServer], contexts: dict[int, ssl.SSLContext], http2: bool
    ) -> ssl.SSLContext:
        router = Router(servers)
        default = router.server_for(None)
        # the listener's own context: the default server's settings and certificate, so
        # a client with no SNI or an unknown name gets them; it is not shared with a
        # server's, since the SNI callback is set on it alone
        listener = server_context(default, http2)
        own = {id(contexts[id(s)]) for s in servers if id(s) in contexts and s is not default}
        if not own:
            return listener  # one certificate on this listener: nothing for SNI to choose
        names: dict[str, ssl.SSLContext] = {}

        # ``sock`` is what the handshake runs on: front.tls_accept's TLSConnection (the
        # ssl module's connection object, whose context may be set as SSLObject's)
        def choose(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            if name is None:
                return
            context = names.get(name)
            if context is None:
                chosen = router.server_for(name)
                context = listener if chosen is default else contexts.get(id(chosen), listener)
                if len(names) < 4096:  # the names are the clients': bounded
                    names[name] = context
            if context is not listener:
                sock.context = context

        listener.sni_callback = choose
        return listener
