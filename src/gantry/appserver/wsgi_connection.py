"""Running a WSGI app for a connection: inline on the loop or on a thread, with back-pressure.

Shared by the HTTP and uwsgi connections; they differ only in how requests
arrive and in how the response is framed (``Response.raw`` for uwsgi).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any, Final

from gantry.appserver.context import WorkerContext, error_log
from gantry.wsgi.response import FileWrapper, Response, ResponseError, close_result, error_response

# The transport pauses us above HIGH and resumes below LOW buffered bytes.
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
# Body bytes one response may hold back while a batch of apps runs.
BATCH_SEND_LIMIT: Final = 64 * 1024
# A HEAD response's body is produced and counted up to this size for its length.
HEAD_MEASURE_LIMIT: Final = 1024 * 1024


def _write_after_close(data: bytes) -> None:
    """A closed connection's ``write()``: nothing to write to."""


class WSGIConnection(asyncio.Protocol):
    """Base protocol: calls the app, streams its result, then finishes or closes."""

    raw_response = False
    #: loop time when the current wait times out (0: none); the worker sweeps it
    deadline = 0.0

    def deadline_passed(self) -> None:
        """Called by the worker's once-a-second sweep after ``deadline``."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        # looked up once per connection rather than per request
        self.app = ctx.app
        self.executor = ctx.executor
        #: the ``write()`` callable handed to apps run on the loop (bound once)
        self.write_callable = self._write_from_app
        self.transport: asyncio.Transport | None = None
        self.remote_addr = ""
        self.remote_port = ""
        self.response: Response | None = None
        self.environ: dict[str, Any] | None = None
        self.result: Any = None
        self.iterator: Iterator[bytes] | None = None
        self.write_paused = False
        #: bytes the transport still held at the last sweep, and when that last went down
        self.unsent = 0
        self.sent_progress = 0.0
        #: the next request waits for the output to drain below the low-water mark
        self.waiting_drain = False
        self.closed = False
        #: the peer half-closed (SHUT_WR): finish what it asked for, then close
        self.eof = False
        self.busy = False
        # threaded mode: the app thread waits on this while the transport is paused
        self.can_write: threading.Event | None = None
        self.sendfile_state: tuple[int, int, int] | None = None

    # asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # uvloop's default low-water mark is 16 bytes: set both loops alike.
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_addr = str(peer[0])
            self.remote_port = str(peer[1])
        else:
            self.remote_addr = "127.0.0.1"
            self.remote_port = "0"
        self.ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self.can_write is not None:
            self.can_write.set()
        self._stop_sendfile()
        if self.iterator is not None or (self.result is not None and not self.busy_in_thread()):
            # The client went away mid-response: the result is still closed.
            self.iterator = None
            self._close_result()
        if not self.busy:
            # No request runs or waits to run: drop what points back at this connection
            # (its bound write callable, the last response holding it) so that reference
            # counting frees it. Left to the cycle collector, each connection was ~24
            # objects of garbage, and behind nginx's uwsgi_pass every request is one.
            self.write_callable = _write_after_close
            self.response = None
            self.environ = None

    def eof_received(self) -> bool | None:
        """The peer sends no more (it may still read): keep the transport open while
        requests it sent are answered; closed once they are (``response_done``)."""
        self.eof = True
        return True if self.has_work() else None

    def has_work(self) -> bool:
        """Whether a request runs or waits to (the connection must outlive a half-close)."""
        return self.busy

    def check_send(self, now: float) -> None:
        """From the worker's sweep while writing is paused: close a client that has read
        none of its answer for ``send_timeout`` (nginx's send_timeout: the time between
        two successful writes)."""
        transport = self.transport
        if transport is None:
            return
        pending = transport.get_write_buffer_size()
        if pending < self.unsent or not self.unsent:
            self.unsent, self.sent_progress = pending, now  # the client read something
        elif now - self.sent_progress >= self.ctx.config.send_timeout:
            error_log.info(
                "send timeout: %s:%s read nothing of %d bytes in %.0f s; closing",
                self.remote_addr, self.remote_port, pending, self.ctx.config.send_timeout,
            )  # fmt: skip
            transport.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.can_write is not None:
            self.can_write.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unsent = 0
        if self.can_write is not None:
            self.can_write.set()
        if self.iterator is not None:
            self._pump()
        elif self.waiting_drain:
            self.waiting_drain = False
            self.drained()

    # hooks for subclasses ---------------------------------------------------

    def response_done(self, keep_alive: bool) -> None:
        """Called on the loop once a response is fully handed to the transport."""
        raise NotImplementedError

    def drained(self) -> None:
        """Called once the output drained after ``waiting_drain`` was set: go on with
        the next request (a client that does not read gets no more answers queued)."""

    def busy_in_thread(self) -> bool:
        """Whether an app thread owns the result right now (it closes it itself)."""
        return self.can_write is not None and self.busy

    # writing: during a batch of apps, sends wait for the batch's end ----------

    def _send(self, data: bytes) -> None:
        ctx = self.ctx
        if ctx.batch_running:
            ctx.writes.append((self.transport, data))
        else:
            assert self.transport is not None
            self.transport.write(data)

    def _close(self) -> None:
        """Close after what was sent (deferred sends included)."""
        ctx = self.ctx
        if ctx.batch_running:
            ctx.writes.append((self.transport, None))
        elif self.transport is not None:
            self.transport.close()

    # running the app --------------------------------------------------------

    def run_app(self, environ: dict[str, Any], response: Response) -> None:
        """Call the app for one request: on the loop, or on the thread pool."""
        self.busy = True
        self.environ = environ
        self.response = response
        executor = self.executor
        if executor is not None:
            self.can_write = threading.Event()
            if not self.write_paused:
                self.can_write.set()
            response.write = self._write_from_thread
            self.ctx.thread_request_started(self)
            executor.submit(self._run_in_thread, environ, response)
            return
        try:
            result = self.app(environ, response.start_response)
        except Exception:
            self._app_failed("application raised")
            return
        self.result = result
        try:
            if type(result) is list and not response.headers_sent:
                self._send_whole(result, response)
                return
            if type(result) is FileWrapper and not response.headers_sent:
                fd = result.fileno()
                if fd is not None and self._start_sendfile(result, fd, response):
                    return
            self.iterator = iter(result)
        except Exception:
            self._app_failed("application result failed")
            return
        self._pump()

    def _send_whole(self, result: list[bytes], response: Response) -> None:
        # The common case: the whole body is known, so one write carries it all.
        body = result[0] if len(result) == 1 else b"".join(result)
        if type(body) is not bytes:
            # checked before the head is built, so a bad item still gets a 500
            body = b"".join((body,))
        ctx = self.ctx
        head = response.encode_head(ctx.defaults, len(body))
        transport = self.transport
        assert transport is not None
        limit = response.content_length
        if response.body_allowed and (limit is None or limit == len(body)):
            response.bytes_sent = len(body)
            self._send(head + body)
            ctx.requests += 1
            ctx.tx += len(head) + len(body)
            ctx.status_counts[response.status_code // 100] += 1
            # Nothing is left to frame, close or check: finish in place.
            self.result = None
            if ctx.access_log is not None:
                self._log_access(response)
            self.busy = False
            self.response_done(response.keep_alive and not ctx.stopping)
            return
        self._send(head + response.frame(body) if response.body_allowed else head)
        self._finish()

    def _write_from_app(self, data: bytes) -> None:
        """The ``write()`` callable for apps run on the loop thread."""
        response = self.response
        assert response is not None and self.transport is not None
        if not response.headers_sent:
            self._send(response.encode_head(self.ctx.defaults, None))
        payload = response.frame(data)
        if payload:
            self._send(payload)

    def _pump(self) -> None:
        iterator = self.iterator
        response = self.response
        transport = self.transport
        if iterator is None or response is None or transport is None:
            return
        try:
            if response.head_only and not response.headers_sent:
                self._measure_head_body(iterator, response, transport)
                return
            ctx = self.ctx
            while not self.write_paused:
                if self.closed:
                    return
                if ctx.batch_running and response.bytes_sent > BATCH_SEND_LIMIT:
                    # Sends are held during a batch, so no back-pressure reaches
                    # us there: stream the rest from the loop, where it does.
                    self.loop.call_soon(self._pump)
                    return
                chunk = next(iterator)
                if not response.headers_sent:
                    if not isinstance(chunk, bytes | bytearray | memoryview):
                        # refuse before the head goes out, so the client gets a 500
                        raise ResponseError(f"the app produced {type(chunk).__name__}, not bytes")
                    # Head and first piece in one write: one syscall, one packet.
                    head = response.encode_head(self.ctx.defaults, None)
                    self._send(head + response.frame(chunk))
                    continue
                payload = response.frame(chunk)
                if payload:
                    self._send(payload)
        except StopIteration:
            self.iterator = None
            self._finish()
        except Exception:
            self.iterator = None
            self._app_failed("application iterator raised")

    def _measure_head_body(
        self, iterator: Iterator[bytes], response: Response, transport: asyncio.Transport
    ) -> None:
        """HEAD: run the body to learn its length (as GET would send it), up to a bound."""
        size = 0
        for chunk in iterator:
            size += len(chunk)
            if size > HEAD_MEASURE_LIMIT:
                # Too long to measure: no length, and the connection closes after.
                self._send(response.encode_head(self.ctx.defaults, None))
                break
        else:
            self._send(response.encode_head(self.ctx.defaults, size))
        self.iterator = None
        self._finish()

    def _finish(self) -> None:
        response = self.response
        transport = self.transport
        assert response is not None and transport is not None
        if not response.headers_sent:
            try:
                self._send(response.encode_head(self.ctx.defaults, 0))
            except ResponseError as exc:
                self._app_failed(str(exc))
                return
        tail = response.end()
        if tail:
            self._send(tail)
        if response.truncated:
            error_log.error(
                "%s: application sent more than its Content-Length", self._request_line()
            )
        elif not response.keep_alive and response.content_length is not None:
            if response.bytes_sent < response.content_length and response.body_allowed:
                error_log.error(
                    "%s: application sent %d of %d bytes announced",
                    self._request_line(),
                    response.bytes_sent,
                    response.content_length,
                )
        self._close_result()
        self._log_access(response)
        ctx = self.ctx
        ctx.requests += 1
        ctx.tx += response.bytes_sent
        ctx.status_counts[response.status_code // 100 % 6] += 1
        self.busy = False
        self.response_done(response.keep_alive and not ctx.stopping)

    def _close_result(self) -> None:
        result = self.result
        self.result = None
        if result is not None:
            try:
                close_result(result)
            except Exception:
                error_log.exception("%s: result.close() raised", self._request_line())

    def _app_failed(self, what: str) -> None:
        """Log the traceback (never sent to the client); 500 if no head went out, else abort."""
        error_log.exception("%s: %s", self._request_line(), what)
        ctx = self.ctx
        ctx.requests += 1
        ctx.exceptions += 1
        ctx.status_counts[5] += 1
        response = self.response
        self._close_result()
        self.busy = False
        transport = self.transport
        if transport is None or self.closed:
            return
        if response is not None and not response.headers_sent:
            self._send(
                error_response("500 Internal Server Error", self.ctx.defaults, self.raw_response)
            )
            if response is not None:
                response.status_code = 500
                self._log_access(response)
        # After a partial body the stream is broken: closing is the only signal left.
        self._close()

    def _request_line(self) -> str:
        environ = self.environ or {}
        return f'"{environ.get("REQUEST_METHOD", "-")} {environ.get("REQUEST_URI", "-")}"'

    def _log_access(self, response: Response) -> None:
        access = self.ctx.access_log
        if access is not None and self.environ is not None:
            access.log(self.environ, response.status_code, response.bytes_sent)

    # sendfile for wsgi.file_wrapper -----------------------------------------

    def _start_sendfile(self, wrapper: FileWrapper, fd: int, response: Response) -> bool:
        transport = self.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            size = os.fstat(fd).st_size - offset
        except OSError:
            return False
        head = response.encode_head(
            self.ctx.defaults, size if response.content_length is None else None
        )
        transport.write(head)
        count = size if response.content_length is None else min(size, response.content_length)
        if not response.body_allowed or count <= 0:
            self._finish()
            return True
        # Count the bytes as the framing's own; sendfile moves them behind its back.
        response.bytes_sent = count
        # A duplicate fd lets the loop watch writability without touching the
        # transport's own registration (uvloop has no loop.sendfile).
        out_fd = os.dup(sock.fileno())
        self.sendfile_state = (out_fd, fd, offset)
        self._sendfile_end = offset + count
        self.loop.add_writer(out_fd, self._sendfile_step)
        return True

    def _sendfile_step(self) -> None:
        state = self.sendfile_state
        transport = self.transport
        if state is None or transport is None:
            return
        if transport.get_write_buffer_size():
            return  # the head is still queued in the transport: keep order
        out_fd, in_fd, offset = state
        try:
            while offset < self._sendfile_end:
                sent = os.sendfile(out_fd, in_fd, offset, min(self._sendfile_end - offset, 1 << 20))
                if sent == 0:
                    break
                offset += sent
        except BlockingIOError:
            self.sendfile_state = (out_fd, in_fd, offset)
            return
        except OSError as exc:
            error_log.info("%s: sendfile failed: %s", self._request_line(), exc)
            self._stop_sendfile()
            self._close_result()
            transport.close()
            return
        self._stop_sendfile()
        if offset < self._sendfile_end:
            # The file shrank under us: the announced length cannot be met.
            assert self.response is not None
            self.response.keep_alive = False
        self._finish()

    def _stop_sendfile(self) -> None:
        state = self.sendfile_state
        if state is not None:
            self.sendfile_state = None
            self.loop.remove_writer(state[0])
            os.close(state[0])

    # threaded mode ------------------------------------------------------------

    def _run_in_thread(self, environ: dict[str, Any], response: Response) -> None:
        """Runs on a pool thread: call the app and send its result through the loop."""
        result: Any = None
        failed = False
        try:
            result = self.app(environ, response.start_response)
            if type(result) is list and not response.headers_sent:
                body = b"".join(result)
                head = response.encode_head(self.ctx.defaults, len(body))
                self._send_from_thread(head + response.frame(body))
            elif response.head_only and not response.headers_sent:
                size = 0
                for chunk in result:
                    size += len(chunk)
                    if size > HEAD_MEASURE_LIMIT:
                        break
                self._send_from_thread(
                    response.encode_head(
                        self.ctx.defaults, size if size <= HEAD_MEASURE_LIMIT else None
                    )
                )
            else:
                for chunk in result:
                    if self.closed:
                        break
                    if not response.headers_sent and not isinstance(
                        chunk, bytes | bytearray | memoryview
                    ):
                        raise ResponseError(f"the app produced {type(chunk).__name__}, not bytes")
                    self._write_from_thread(chunk)
        except Exception:
            failed = True
            error_log.exception("%s: application raised", self._request_line())
        finally:
            if result is not None:
                try:
                    close_result(result)
                except Exception:
                    error_log.exception("%s: result.close() raised", self._request_line())
        self.loop.call_soon_threadsafe(self._thread_done, failed)

    def _write_from_thread(self, data: bytes) -> None:
        response = self.response
        assert response is not None
        if not response.headers_sent:
            self._send_from_thread(response.encode_head(self.ctx.defaults, None))
        payload = response.frame(data)
        if payload:
            self._send_from_thread(payload)

    def _send_from_thread(self, data: bytes) -> None:
        can_write = self.can_write
        assert can_write is not None
        # Back-pressure: wait while the transport is above its high-water mark.
        while not can_write.wait(1.0):
            if self.closed:
                return
        if self.closed:
            return
        self.loop.call_soon_threadsafe(self._transport_write, data)

    def _transport_write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _thread_done(self, failed: bool) -> None:
        self.can_write = None
        try:
            if self.closed:
                self.busy = False
                return
            if failed:
                self.busy = False
                self._app_failed_after_thread()
                return
            self._finish()
        finally:
            # after _finish counted it: max-requests sees this request
            self.ctx.thread_request_done(self)

    def _app_failed_after_thread(self) -> None:
        # counted as _app_failed counts a failure on the loop (stats, metrics, max-requests)
        ctx = self.ctx
        ctx.requests += 1
        ctx.exceptions += 1
        ctx.status_counts[5] += 1
        response = self.response
        transport = self.transport
        if transport is None:
            return
        if response is not None and not response.headers_sent:
            transport.write(
                error_response("500 Internal Server Error", self.ctx.defaults, self.raw_response)
            )
            response.status_code = 500
            self._log_access(response)
        transport.close()
