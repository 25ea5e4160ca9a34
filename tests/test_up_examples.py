"""The examples run: every examples/ config passes `gantry check`, and the multi-app example
serves for real under `gantry up` (host routing, the /blog mount, an external HTTP upstream,
static files), in front of a real gunicorn. Traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from gantry.config.stack import PROVISIONAL_RUNTIME_DIR, demo_plan, load_stack
from tests.process import REPO, free_port, wait_until_listening

EXAMPLES = REPO / "examples"
MULTI_APP = EXAMPLES / "multi-app"

#: top-level examples use paths relative to the repository root, the others their own folder
CONFIGS = sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*/gantry.toml"))


def _workdir(config: Path) -> Path:
    return REPO if config.parent == EXAMPLES else config.parent


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_PID", None)
    return env


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    try:
        wait_until_listening(("127.0.0.1", port), process, what=what, log=log.read_text)
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by PID, bounded wait, SIGKILL if it outlives the timeout."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(5)
        raise AssertionError(f"pid {process.pid} did not stop within {timeout} s") from None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Stack:
    port: int
    stats_port: int
    up: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, host: str | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{self.port}"})
            answer = conn.getresponse()
            headers = {name.lower(): value for name, value in answer.getheaders()}
            return Response(answer.status, headers, answer.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The multi-app example copied to a temporary folder, run from there as its README says:
    gunicorn for the external API, then `gantry up -c` a copy of gantry.toml with free ports."""
    work = tmp_path_factory.mktemp("multi-app") / "multi-app"
    shutil.copytree(MULTI_APP, work, ignore=shutil.ignore_patterns("__pycache__"))
    port, api_port, stats_port = free_port(), free_port(), free_port()
    document = tomllib.loads((work / "gantry.toml").read_text(encoding="utf-8"))
    document["front"]["listen"] = [f"127.0.0.1:{port}"]
    document["front"]["upstream"]["api"]["servers"][0]["address"] = f"127.0.0.1:{api_port}"
    document["stack"]["stats"] = f"127.0.0.1:{stats_port}"
    config = work / "gantry.test.toml"
    config.write_text(tomli_w.dumps(document), encoding="utf-8")

    api_log = work / "gunicorn.log"
    with api_log.open("wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--chdir", "api", "--workers", "1",
             "--bind", f"127.0.0.1:{api_port}", "api:app"],  # fmt: skip
            cwd=work, env=_env(), stdout=out, stderr=out,
        )  # fmt: skip
    up_log = work / "up.log"
    up = None
    try:
        _wait_listening(api_port, api, api_log, "gunicorn")
        with up_log.open("wb") as out:
            up = subprocess.Popen(
                [sys.executable, "-m", "gantry", "up", "-c", str(config)],
                cwd=work, env=_env(), stdout=out, stderr=out,
            )  # fmt: skip
        _wait_listening(port, up, up_log, "gantry up")
        yield Stack(port, stats_port, up, up_log)
    finally:
        if up is not None:
            _stop(up)
        _stop(api)


def test_host_name_picks_the_shop(stack: Stack) -> None:
    page = stack.get("/", host="shop.example.test")
    assert page.status == 200, page.body
    assert "<h1>shop</h1>" in page.text
    assert 'href="/products/1"' in page.text  # mounted at /: no prefix
    assert stack.get("/products/2", host="shop.example.test:8080").text == "shop: kettle\n"
    # The blog is mounted on the default server only: the shop's app answers (404) here.
    elsewhere = stack.get("/blog/", host="shop.example.test")
    assert elsewhere.status == 404
    assert "<h1>blog</h1>" not in elsewhere.text


def test_the_shop_static_files_come_from_disk(stack: Stack) -> None:
    css = stack.get("/static/shop.css", host="shop.example.test")
    assert css.status == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "max-age=3600"
    assert css.body == (MULTI_APP / "shop" / "static" / "shop.css").read_bytes()
    # The default server has no /static/: the shop's files are not reachable from there.
    assert stack.get("/static/shop.css").status == 404


def test_the_default_server_serves_the_site(stack: Stack) -> None:
    for host in (None, "unknown.example.test"):
        page = stack.get("/", host=host)
        assert page.status == 200
        assert page.body == (MULTI_APP / "site" / "index.html").read_bytes()


def test_blog_links_carry_the_mount_point(stack: Stack) -> None:
    index = stack.get("/blog/")
    assert index.status == 200, index.body
    links = re.findall(r'href="([^"]+)"', index.text)
    assert links == ["/blog/posts/hello/", "/blog/posts/stack/"]
    post = stack.get(links[0])
    assert post.status == 200
    assert post.text == "Hello from the blog\n"
    where = json.loads(stack.get("/blog/where").body)
    assert where == {
        "script_name": "/blog",
        "path_info": "/where",
        "path": "/blog/where",
        "index_url": "/blog/",
    }
    bare = stack.get("/blog")  # the exact "= /blog" location
    assert bare.status == 200
    assert "/blog/posts/hello/" in bare.text


def test_api_goes_to_the_external_http_server(stack: Stack) -> None:
    answer = stack.get("/api/status")
    assert answer.status == 200, answer.body
    assert json.loads(answer.body) == {
        "service": "api",
        "path": "/api/status",
        "host": f"127.0.0.1:{stack.port}",
    }


def test_stack_stats_list_both_pools(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.stats_port), timeout=5) as conn:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    text = data.decode()
    assert '"shop"' in text and '"blog"' in text, text[:500]


def test_sigterm_stops_the_whole_stack(stack: Stack) -> None:
    """Last in this module: the supervisor stops its children and exits 0."""
    assert _stop(stack.up) == 0, stack.log.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", stack.port), timeout=1).close()
    pids = {int(p) for p in re.findall(r"\(pid (\d+)[,)]", stack.log.read_text())}
    assert pids, stack.log.read_text()
    for pid in pids:
        assert not _alive(pid), f"part {pid} outlived the supervisor"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by init is gone as far as serving goes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---------------------------------------------------------------- every example passes check


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_passes_gantry_check(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "check", "-c", str(config)],
        cwd=_workdir(config), env=_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[front]" in result.stdout


def test_examples_are_found() -> None:
    names = {str(p.relative_to(EXAMPLES)) for p in CONFIGS}
    assert {"demo.toml", "single-app.toml", "multi-app/gantry.toml"} <= names


def test_demo_toml_is_the_built_in_demo() -> None:
    """examples/demo.toml says what `gantry up` runs with no file; keep them the same."""
    # No chdir in it, so it loads from any directory; its alias is relative to the repository.
    from_file = load_stack(str(EXAMPLES / "demo.toml"), PROVISIONAL_RUNTIME_DIR)
    built_in = demo_plan(PROVISIONAL_RUNTIME_DIR)
    file_front = from_file.front_table()
    demo_front = built_in.front_table()
    file_alias = file_front["server"][0]["location"][0]["alias"]
    demo_alias = demo_front["server"][0]["location"][0]["alias"]
    assert Path(REPO, file_alias).resolve() == Path(demo_alias).resolve()
    file_front["server"][0]["location"][0]["alias"] = demo_alias
    assert file_front == demo_front
    assert from_file.settings.app == built_in.settings.app
