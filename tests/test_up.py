"""`gantry up`: the whole stack from one file, with real processes, Flask and Django pools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.stats.top import fetch
from tests.process import REPO, GantryUp, descendant_pids, free_port
from tests.process import http_get as _get
from tests.process import wait_for as _wait
from tests.support_up import hello_load

STACK = """
[stack]
stats = "STATS_PATH"
metrics = "127.0.0.1:METRICS_PORT"
graceful_timeout = 5

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/static/"
alias = "STATIC_DIR/"

[[front.server.location]]
path = "/django/"
proxy = "django"
script_name = "/django"

[[front.server.location]]
path = "/"
proxy = "hello"

[[app]]
name = "hello"
module = "gantry.demo:app"
workers = 1
graceful_timeout = 5

[[app]]
name = "django"
module = "tests.e2e.django_site.wsgi:app"
chdir = "REPO"
workers = 1
graceful_timeout = 5
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GantryUp, str, int]]:
    from gantry.demo import STATIC_DIR

    workdir = tmp_path_factory.mktemp("stack")
    stats = str(workdir / "stack.stats")
    metrics = free_port()
    config = (
        STACK.replace("STATS_PATH", stats)
        .replace("METRICS_PORT", str(metrics))
        .replace("STATIC_DIR", str(STATIC_DIR))
        .replace("REPO", str(REPO))
    )
    up = GantryUp(workdir, config)
    up.start()
    assert _wait(lambda: _answers(up.port)), up.log_text()
    try:
        yield up, stats, metrics
    finally:
        up.stop()


def _answers(port: int) -> bool:
    try:
        hello = _get(port, "/hello") == (200, b"Hello World!")
        return hello and _get(port, "/django/hello")[0] == 200
    except OSError:
        return False


def _parts(stats: str) -> dict[str, dict[str, object]]:
    doc = fetch(stats)
    return {pool["name"]: pool for pool in doc["pools"]}


def _worker_pids(stats: str, pool: str) -> list[int]:
    return [w["pid"] for w in fetch(stats)["workers"] if w["pool"] == pool]


def test_demo_stack_with_no_file(tmp_path: Path) -> None:
    with GantryUp(tmp_path) as up:
        assert _wait(lambda: _answers_demo(up.port)), up.log_text()
        status, body = _get(up.port, "/static/index.html")
        assert status == 200 and b"<" in body
        assert _get(up.port, "/nope")[0] == 404
        assert _get(up.port, "/hello", method="HEAD") == (200, b"")
        runtime = [p for p in up.log_text().split() if "gantry-up-" in p]
        assert runtime, up.log_text()
        assert up.stop() == 0
    socket_path = runtime[0].removeprefix("unix:")
    assert not os.path.exists(os.path.dirname(socket_path)), "runtime directory left behind"


def _answers_demo(port: int) -> bool:
    try:
        return _get(port, "/hello") == (200, b"Hello World!")
    except OSError:
        return False


def test_flask_and_django_pools_static_and_script_name(stack: tuple[GantryUp, str, int]) -> None:
    up, _, _ = stack
    assert _get(up.port, "/hello") == (200, b"Hello World!")
    status, body = _get(up.port, "/django/echo/caf%C3%A9?x=1")
    assert status == 200, body
    echoed = json.loads(body)
    assert echoed["SCRIPT_NAME"] == "/django"
    assert echoed["PATH_INFO"] == "/echo/caf\xc3\xa9"  # PEP 3333: UTF-8 bytes as latin-1
    assert echoed["route_rest"] == "café"
    assert _get(up.port, "/django/error")[0] == 500
    status, body = _get(up.port, "/static/index.html")
    assert status == 200


def test_stack_stats_top_and_metrics(stack: tuple[GantryUp, str, int]) -> None:
    up, stats, metrics = stack
    for _ in range(5):
        _get(up.port, "/hello")

    def counted(pool: str) -> int:
        return sum(w["requests"] for w in fetch(stats)["workers"] if w["pool"] == pool)

    # counters reach shared memory once a second
    assert _wait(lambda: counted("hello") >= 5 and counted("front") >= 5, 5)
    doc = fetch(stats)
    pools = {w["pool"] for w in doc["workers"]}
    assert pools == {"front", "hello", "django"}
    assert all(w["rss"] > 0 for w in doc["workers"])
    assert all(pool["up"] for pool in doc["pools"])
    top = subprocess.run(
        [sys.executable, "-m", "gantry", "top", "--once", stats],
        capture_output=True, text=True, timeout=20, cwd=REPO,
    )  # fmt: skip
    assert top.returncode == 0, top.stderr
    for name in ("front", "hello", "django"):
        assert name in top.stdout
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(metrics, "/metrics")[1].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["gantry_worker_requests"]
    assert {s.labels["pool"] for s in requests.samples} == {"front", "hello", "django"}


@pytest.mark.parametrize("victim", ["app worker", "pool master", "front worker", "front master"])
def test_killing_any_part_under_load(stack: tuple[GantryUp, str, int], victim: str) -> None:
    up, stats, _ = stack
    parts = _parts(stats)
    if victim == "app worker":
        pid = _worker_pids(stats, "hello")[0]
    elif victim == "pool master":
        pid = int(parts["hello"]["pid"])  # type: ignore[call-overload]
    elif victim == "front worker":
        pid = _worker_pids(stats, "front")[0]
    else:
        pid = int(parts["front"]["pid"])  # type: ignore[call-overload]
    threads = 3
    with hello_load(up.port, threads=threads) as load:
        assert _wait(lambda: load.ok > 20, 5)
        before = load.ok
        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            try:
                parts = _parts(stats)
                pids = _worker_pids(stats, "front") + _worker_pids(stats, "hello")
                masters = [parts["front"]["pid"], parts["hello"]["pid"]]
            except (OSError, ValueError, KeyError):
                return False
            return pid not in pids + masters and len(pids) == 2 and all(masters)

        assert _wait(replaced, 15), up.log_text()[-3000:]
        settled = load.ok
        assert _wait(lambda: load.ok > settled + 50, 10), load.failures[-5:]
    assert before > 0
    # Only requests in flight on the killed process may fail: one per client thread.
    assert len(load.failures) <= threads, load.failures
    assert _answers(up.port)


def test_sighup_reloads_every_part_with_zero_failures(stack: tuple[GantryUp, str, int]) -> None:
    up, stats, _ = stack
    old = set(_worker_pids(stats, "hello") + _worker_pids(stats, "front"))
    with hello_load(up.port) as load:
        assert _wait(lambda: load.ok > 20, 5)
        assert up.process is not None
        up.process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            try:
                now = set(_worker_pids(stats, "hello") + _worker_pids(stats, "front"))
            except (OSError, ValueError):
                return False
            return len(now) == 2 and not now & old

        assert _wait(reloaded, 20), up.log_text()[-3000:]
        settled = load.ok
        assert _wait(lambda: load.ok > settled + 50, 10)
    assert load.failures == []


def test_sigterm_stops_every_part(tmp_path: Path) -> None:
    with GantryUp(tmp_path) as up:
        assert _wait(lambda: _answers_demo(up.port)), up.log_text()
        pids = descendant_pids(up.pid)
        assert len(pids) >= 4, pids  # two masters, two workers
        assert up.stop() == 0
    assert _wait(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[app]]\nname = "a"\nmodule = "m:app"\nworkers = "many"\n',
         "app[0].workers: expected an integer >= 1, got 'many'"),
        ('[[front.server]]\n[[front.server.location]]\npath = "/"\nproxy = "nope"\n',
         "front.server[0].location[0].proxy: no upstream named 'nope'"),
        ('[[app]]\nname = "a b"\nmodule = "m:app"\n', "app[0].name: expected a name"),
        ('[[app]]\nname = "a"\nmodule = "m:app"\nharakiri = -1\n',
         "app[0].harakiri: expected a time >= 0"),
        ("[stack]\nrunime_dir = '/tmp'\n",
         "stack.runime_dir: unknown key; did you mean 'runtime_dir'?"),
        ("[frnt]\n", "frnt: unknown key"),
        ('[[app]]\nname = "a"\nmodule = "m:app"\n[[app]]\nname = "a"\nmodule = "n:app"\n',
         "app[1].name: 'a' is already the name of app[0]"),
        ('[[app]]\nname = "front"\nmodule = "m:app"\n',
         "app[0].name: 'front' names the front server's part"),
    ],
)  # fmt: skip
def test_bad_config_fails_before_anything_starts(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "gantry.toml"
    port = free_port()
    listen = f'[front]\nlisten = ["127.0.0.1:{port}"]\n'
    path.write_text(text if "front." in text else listen + text)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gantry", "up", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{path}: {expected}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 10
    assert "_part" not in done.stderr


def test_an_app_that_cannot_load_stops_the_stack_with_exit_3(tmp_path: Path) -> None:
    config = (
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n'
        '[[app]]\nname = "broken"\nmodule = "no_such_module_here:app"\n'
    )
    up = GantryUp(tmp_path, config)
    up.start()
    assert up.process is not None
    try:
        code = up.process.wait(timeout=30)
    finally:
        up.stop()
    assert code == 3, up.log_text()
    assert "no_such_module_here" in up.log_text()
    assert "cannot be loaded" in up.log_text()


def test_check_prints_the_effective_stack(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    path.write_text('[[app]]\nname = "hello"\nmodule = "gantry.demo:app"\nworkers = 3\n')
    done = subprocess.run(
        [sys.executable, "-m", "gantry", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    import tomllib

    effective = tomllib.loads(done.stdout)
    assert effective["app"][0]["workers"] == 3
    # what gantry up derives (the pool's upstream) is said in a comment, not as a setting,
    # so the output loads back
    assert effective["front"]["upstream"] == {}
    assert "upstream 'hello' = unix:" in done.stdout
    # no server block: everything goes to the only pool
    assert effective["front"]["server"][0]["location"][0]["proxy"] == "hello"


def test_sigterm_leaves_nothing_in_a_configured_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    own_stats = tmp_path / "own.stats"  # a pool's own stats path is the user's: kept
    config = (
        f'[stack]\nruntime_dir = "{runtime}"\ngraceful_timeout = 5\n'
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n'
        '[[front.server]]\n[[front.server.location]]\npath = "/"\nproxy = "hello"\n'
        '[[app]]\nname = "hello"\nmodule = "gantry.demo:app"\n'
        f'[[app]]\nname = "other"\nmodule = "gantry.demo:app"\nstats = "{own_stats}"\n'
    )
    up = GantryUp(tmp_path, config)
    up.start()
    try:
        assert _wait(lambda: _answers_demo(up.port)), up.log_text()
        made = {"front.stats", "hello.stats", "hello.sock", "other.sock", "stack.json"}
        assert _wait(lambda: made <= set(os.listdir(runtime))), os.listdir(runtime)
        assert _wait(own_stats.exists)
    finally:
        code = up.stop()
    assert code == 0, up.log_text()
    assert os.listdir(runtime) == []
    assert own_stats.exists()


def _check(path: Path, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gantry", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_check_output_of_the_multi_app_example_loads_back_the_same(tmp_path: Path) -> None:
    import tomllib

    example = REPO / "examples" / "multi-app"
    effective = _check(example / "gantry.toml", cwd=example)
    again = tmp_path / "effective.toml"
    again.write_text(effective)
    assert _check(again, cwd=example) == effective
    document = tomllib.loads(effective)
    # the derived upstreams and pool sockets are comments, not settings
    assert set(document["front"]["upstream"]) == {"api"}
    assert [app["uwsgi_socket"] for app in document["app"]] == [[], []]
    assert [app["max_requests"] for app in document["app"]] == [1000, 0]  # defaults filled in
    assert (
        "# app 'shop' is reached at upstream 'shop' = unix:<runtime_dir>/shop.sock, "
        "kept connections" in effective
    )
    assert "PROVISIONAL" not in effective and "gantry-up-RUNTIME" not in effective


def test_check_output_of_an_inline_stack_loads_back_the_same(tmp_path: Path) -> None:
    import tomllib

    runtime = tmp_path / "run"
    path = tmp_path / "gantry.toml"
    path.write_text(
        f'[stack]\nruntime_dir = "{runtime}"\n'
        '[[app]]\nname = "hello"\nmodule = "gantry.demo:app"\nworkers = 3\n'
        'uwsgi_socket = ["127.0.0.1:3031"]\n'
    )
    effective = _check(path)
    again = tmp_path / "effective.toml"
    again.write_text(effective)
    assert _check(again) == effective
    document = tomllib.loads(effective)
    assert document["front"]["upstream"] == {}
    assert document["app"][0]["uwsgi_socket"] == ["127.0.0.1:3031"]
    assert document["app"][0]["workers"] == 3
    # no server block: the one gantry up adds is written out, sending everything to the pool
    assert document["front"]["server"][0]["location"][0]["proxy"] == "hello"
    assert document["front"]["server"][0]["location"][0]["index"] == ["index.html"]
    assert f"upstream 'hello' = unix:{runtime}/hello.sock, kept connections" in effective
    assert f"{runtime}/hello.stats" in effective


def test_a_second_stack_on_the_same_runtime_dir_is_refused(tmp_path: Path) -> None:
    """The second stack must not take over (or delete) the first one's live sockets or
    state: it exits 2 naming the socket, and the first one keeps serving and healing."""
    runtime = tmp_path / "run"
    stats = tmp_path / "first.stats"
    config = (
        f'[stack]\nruntime_dir = "{runtime}"\nstats = "{stats}"\n'
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n'
        '[[app]]\nname = "hello"\nmodule = "gantry.demo:app"\n'
    )
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    with GantryUp(first_dir, config) as first:
        assert _wait(lambda: _answers_demo(first.port)), first.log_text()
        second = subprocess.run(
            [sys.executable, "-m", "gantry", "up", "-c", str(_second_config(tmp_path, config))],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "another process is listening on it" in second.stderr
        assert _answers_demo(first.port)
        # the first stack's state survived: a killed front comes back
        front_master = int(_parts(str(stats))["front"]["pid"])  # type: ignore[call-overload]
        os.kill(front_master, signal.SIGKILL)
        assert _wait(lambda: _answers_demo(first.port) and _front_pid(stats) != front_master)
        assert first.stop() == 0


def _second_config(tmp_path: Path, config: str) -> Path:
    path = tmp_path / "second.toml"
    text = config.replace("FRONT_PORT", str(free_port())).replace("first.stats", "second.stats")
    path.write_text(text)
    return path


def _front_pid(stats: Path) -> int:
    try:
        return int(_parts(str(stats))["front"]["pid"])  # type: ignore[call-overload]
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: no pid while restarting
        return 0
