"""The current request as harakiri, ``gantry top``/stats and the metrics see it.

- issue 19 #6: a uwsgi request (what every request is under ``gantry up``) was
  recorded as 'uwsgi request'; its vars carry REQUEST_METHOD and REQUEST_URI,
  recorded now as ``--http`` records its request line, for nginx's packets and
  for Gantry's own;
- issue 19 #11: with ``--threads N`` no request was ever recorded (the slot went
  idle as soon as the request was handed to a thread): harakiri never fired, the
  worker showed idle and the average time was the hand-off's (0.59 ms for 5 s);
- issue 19 #13: with threads, ``--max-requests 10`` recycled after 11.
Each against a real ``gantry serve`` master, over real sockets.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gantry.protocol.uwsgi import GANTRY_MODIFIER2, encode_packet, pack_header
from gantry.stats.top import fetch
from tests.process import GantryServer, free_port, http_get, read_all
from tests.process import poll as _wait


class Master:
    """A ``gantry serve`` master with a stats socket (and more sockets as asked)."""

    def __init__(self, workdir: Path, *args: str, http: bool = True) -> None:
        self.stats_port = free_port()
        self.uwsgi_port = free_port()
        self.metrics_port = free_port()
        self.server = GantryServer(
            "tests.apps_hostile:app",
            "--uwsgi-socket", f"127.0.0.1:{self.uwsgi_port}",
            "--stats", f"127.0.0.1:{self.stats_port}",
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            *args,
            log_path=workdir / "server.log",
        )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """One stats document (uWSGI's format)."""
        return fetch(f"127.0.0.1:{self.stats_port}")

    def busy_workers(self) -> list[dict[str, Any]]:
        """The workers the stats show busy."""
        return [w for w in self.stats()["workers"] if w["status"] == "busy"]

    def metrics(self) -> str:
        """The Prometheus text."""
        return http_get(self.metrics_port, "/metrics")[1].decode()

    def ready(self, workers: int) -> None:
        """Wait until the stats show ``workers`` workers."""

        def up() -> bool:
            try:
                return len(self.stats()["workers"]) == workers
            except OSError:
                return False  # the stats socket is not listening yet

        assert _wait(up, 10), "workers not up"


def _nginx_packet(uri: bytes) -> bytes:
    path, _, query = uri.partition(b"?")
    return encode_packet(
        [
            (b"QUERY_STRING", query),
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", uri),
            (b"PATH_INFO", path),
            (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"HTTP_HOST", b"a"),
        ]
    )


def _gantry_packet(uri: str) -> bytes:
    path, _, query = uri.partition("?")
    fields = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": uri,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "a",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "1",
        "HTTP_HOST": "a",
    }
    block = "\0".join(item for pair in fields.items() for item in pair).encode("latin-1")
    return pack_header(0, len(block), GANTRY_MODIFIER2) + block


# uwsgi requests: the request line ------------------------------------------------------


@pytest.fixture(scope="module")
def uwsgi_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """One worker, app on the loop thread, harakiri 2 s."""
    master = Master(tmp_path_factory.mktemp("uwsgi-line"), "--workers", "1", "--harakiri", "2")
    with master.server:
        master.ready(1)
        yield master


def test_uwsgi_request_line_in_stats(uwsgi_master: Master) -> None:
    """nginx's packet: the stats show 'GET /sleep/1.5?x' while it runs."""
    with socket.create_connection(("127.0.0.1", uwsgi_master.uwsgi_port), timeout=10) as sock:
        sock.sendall(_nginx_packet(b"/sleep/1.5?x"))
        busy = _wait(uwsgi_master.busy_workers, 1.4)
        answer = read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert busy and busy[0]["current_request"] == "GET /sleep/1.5?x"


def test_uwsgi_harakiri_names_the_request(uwsgi_master: Master) -> None:
    """Gantry's own packet (its front's, under gantry up): harakiri logs its line."""
    with socket.create_connection(("127.0.0.1", uwsgi_master.uwsgi_port), timeout=10) as sock:
        sock.sendall(_gantry_packet("/sleep/30?g"))
        started = time.monotonic()
        assert read_all(sock, 8) == b""  # the worker died under the request
    assert time.monotonic() - started < 6
    line = _wait(
        lambda: [x for x in uwsgi_master.server.log_text().splitlines() if "HARAKIRI" in x], 10
    )
    assert line and "'GET /sleep/30?g'" in line[0], line


# threads: tracked like the loop thread ---------------------------------------------------


@pytest.fixture(scope="module")
def threaded_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """Two workers of two app threads, harakiri 2 s."""
    master = Master(
        tmp_path_factory.mktemp("threads"),
        "--workers", "2", "--threads", "2", "--harakiri", "2",
    )  # fmt: skip
    with master.server:
        master.ready(2)
        yield master


def test_threaded_request_shows_busy_and_counts_its_time(threaded_master: Master) -> None:
    """A 1.2 s request on a thread: its worker busy with its line in the stats and
    gantry_worker_busy 1 in the metrics; then its average time is about 1.2 s."""
    conn = http.client.HTTPConnection("127.0.0.1", threaded_master.server.port, timeout=10)
    conn.request("GET", "/sleep/1.2?t")
    busy = _wait(threaded_master.busy_workers, 1.0)
    metrics = threaded_master.metrics()
    response = conn.getresponse()
    assert response.status == 200
    response.read()
    assert busy and busy[0]["current_request"] == "GET /sleep/1.2?t"
    assert busy[0]["current_request_seconds"] >= 0
    assert any(
        line.startswith("gantry_worker_busy{") and line.endswith(" 1")
        for line in metrics.splitlines()
    ), metrics
    pid = busy[0]["pid"]
    worker = _wait(
        lambda: [
            w for w in threaded_master.stats()["workers"] if w["pid"] == pid and w["requests"]
        ],
        10,
    )
    assert worker and worker[0]["avg_rt"] >= 1_000_000, worker


def test_threaded_app_exception_is_counted(threaded_master: Master) -> None:
    """An app raising on a thread: 500, and the stats count the request and the exception
    (a threaded failure was counted nowhere)."""
    before = sum(w["exceptions"] for w in threaded_master.stats()["workers"])
    conn = http.client.HTTPConnection("127.0.0.1", threaded_master.server.port, timeout=10)
    conn.request("GET", "/raise")
    assert conn.getresponse().status == 500
    assert _wait(
        lambda: sum(w["exceptions"] for w in threaded_master.stats()["workers"]) == before + 1, 10
    ), threaded_master.stats()["workers"]


def test_threaded_harakiri_fires(threaded_master: Master) -> None:
    """A 5 s request with --harakiri 2: the worker is killed, the log names the request."""
    with threaded_master.server.connect(timeout=10) as sock:
        sock.sendall(b"GET /sleep/5?h HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        answer = read_all(sock, 8)
    elapsed = time.monotonic() - started
    assert answer == b"" and elapsed < 4.5, (answer[:100], elapsed)
    assert "HARAKIRI" in threaded_master.server.log_text()
    assert "'GET /sleep/5?h'" in threaded_master.server.log_text()


# threads: max-requests ------------------------------------------------------------------


def test_threaded_max_requests_recycles_after_exactly_n(tmp_path: Path) -> None:
    """--threads 2 --max-requests 10, one worker, requests one after another: the
    first worker serves exactly 10.

    A connection made just as the old worker stops can be dropped unanswered (its
    accept is pending when the worker's drain finds no connection: worker.py's
    shutdown, outside this test's subject); such a request never reached the app,
    so it is sent again.
    """
    master = Master(tmp_path, "--workers", "1", "--threads", "2", "--max-requests", "10")
    pids = []
    with master.server:
        master.ready(1)
        for _ in range(25):
            for _attempt in range(3):
                conn = http.client.HTTPConnection("127.0.0.1", master.server.port, timeout=10)
                try:
                    conn.request("GET", "/pid", headers={"Connection": "close"})
                    pids.append(conn.getresponse().read())
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError):
                    continue
                finally:
                    conn.close()
    assert len(pids) == 25
    assert pids.count(pids[0]) == 10, pids
