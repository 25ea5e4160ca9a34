"""Hearing the parts of ``gantry up`` say READY=1 (sd_notify), each by its PID.

Every part's master already tells $NOTIFY_SOCKET when all its workers are ready,
as it would tell systemd. The supervisor gives its parts one datagram socket of
its own in the abstract namespace (no file to clean up or to collide with another
stack's) and learns who sent each message from the kernel (SO_PASSCRED), so a
message counts only for the PID of a part it started. The supervisor's own
$NOTIFY_SOCKET (systemd's) is left as it was for its own messages.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct

__all__ = ["ReadinessSocket"]

# struct ucred: pid_t pid, uid_t uid, gid_t gid
_UCRED = struct.Struct("iII")


class ReadinessSocket:
    """The datagram socket the parts' masters send their sd_notify lines to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # random: another local process cannot take the name first
            name = f"gantry-up/{os.getpid()}/{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        #: the value of NOTIFY_SOCKET for the parts ('@' names the abstract namespace)
        self.address = "@" + name

    @staticmethod
    def supported() -> bool:
        """Whether the kernel can tell the sender's PID (Linux)."""
        return hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")

    def fileno(self) -> int:
        """For select()."""
        return self.sock.fileno()

    def read(self) -> list[tuple[int, list[str]]]:
        """Every message waiting, as (sender PID, lines); PID 0 when the kernel did not say."""
        messages: list[tuple[int, list[str]]] = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return messages
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            messages.append((pid, data.decode("utf-8", "replace").splitlines()))

    def close(self) -> None:
        """Close the socket (nothing to unlink: it has no file)."""
        self.sock.close()
