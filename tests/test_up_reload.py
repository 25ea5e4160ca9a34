"""SIGHUP of `gantry up` re-reads gantry.toml: changed parts get a new generation beside
the old one on the same sockets, with real processes and no failed request."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from pathlib import Path

from gantry.stats.top import fetch
from tests.process import GantryUp, free_port
from tests.process import http_get as _get
from tests.process import wait_for as _wait
from tests.support_up import hello_load

APP = """
def app(environ, start_response):
    path = environ["PATH_INFO"]
    body = b"Hello World!" if path == "/hello" else ("ANSWER " + path).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def _apps(tmp_path: Path) -> Path:
    """Two WSGI apps that differ only in their answer off /hello: app_a and app_b."""
    site = tmp_path / "site"
    site.mkdir()
    for name in ("a", "b"):
        (site / f"app_{name}.py").write_text(APP.replace("ANSWER", name.upper()))
    return site


def _stack(
    tmp_path: Path,
    *,
    listen: str = '"127.0.0.1:FRONT_PORT"',
    module: str = "app_a:app",
    workers: int | str = 1,
    locations: str = "",
    pools: str = "",
    main_extra: str = "",
) -> str:
    site = tmp_path / "site"
    return (
        f'[stack]\nruntime_dir = "{tmp_path / "run"}"\nstats = "{tmp_path / "stack.stats"}"\n'
        "graceful_timeout = 5\n"
        f"[front]\nlisten = [{listen}]\nworkers = 1\n"
        f"[[front.server]]\ndefault = true\n{locations}"
        '[[front.server.location]]\npath = "/"\nproxy = "main"\n'
        f'[[app]]\nname = "main"\nmodule = "{module}"\nchdir = "{site}"\n'
        f"workers = {workers}\ngraceful_timeout = 5\n{main_extra}"
        f"{pools}"
    )


def _write(up: GantryUp, config: str) -> None:
    """Replace gantry.toml at once (a reload under way never reads half a file)."""
    new = up.config_path.with_suffix(".new")
    new.write_text(config.replace("FRONT_PORT", str(up.port)))
    new.replace(up.config_path)


def _reload(up: GantryUp, config: str, expect: str = "applied") -> None:
    """Write the new file, SIGHUP, and wait for the supervisor's verdict."""
    applied, refused = up.log_text().count(" applied\n"), up.log_text().count("not applied")
    _write(up, config)
    assert up.process is not None
    up.process.send_signal(signal.SIGHUP)

    def verdict() -> bool:
        log = up.log_text()
        return log.count(" applied\n") > applied or log.count("not applied") > refused

    assert _wait(verdict, 15), up.log_text()[-3000:]
    got = "applied" if up.log_text().count(" applied\n") > applied else "not applied"
    assert got == expect, up.log_text()[-3000:]


def _answer(port: int, path: str) -> bytes | None:
    try:
        status, body = _get(port, path)
    except OSError:
        return None
    return body if status == 200 else None


def _comes(port: int, path: str, expected: bytes) -> bool:
    """Whether ``path`` answers ``expected`` within 5 s: the old generation of a replaced
    pool may answer a last request on a kept connection while it stops."""
    return _wait(lambda: _answer(port, path) == expected, 5)


def _pools(tmp_path: Path) -> dict[str, dict[str, object]]:
    return {pool["name"]: pool for pool in fetch(str(tmp_path / "stack.stats"))["pools"]}


def _alive(pid: object) -> bool:
    assert isinstance(pid, int)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(tmp_path: Path, config: str, **kwargs: object) -> GantryUp:
    up = GantryUp(tmp_path, config, **kwargs)
    up.start()
    if not _wait(lambda: _answer(up.port, "/which") == b"A /which"):
        up.stop()
        raise AssertionError(up.log_text())
    return up


def test_a_changed_pool_and_location_apply_under_load(tmp_path: Path) -> None:
    _apps(tmp_path)
    static = tmp_path / "static"
    static.mkdir()
    (static / "note.txt").write_text("a static note")
    notify_name = f"gantry-test/{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + notify_name)
        systemd.settimeout(10)
        own_http = free_port()  # the pool's own socket: the supervisor holds it too
        main_extra = f'http = ["127.0.0.1:{own_http}"]\n'
        config = _stack(tmp_path, main_extra=main_extra)
        up = _start(tmp_path, config, env={"NOTIFY_SOCKET": "@" + notify_name})
        try:
            before = _pools(tmp_path)
            with hello_load(up.port, threads=3, limit=20) as load:
                assert _wait(lambda: load.ok > 20, 5)
                _reload(
                    up,
                    _stack(
                        tmp_path,
                        main_extra=main_extra,
                        module="app_b:app",
                        workers=2,
                        locations=f'[[front.server.location]]\npath = "/static/"\n'
                        f'alias = "{static}/"\n',
                    ),
                )
                assert _comes(up.port, "/which", b"B /which")
                assert _comes(up.port, "/static/note.txt", b"a static note")
                assert _comes(own_http, "/which", b"B /which")
                settled = load.ok
                assert _wait(lambda: load.ok > settled + 50, 10)
            assert load.failures == [], (load.failures[:5], up.log_text()[-6000:])
            after = _pools(tmp_path)
            for name in ("front", "main"):
                assert after[name]["generation"] == 2
                assert after[name]["pid"] != before[name]["pid"]
                assert _wait(lambda n=name: not _alive(before[n]["pid"]), 10)  # type: ignore[misc]
            assert after["main"]["workers"] == 2
            log = up.log_text()
            assert "app 'main': replaced by generation 2" in log
            assert "front: replaced by generation 2" in log
            # the old generations' files go with them
            current = {"front@2.stats", "main@2.stats", "main.sock", "stack@2.json"}
            assert _wait(lambda: set(os.listdir(tmp_path / "run")) == current, 10), os.listdir(
                tmp_path / "run"
            )
            # the supervisor still speaks to the NOTIFY_SOCKET it was given
            messages = []
            while b"RELOADING=1" not in b"".join(messages) or messages[-1].find(b"READY=1") < 0:
                messages.append(systemd.recv(4096))
            assert messages[0].startswith(b"READY=1")
            assert b"RELOADING=1" in messages[1] and b"READY=1" in messages[2]
        finally:
            code = up.stop()
    assert code == 0, up.log_text()
    assert os.listdir(tmp_path / "run") == []


def test_a_pool_added_then_removed(tmp_path: Path) -> None:
    _apps(tmp_path)
    base = _stack(tmp_path)
    up = _start(tmp_path, base)
    try:
        main_pid = _pools(tmp_path)["main"]["pid"]
        extra = (
            f'[[app]]\nname = "extra"\nmodule = "app_b:app"\nchdir = "{tmp_path / "site"}"\n'
            "graceful_timeout = 5\n"
        )
        location = '[[front.server.location]]\npath = "/extra/"\nproxy = "extra"\n'
        _reload(up, _stack(tmp_path, locations=location, pools=extra))
        assert _comes(up.port, "/extra/x", b"B /extra/x")
        assert _comes(up.port, "/which", b"A /which")
        pools = _pools(tmp_path)
        assert pools["main"]["pid"] == main_pid  # unchanged: reloaded in place
        assert "app 'main': unchanged, reloaded in place" in up.log_text()
        assert "app 'extra': added" in up.log_text()
        extra_pid = pools["extra"]["pid"]
        assert (tmp_path / "run" / "extra.sock").exists()

        _reload(up, base)
        assert _comes(up.port, "/extra/x", b"A /extra/x")  # "/" again
        assert "app 'extra': removed" in up.log_text()
        assert _wait(lambda: not _alive(extra_pid), 10), up.log_text()[-2000:]
        assert _wait(lambda: not (tmp_path / "run" / "extra.sock").exists(), 5)
        assert set(_pools(tmp_path)) == {"front", "main"}
    finally:
        assert up.stop() == 0, up.log_text()


def test_a_bad_file_keeps_the_running_configuration(tmp_path: Path) -> None:
    _apps(tmp_path)
    up = _start(tmp_path, _stack(tmp_path))
    config = up.config_path
    held = socket.create_server(("127.0.0.1", 0))  # a port the new file cannot have
    try:
        masters = {name: pool["pid"] for name, pool in _pools(tmp_path).items()}
        _reload(up, _stack(tmp_path).replace("[front]", "[front"), expect="not applied")
        assert f"{config}: line 5, column 7: invalid TOML" in up.log_text()
        _reload(up, _stack(tmp_path, workers='"many"'), expect="not applied")
        assert f"{config}: app[0].workers: expected an integer >= 1, got 'many'" in up.log_text()
        busy = f'"127.0.0.1:FRONT_PORT", "127.0.0.1:{held.getsockname()[1]}"'
        _reload(up, _stack(tmp_path, listen=busy), expect="not applied")
        assert "cannot bind: Address already in use" in up.log_text()
        # valid, but its application cannot be imported: the new generation dies
        _reload(up, _stack(tmp_path, module="no_such_module_here:app"), expect="not applied")
        assert "app 'main' generation 2: its application cannot be loaded" in up.log_text()
        assert up.process is not None and up.process.poll() is None
        assert _wait(lambda: not (tmp_path / "run" / "main@2.stats").exists(), 5)
        assert _answer(up.port, "/which") == b"A /which"
        assert {name: pool["pid"] for name, pool in _pools(tmp_path).items()} == masters
        # a good file is applied after all that
        _reload(up, _stack(tmp_path, module="app_b:app"))
        assert _comes(up.port, "/which", b"B /which")
    finally:
        held.close()
        assert up.stop() == 0, up.log_text()


def test_a_second_front_port_and_then_only_that_one(tmp_path: Path) -> None:
    _apps(tmp_path)
    up = _start(tmp_path, _stack(tmp_path))
    second = free_port()
    try:
        with hello_load(up.port, threads=2, limit=20) as load:
            assert _wait(lambda: load.ok > 20, 5)
            both = f'"127.0.0.1:FRONT_PORT", "127.0.0.1:{second}"'
            _reload(up, _stack(tmp_path, listen=both))
            assert _comes(second, "/which", b"A /which")
            settled = load.ok
            assert _wait(lambda: load.ok > settled + 50, 10)
        assert load.failures == [], (load.failures[:5], up.log_text()[-6000:])
        assert _comes(up.port, "/which", b"A /which")

        _reload(up, _stack(tmp_path, listen=f'"127.0.0.1:{second}"'))
        assert _comes(second, "/which", b"A /which")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", up.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        assert _wait(refused, 15), up.log_text()[-2000:]
    finally:
        assert up.stop() == 0, up.log_text()


def test_a_pool_with_its_own_stats_is_replaced_in_turn(tmp_path: Path) -> None:
    """Two masters cannot serve one stats address: the old generation stops first and
    requests wait in the pool's listen queue, which the supervisor holds open."""
    _apps(tmp_path)
    own = f'stats = "{tmp_path / "own.stats"}"\n'
    up = _start(tmp_path, _stack(tmp_path, main_extra=own))
    try:
        old = fetch(str(tmp_path / "own.stats"))["pid"]
        with hello_load(up.port, threads=3, limit=20) as load:
            assert _wait(lambda: load.ok > 20, 5)
            _reload(up, _stack(tmp_path, main_extra=own, module="app_b:app"))
            assert _comes(up.port, "/which", b"B /which")
            settled = load.ok
            assert _wait(lambda: load.ok > settled + 50, 10)
        assert load.failures == [], (load.failures[:5], up.log_text()[-6000:])
        assert "generation 1 stops before generation 2 starts" in up.log_text()
        assert fetch(str(tmp_path / "own.stats"))["pid"] not in (old, None)
        assert not _alive(old)
    finally:
        assert up.stop() == 0, up.log_text()


def test_sighups_in_a_row_and_a_stop_during_a_reload(tmp_path: Path) -> None:
    site = _apps(tmp_path)
    # a pool that takes 1 s to import: the second SIGHUP surely comes during the reload
    # (two SIGHUPs sent back to back may reach the supervisor as one)
    (site / "app_slow.py").write_text("import time\ntime.sleep(1.0)\n" + APP)
    up = _start(tmp_path, _stack(tmp_path))
    assert up.process is not None
    try:
        # a SIGHUP while a reload is under way is not lost: the last file wins
        _write(up, _stack(tmp_path, module="app_slow:app", workers=2))
        up.process.send_signal(signal.SIGHUP)
        assert _wait(lambda: "SIGHUP: re-reading" in up.log_text(), 5), up.log_text()[-3000:]
        _reload(up, _stack(tmp_path, module="app_b:app"))
        assert _wait(lambda: up.log_text().count(" applied\n") == 2, 10), up.log_text()[-3000:]
        assert "SIGHUP: a reload is under way" in up.log_text()
        assert _comes(up.port, "/which", b"B /which")
        assert _wait(lambda: _pools(tmp_path)["main"]["workers"] == 1, 5)
        # a stop in the middle of a reload stops the new generations too
        _write(up, _stack(tmp_path))
        up.process.send_signal(signal.SIGHUP)
        assert _wait(lambda: up.log_text().count("SIGHUP: re-reading") == 3, 5)
    finally:
        code = up.stop()
    assert code == 0, up.log_text()
    assert os.listdir(tmp_path / "run") == []


def test_the_demo_has_no_file_sighup_reloads_every_part(tmp_path: Path) -> None:
    with GantryUp(tmp_path) as up:
        assert _wait(lambda: _answer(up.port, "/hello") == b"Hello World!"), up.log_text()
        assert up.process is not None
        up.process.send_signal(signal.SIGHUP)
        assert _wait(lambda: "(no file to re-read)" in up.log_text(), 5)
        assert _wait(lambda: up.log_text().count("reload done") == 2, 10), up.log_text()[-2000:]
        assert _answer(up.port, "/hello") == b"Hello World!"
        assert up.stop() == 0


def test_systemd_hears_ready_once_every_part_is(tmp_path: Path) -> None:
    """READY=1 goes to systemd when the parts have said it, not when they were started: a
    pool whose app takes 1 s to import holds it back, and after it nothing waits."""
    site = _apps(tmp_path)
    (site / "app_slow.py").write_text(
        "import time\ntime.sleep(1.0)\n" + APP.replace("ANSWER", "SLOW")
    )
    notify_name = f"gantry-test/{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + notify_name)
        systemd.settimeout(15)
        up = GantryUp(
            tmp_path,
            _stack(tmp_path, module="app_slow:app"),
            env={"NOTIFY_SOCKET": "@" + notify_name},
        )
        started = time.monotonic()
        up.start()
        try:
            message = systemd.recv(4096)
            waited = time.monotonic() - started
            assert message.startswith(b"READY=1"), message
            assert waited >= 1.0, waited
            asked = time.monotonic()
            assert _answer(up.port, "/which") == b"SLOW /which"
            assert time.monotonic() - asked < 0.5
        finally:
            assert up.stop() == 0, up.log_text()
