"""Listening sockets, bound by the master before any worker starts."""

from __future__ import annotations

import os
import socket
import stat

from gantry.config import ConfigError, ListenAddress

__all__ = ["bind"]


def bind(address: ListenAddress, mode: int | None, backlog: int) -> socket.socket:
    """Create, bind and listen on one socket (before any worker starts)."""
    if address.path is not None:
        path = address.path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"{address.kind} socket {path}: cannot bind: {exc.strerror}"
            ) from None
        if mode is not None:
            os.chmod(path, mode)
    else:
        assert address.host is not None and address.port is not None
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"{address.kind} socket {address}: cannot bind: {exc.strerror}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
