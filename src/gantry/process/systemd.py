"""systemd integration: sd_notify messages and socket activation (LISTEN_FDS)."""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "inherited_sockets"]

SD_LISTEN_FDS_START = 3


def notify(*lines: str) -> bool:
    """Send ``lines`` to $NOTIFY_SOCKET if systemd (or a test) set it; False otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets passed by systemd socket activation, if they are meant for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, True)
        sockets.append(socket.socket(fileno=fd))
    # Children must not take these variables for their own.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return sockets
