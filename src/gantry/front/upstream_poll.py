"""Readiness of the sockets to upstream servers, told to the connections that own them.

A front worker opens one upstream connection per request to uWSGI (it closes after
each response). Watching each socket with the event loop's own ``add_reader`` costs a
loop handle per connection, and six ``epoll_ctl`` calls under uvloop (libuv checks,
adds, removes, removes again). :class:`EpollPoller` keeps the worker's upstream
sockets in an epoll set of its own, which the loop watches as one reader, as nginx
does: one ``epoll_ctl`` per connection, and closing the socket takes it out of the set.
:class:`LoopPoller` uses the loop's readers and writers, for the odd connection (a
health probe) and where there is no epoll.
"""

from __future__ import annotations

import asyncio
import select
from typing import Final

__all__ = ["EpollPoller", "LoopPoller", "PolledSocket", "UpstreamPoller", "worker_poller"]

_IN: Final = 0x001  # select.EPOLLIN
_OUT: Final = 0x004  # select.EPOLLOUT
_ERR: Final = 0x008  # select.EPOLLERR
_HUP: Final = 0x010  # select.EPOLLHUP
# At most this many ready sockets are taken per turn of the loop; more wait for the next.
_MAX_EVENTS: Final = 256


class PolledSocket:
    """What a poller drives: a socket's descriptor and what to do when it is ready."""

    fd = -1
    #: what the poller watches the socket for now (its own bookkeeping)
    poll_mask = 0

    def on_readable(self) -> None:
        """The socket has bytes (or an end, or an error) to read."""

    def on_writable(self) -> None:
        """The socket takes more bytes; also called for the first write (``send_soon``)."""


class UpstreamPoller:
    """Tells :class:`PolledSocket` objects when their socket is ready; also runs their
    first writes together, in the loop turn after they were asked for (see send_soon)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queued: list[PolledSocket] = []

    def watch(self, polled: PolledSocket, read: bool, write: bool) -> None:
        """Watch ``polled``'s socket for reading and/or writing (neither: not at all)."""
        raise NotImplementedError

    def forget(self, polled: PolledSocket) -> None:
        """``polled``'s socket is about to close: stop watching it."""
        raise NotImplementedError

    def send_soon(self, polled: PolledSocket) -> None:
        """Call ``polled.on_writable`` in the next turn of the loop, with the other first
        writes asked for in this one.

        A backend that shares the CPU is woken by the connect; a request written in
        the same callback as its connect makes it run once to find nothing to read
        (measured with uWSGI: 1.2 context switches per request instead of 0.35).
        """
        if not self.queued:
            self.loop.call_soon(self._send_queued)
        self.queued.append(polled)

    def _send_queued(self) -> None:
        queued = self.queued
        self.queued = []
        for polled in queued:
            polled.on_writable()

    def close(self) -> None:
        """Stop watching every socket (the worker is stopping)."""


class LoopPoller(UpstreamPoller):
    """Each socket watched with the loop's own ``add_reader`` and ``add_writer``."""

    def watch(self, polled: PolledSocket, read: bool, write: bool) -> None:
        mask = (_IN if read else 0) | (_OUT if write else 0)
        old = polled.poll_mask
        if mask == old:
            return
        polled.poll_mask = mask
        if (mask ^ old) & _IN:
            if read:
                self.loop.add_reader(polled.fd, polled.on_readable)
            else:
                self.loop.remove_reader(polled.fd)
        if (mask ^ old) & _OUT:
            if write:
                self.loop.add_writer(polled.fd, polled.on_writable)
            else:
                self.loop.remove_writer(polled.fd)

    def forget(self, polled: PolledSocket) -> None:
        self.watch(polled, False, False)


class EpollPoller(UpstreamPoller):
    """The worker's upstream sockets in one epoll set, which the loop watches as a reader.

    Level-triggered: a socket is taken out of the set while nobody reads or writes it
    (a paused response would otherwise be reported again at every turn once the
    upstream hung up).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.epoll: select.epoll | None = None
        #: descriptor -> the socket's owner, for each socket in the set
        self.polled: dict[int, PolledSocket] = {}

    def _set(self) -> select.epoll:
        epoll = self.epoll
        if epoll is None:
            # made at first use, in the worker (never inherited across a fork)
            epoll = self.epoll = select.epoll()
            self.loop.add_reader(epoll.fileno(), self._ready)
        return epoll

    def watch(self, polled: PolledSocket, read: bool, write: bool) -> None:
        mask = (_IN if read else 0) | (_OUT if write else 0)
        old = polled.poll_mask
        if mask == old:
            return
        epoll = self._set()
        polled.poll_mask = mask
        if not old:
            epoll.register(polled.fd, mask)
            self.polled[polled.fd] = polled
        elif not mask:
            epoll.unregister(polled.fd)
            del self.polled[polled.fd]
        else:
            epoll.modify(polled.fd, mask)

    def forget(self, polled: PolledSocket) -> None:
        # No epoll_ctl: closing the socket takes it out of the set (the descriptor is
        # never duplicated). An event already taken for it finds no owner, or a new
        # socket with the same number whose reads and writes meet EAGAIN: harmless.
        if polled.poll_mask:
            polled.poll_mask = 0
            self.polled.pop(polled.fd, None)

    def _ready(self) -> None:
        epoll = self.epoll
        if epoll is None:
            return
        polled = self.polled
        for fd, events in epoll.poll(0, _MAX_EVENTS):
            owner = polled.get(fd)
            if owner is None:
                continue
            if events & (_OUT | _ERR | _HUP) and owner.poll_mask & _OUT:
                owner.on_writable()
            if events & (_IN | _ERR | _HUP) and owner.poll_mask & _IN:
                owner.on_readable()

    def close(self) -> None:
        epoll = self.epoll
        if epoll is not None:
            self.epoll = None
            self.loop.remove_reader(epoll.fileno())
            epoll.close()
        self.polled.clear()


def worker_poller(loop: asyncio.AbstractEventLoop) -> UpstreamPoller:
    """The poller for a worker's upstream connections: epoll's where there is one."""
    if hasattr(select, "epoll"):
        return EpollPoller(loop)
    return LoopPoller(loop)
