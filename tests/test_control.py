"""The control socket and `gantry ctl`, with real processes: a `gantry front` of two workers
in front of a real origin (tests/support_cache.py), `gantry ctl` run as a subprocess, and
each worker reached through a connection it holds (tests/support_control.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.process import (
    Front,
    Launcher,
    accepts,
    child_pids,
    descendant_pids,
    http_get,
    ready_workers,
    wait_for,
)
from tests.support_cache import Origin, cache_config
from tests.support_control import connection_to_each, ctl, fetch, start_ctl


def control_config(origin_port: int, folder: Path, zone: str = "", workers: int = 2) -> str:
    """A cached front with its control socket at ``folder/front.ctl``."""
    config = cache_config(origin_port, str(folder / "c"), zone, workers=workers)
    return config.replace("[front]\n", f'[front]\ncontrol = "{folder / "front.ctl"}"\n', 1)


def start_front(launch: Launcher, config: str, folder: Path) -> Front:
    """A started front whose control socket exists (the master binds it after the
    listen sockets, which accept before then)."""
    front = launch.front(config)
    assert wait_for(lambda: accepts(folder / "front.ctl")), "no control socket"
    return front


def publish(origin: Origin, version: str, paths: tuple[str, ...]) -> None:
    for path in paths:
        tag = "shop-items" if path.startswith("/shop/") else "posts"
        origin.answers[path] = (
            200,
            [("Cache-Control", "max-age=600"), ("Surrogate-Key", f"all {tag}")],
            f"{path} {version}".encode(),
        )


def test_purge_by_url_prefix_and_tag_reaches_both_workers(
    launch: Launcher, short_tmp: Path
) -> None:
    paths = ("/blog/a", "/blog/b", "/shop/c", "/shop/d")
    with Origin() as origin:
        publish(origin, "v1", paths)
        front = start_front(
            launch, control_config(origin.port, short_tmp, "lock = true\n"), short_tmp
        )
        sock = str(short_tmp / "front.ctl")
        conns = connection_to_each(front.port, ready_workers(front.pid, 2))
        base = f"http://127.0.0.1:{front.port}"
        for path in paths:
            for conn in conns.values():  # each worker holds it in its memory tier
                fetch(conn, path)
                assert fetch(conn, path)[1].startswith("gantry; hit")
        zone = json.loads(ctl("-s", sock, "status", "--json").stdout)["zones"]["pages"]
        assert zone["entries"] == len(paths) and zone["bytes"] > 0
        publish(origin, "v2", paths)

        done = ctl("-s", sock, "purge", f"{base}/blog/a")
        assert (done.returncode, done.stdout) == (0, "purged 1 entry (pages 1)\n"), done.stderr
        for conn in conns.values():
            assert fetch(conn, "/blog/a")[2] == b"/blog/a v2"
            assert fetch(conn, "/blog/b")[2] == b"/blog/b v1"  # not under the URL

        done = ctl("-s", sock, "purge", "--prefix", f"{base}/blog/")
        assert (done.returncode, done.stdout) == (0, "purged 2 entries (pages 2)\n"), done.stderr
        for conn in conns.values():
            assert fetch(conn, "/blog/b")[2] == b"/blog/b v2"

        done = ctl("-s", sock, "purge", "--tag", "shop-items")
        assert (done.returncode, done.stdout) == (0, "purged 2 entries (pages 2)\n"), done.stderr
        for conn in conns.values():
            assert fetch(conn, "/shop/c")[2] == b"/shop/c v2"
            assert fetch(conn, "/shop/d")[2] == b"/shop/d v2"

        # a URL ending in '*' is a prefix, as PURGE reads it
        assert ctl("-s", sock, "purge", f"{base}/shop/*").stdout == "purged 2 entries (pages 2)\n"
        none = ctl("-s", sock, "purge", f"{base}/nothing")
        assert none.returncode == 1 and none.stdout.startswith("nothing matched"), none
        assert ctl("-s", sock, "purge", "--zone", "other", "--tag", "x").returncode == 2
        for conn in conns.values():
            conn.close()


def test_soft_purge_serves_stale_when_the_origin_is_down_a_hard_purge_misses(
    launch: Launcher, short_tmp: Path
) -> None:
    origin = Origin()
    with origin:
        for path in ("/soft", "/hard"):
            origin.answers[path] = (200, [("Cache-Control", "max-age=600")], b"kept")
        front = start_front(
            launch, control_config(origin.port, short_tmp, 'use_stale = ["error"]\n'), short_tmp
        )
        conns = connection_to_each(front.port, ready_workers(front.pid, 2))
        for conn in conns.values():
            for path in ("/soft", "/hard"):
                fetch(conn, path)
                assert fetch(conn, path)[1].startswith("gantry; hit")
        base = f"http://127.0.0.1:{front.port}"
        sock = str(short_tmp / "front.ctl")
        soft = ctl("-s", sock, "purge", "--soft", f"{base}/soft")
        assert (soft.returncode, soft.stdout) == (0, "marked stale 1 entry (pages 1)\n")
        hard = ctl("-s", sock, "purge", f"{base}/hard")
        assert (hard.returncode, hard.stdout) == (0, "purged 1 entry (pages 1)\n")
    # the origin is gone: each worker serves the soft-purged entry stale, and misses the other
    for conn in conns.values():
        status, cache_status, body = fetch(conn, "/soft")
        assert (status, body) == (200, b"kept") and "fwd=stale" in cache_status
        assert fetch(conn, "/hard")[0] == 502
        conn.close()


def test_ctl_finds_the_socket_in_the_config_and_says_why_it_cannot(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        front = start_front(launch, control_config(origin.port, short_tmp, workers=1), short_tmp)
        done = ctl("-c", str(front.path), "status", "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["ok"] and status["pid"] == front.pid and status["generation"] == 1
        assert [w["pid"] for w in status["workers"]] == sorted(child_pids(front.pid))
        assert status["zones"]["pages"]["entries"] == 0
        text = ctl("-c", str(front.path), "status").stdout
        assert text.startswith(f"front master {front.pid}, generation 1, 1 workers\n")

    plain = short_tmp / "plain.toml"
    plain.write_text('[front]\nlisten = ["127.0.0.1:1"]\n')
    done = ctl("-c", str(plain), "status")
    assert done.returncode == 2 and "front.control: not set" in done.stderr
    missing = ctl("-s", str(short_tmp / "none.ctl"), "status")
    assert missing.returncode == 2 and "no control socket at" in missing.stderr
    stale = short_tmp / "stale.ctl"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(stale))  # a file nobody listens on: refused
    refused = ctl("-s", str(stale), "status")
    assert refused.returncode == 2 and "nothing answers on" in refused.stderr
    assert ctl("-s", str(stale), "purge").returncode == 2  # no URL, prefix or tag


def ask_raw(path: Path, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        try:
            sock.sendall(data)
        except BrokenPipeError:
            pass  # answered and closed before the whole of an oversized request went
        answer = b""
        while not answer.endswith(b"\n"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    return dict(json.loads(answer))


def test_bad_requests_get_an_error_answer_and_the_socket_survives_sighup(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        front = start_front(launch, control_config(origin.port, short_tmp), short_tmp)
        path = short_tmp / "front.ctl"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        bad = ask_raw(path, b"{not json\n")
        assert bad["ok"] is False and "not JSON" in str(bad["error"])
        big = ask_raw(path, b'{"command": "status", "x": "' + b"y" * 100_000 + b'"}\n')
        assert big["ok"] is False and "too large" in str(big["error"])
        unknown = ask_raw(path, b'{"command": "reboot"}\n')
        assert unknown == {
            "ok": False,
            "error": "no command 'reboot' (known: block, blocked, purge, status, unblock)",
        }
        wrong = ask_raw(path, b'{"command": "purge", "url": 3}\n')
        assert wrong["ok"] is False and "url: expected a non-empty string" in str(wrong["error"])
        old = ready_workers(front.pid, 2)

        os.kill(front.pid, signal.SIGHUP)
        assert wait_for(lambda: child_pids(front.pid).isdisjoint(old) and
                        len(child_pids(front.pid)) == 2, limit=30)  # fmt: skip
        status = ask_raw(path, b'{"command": "status"}\n')
        assert status["ok"] is True and status["generation"] == 2
        assert ctl("-s", str(path), "purge", "--tag", "x").returncode == 1
    front.stop()
    assert not path.exists()  # removed at exit


def test_a_slow_purge_and_a_silent_client_leave_the_master_responsive(
    launch: Launcher, short_tmp: Path
) -> None:
    from gantry.config.front_model import CacheZone
    from gantry.front.cache.policy import Freshness
    from gantry.front.cache.store import CacheStore, Entry

    entries = 20_000
    store = CacheStore(CacheZone(name="pages", path=str(short_tmp / "c")))
    for i in range(entries):
        writer = store.writer(
            Entry(key=f"httpbig/{i}", status=200, reason=b"OK", fields=[], request_time=0.0,
                  response_time=time.time(), initial_age=0.0, freshness=Freshness(600.0))
        )  # fmt: skip
        writer.write(b"x" * 64)
        assert writer.commit() is not None
    with Origin() as origin:
        front = start_front(launch, control_config(origin.port, short_tmp), short_tmp)
        path = short_tmp / "front.ctl"
        workers = ready_workers(front.pid, 2)
        purge = start_ctl("-s", str(path), "purge", "--prefix", "httpbig/")
        silent = [socket.socket(socket.AF_UNIX) for _ in range(40)]
        try:
            # under way once files go; until the last one goes, the loop must answer
            assert wait_for(lambda: files_in(short_tmp / "c") < entries, limit=60)
            # more silent clients than the socket keeps open: the oldest of them go, not
            # the purge waiting for its answer
            for sock in silent:
                sock.connect(str(path))
            started = time.monotonic()
            status = ctl("-s", str(path), "status", "--json", timeout=60)
            answered_in = time.monotonic() - started
            left_at_status = files_in(short_tmp / "c")
            assert status.returncode == 0, status.stderr
            victim = min(workers)
            before = child_pids(front.pid)  # the workers, and the purge's own process
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            assert wait_for(
                lambda: (
                    victim not in child_pids(front.pid) and bool(child_pids(front.pid) - before)
                ),
                limit=60,
                interval=0.01,
            )
            replaced_in = time.monotonic() - killed
            left_at_respawn = files_in(short_tmp / "c")
            out, err = purge.communicate(timeout=300)
        finally:
            if purge.poll() is None:
                purge.kill()
                purge.wait()
            for sock in silent:
                sock.close()
        assert purge.returncode == 0, err
        assert out == f"purged {entries} entries (pages {entries})\n"
        # the status came back and the worker was replaced while the purge went on
        assert left_at_status > 0 and left_at_respawn > 0, (left_at_status, left_at_respawn)
        assert answered_in < 5.0 and replaced_in < 2.0, (answered_in, replaced_in)


def files_in(zone: Path) -> int:
    """Entry files left in a zone's folders."""
    return sum(len(os.listdir(folder)) for folder in zone.glob("??") if folder.is_dir())


def test_gantry_up_answers_on_the_stack_control_socket(launch: Launcher, short_tmp: Path) -> None:
    sock = short_tmp / "stack.ctl"
    config = f"""[stack]
control = "{sock}"

[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.cache.pages]
path = "{short_tmp / "c"}"

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "web"
cache = "pages"

[[app]]
name = "web"
module = "tests.apps_cache:app"
"""
    up = launch.up(config)
    assert wait_for(sock.exists)
    first = http_get(up.port, "/page")[1]
    assert http_get(up.port, "/page")[1] == first  # stored
    done = ctl("-c", str(up.config_path), "purge", f"http://127.0.0.1:{up.port}/page")
    assert (done.returncode, done.stdout) == (0, "purged 1 entry (pages 1)\n"), done.stderr
    assert http_get(up.port, "/page")[1] != first
    status = json.loads(ctl("-c", str(up.config_path), "status", "--json").stdout)
    assert status["ok"] and len(status["workers"]) == 1
    up.stop()
    assert not sock.exists()


def test_a_missing_folder_is_refused_and_a_stale_socket_replaced(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        config = control_config(origin.port, short_tmp / "absent", workers=1)
        front = Front(config, short_tmp)  # not started: it must refuse at once
        process = subprocess.run(
            front.command, env=front.env, capture_output=True, text=True, timeout=30
        )
        assert process.returncode == 2
        assert f"the folder {short_tmp / 'absent'} does not exist" in process.stderr

        stale = short_tmp / "front.ctl"
        with socket.socket(socket.AF_UNIX) as left:
            left.bind(str(stale))  # left behind by a front that was killed
        start_front(launch, control_config(origin.port, short_tmp, workers=1), short_tmp)
        assert ctl("-s", str(stale), "status").returncode == 0


def test_a_new_front_generation_of_gantry_up_answers_on_the_same_socket(
    launch: Launcher, short_tmp: Path
) -> None:
    sock = short_tmp / "stack.ctl"
    config = f"""[stack]
control = "{sock}"

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[app]]
name = "web"
module = "tests.apps_cache:app"
"""
    up = launch.up(config)
    assert wait_for(lambda: accepts(sock))
    first = json.loads(ctl("-s", str(sock), "status", "--json").stdout)
    assert len(first["workers"]) == 1
    text = up.config_path.read_text().replace("workers = 1", "workers = 2")
    up.config_path.write_text(text)
    os.kill(up.pid, signal.SIGHUP)  # the front's table changed: a new front replaces it

    def new_front() -> bool:
        done = ctl("-s", str(sock), "status", "--json")
        answer = json.loads(done.stdout) if done.returncode == 0 else {}
        return answer.get("pid") not in (None, first["pid"]) and len(answer["workers"]) == 2

    assert wait_for(new_front, limit=60, interval=0.2)
    assert wait_for(lambda: first["pid"] not in descendant_pids(up.pid), limit=60)
    assert ctl("-s", str(sock), "status").returncode == 0
