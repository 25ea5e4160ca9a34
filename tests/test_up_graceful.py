"""`gantry up` gives its front [stack] graceful_timeout to stop, as it gives every part:
the front's own default (10 s) no longer outlives the supervisor's patience."""

from __future__ import annotations

import http.client
import signal
import threading
import time

from tests.process import REPO, Launcher, wait_for

STACK = """
[stack]
graceful_timeout = 1

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "slow"

[[app]]
name = "slow"
module = "tests.apps_process:app"
chdir = "REPO"
workers = 1
graceful_timeout = 30
"""


def test_the_front_stops_within_the_stack_graceful_timeout(launch: Launcher) -> None:
    up = launch.up(STACK.replace("REPO", str(REPO)))
    closed_after: list[float] = []
    sent = threading.Event()

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=30)
        try:
            conn.request("GET", "/sleep?20")
            sent.set()
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            closed_after.append(time.monotonic())
            conn.close()

    def pid_answers() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
        try:
            conn.request("GET", "/pid")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    assert wait_for(pid_answers, 30), up.log_text()
    client = threading.Thread(target=slow_request)
    client.start()
    assert sent.wait(10)
    time.sleep(0.5)  # the stimulus: the request is in the app when the stop comes
    assert up.process is not None
    stopped_at = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    client.join(30)
    # 1 s of grace, then the front closes it; the front's own 10 s would have run until
    # the supervisor killed it (graceful_timeout + 5 s)
    assert closed_after and closed_after[0] - stopped_at < 4.0, up.log_text()
