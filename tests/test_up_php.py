"""``gantry up`` with a ``kind = "php"`` app (issue 20): the real php-fpm, supervised as a
part beside a Flask pool, behind one front on one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gantry.stats.top import fetch, render_frame
from tests.process import REPO, ClientLoad, GantryUp, Launcher, require_program, try_get, wait_for

INFO = b"""<?php
echo 'php ', $_SERVER['SCRIPT_NAME'], ' ', $_SERVER['REQUEST_URI'], ' ', ini_get('memory_limit');
"""
SECRET = b"<?php echo 'never shown as source';\n"


def _site(base: Path) -> Path:
    """A document root whose /blog/ holds the front controller and a static file."""
    os.chmod(base, 0o755)  # php-fpm's children run as nobody
    root = base / "site"
    (root / "blog" / "uploads").mkdir(parents=True)
    (root / "blog" / "index.php").write_bytes(INFO)
    (root / "blog" / "info.php").write_bytes(INFO)
    (root / "blog" / "style.css").write_bytes(b"body{}\n")
    (root / "blog" / "uploads" / "evil.jpg").write_bytes(b"<?php echo 'ran';\n")
    for folder in (root, root / "blog", root / "blog" / "uploads"):
        os.chmod(folder, 0o755)
    return root


def _stack(tmp: Path, root: Path, php_extra: str = "") -> str:
    return f"""
[stack]
runtime_dir = "{tmp / "run"}"
stats = "{tmp / "stack.stats"}"
graceful_timeout = 5

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[app]]
name = "flask"
module = "gantry.demo:app"

[[app]]
name = "blog"
kind = "php"
root = "{root}"
path = "/blog/"
workers = 2
graceful_timeout = 5
php_admin_value = {{ memory_limit = "48M" }}
{php_extra}
"""


@pytest.fixture()
def stack(launch: Launcher) -> tuple[GantryUp, Path]:
    require_program("php-fpm8.2", "php8.2-fpm")
    # a short folder that nobody may enter (pytest's tmp_path is root's alone)
    tmp = launch.workdir
    root = _site(tmp)
    up = launch.up(_stack(tmp, root))
    assert wait_for(lambda: try_get(up.port, "/blog/info.php")[0] == 200, 20), up.log_text()
    return up, tmp


def _php_part(tmp: Path) -> dict[str, Any]:
    doc = fetch(str(tmp / "stack.stats"))
    return next(pool for pool in doc["pools"] if pool["name"] == "blog")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone too: only its parent has not read its status yet
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_php_and_flask_on_one_port(stack: tuple[GantryUp, Path]) -> None:
    up, tmp = stack
    assert try_get(up.port, "/hello") == (200, b"Hello World!")
    assert try_get(up.port, "/blog/info.php?x=1") == (
        200,
        b"php /blog/info.php /blog/info.php?x=1 48M",
    )
    # the front controller: the path itself and a pretty URL, with the client's REQUEST_URI
    assert try_get(up.port, "/blog/") == (200, b"php /blog/index.php /blog/ 48M")
    assert try_get(up.port, "/blog/2024/a-post?p=2") == (
        200, b"php /blog/index.php /blog/2024/a-post?p=2 48M"
    )  # fmt: skip
    assert try_get(up.port, "/blog/style.css") == (200, b"body{}\n")
    # never handed to php-fpm: no such script, nor a .jpg with a .php path after it
    assert try_get(up.port, "/blog/missing.php")[0] == 404
    assert try_get(up.port, "/blog/uploads/evil.jpg/x.php")[0] == 404
    part = _php_part(tmp)
    assert part["kind"] == "php" and part["up"] is True
    assert Path(f"/proc/{part['pid']}/exe").resolve().name.startswith("php-fpm")
    # php-fpm's own status page (pm.status_path), read over FastCGI
    assert part["workers"] == 2 and part["php_fpm"]["pool"] == "blog"
    assert part["php_fpm"]["process manager"] == "static"
    frame = render_frame(fetch(str(tmp / "stack.stats")), None, 1.0)
    assert f"blog: php-fpm, master pid {part['pid']}, 2 children" in frame
    # the status page is the stack's: not reachable through the front
    assert b"process manager" not in try_get(up.port, "/gantry-fpm-status?json")[1]


def test_killed_php_fpm_is_restarted(stack: tuple[GantryUp, Path]) -> None:
    up, tmp = stack
    first = _php_part(tmp)["pid"]
    children = _children(first)
    assert children, "php-fpm's master has no children"
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: _php_part(tmp)["pid"] not in (first, None), 15), up.log_text()[-3000:]
    assert wait_for(lambda: try_get(up.port, "/blog/info.php")[0] == 200, 15)
    assert _php_part(tmp)["restarts"] == 1
    assert "blog was killed by SIGKILL" in up.log_text()
    # the killed master's children do not stay behind (they would serve on, untracked)
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_sighup_reloads_php_fpm_without_a_failed_request(stack: tuple[GantryUp, Path]) -> None:
    up, tmp = stack
    pid = _php_part(tmp)["pid"]
    children = set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    expect = b"php /blog/info.php /blog/info.php 48M"
    with ClientLoad(up.port, "/blog/info.php", 3, keep_alive=True, expect=expect, limit=30) as load:
        assert wait_for(lambda: load.ok >= 20, 15)
        assert up.process is not None
        up.process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            now = set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            return bool(now) and not now & children

        # php-fpm's SIGUSR2: the same master re-executes itself with new children
        assert wait_for(reloaded, 20), up.log_text()[-3000:]
        settled = load.ok
        assert wait_for(lambda: load.ok >= settled + 20, 15)
    assert load.failures == [], load.failures[:5]
    assert _php_part(tmp)["pid"] == pid
    assert "Reloading in progress" in up.log_text()


def test_sigterm_stops_php_fpm(stack: tuple[GantryUp, Path]) -> None:
    up, tmp = stack
    pid = _php_part(tmp)["pid"]
    assert up.stop(signal.SIGTERM) == 0
    assert not _alive(pid)
    assert not (tmp / "run" / "blog.sock").exists()
    assert not list((tmp / "run").glob("*.php-fpm.conf"))


def _check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "gantry.toml"
    config.write_text(text.replace("FRONT_PORT", "18080"))
    return subprocess.run(
        [sys.executable, "-m", "gantry", "check", "--no-import", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_check_names_a_missing_php_fpm(tmp_path: Path) -> None:
    root = _site(tmp_path)
    done = _check(tmp_path, _stack(tmp_path, root, 'php_fpm = "/nonexistent/php-fpm"'))
    assert done.returncode == 2
    assert "app[1].php_fpm: '/nonexistent/php-fpm' is not an executable file" in done.stderr


def test_check_refuses_keys_of_the_other_kind(tmp_path: Path) -> None:
    root = _site(tmp_path)
    done = _check(tmp_path, _stack(tmp_path, root, "threads = 4"))
    assert done.returncode == 2
    assert "app[1]" in done.stderr and "threads: not a key of a kind = 'php' app" in done.stderr
    done = _check(tmp_path, _stack(tmp_path, tmp_path / "nowhere"))
    assert done.returncode == 2 and "app[1].root: no directory" in done.stderr
    wsgi_root = _stack(tmp_path, root).replace(
        'module = "gantry.demo:app"', 'module = "gantry.demo:app"\nroot = "/srv"'
    )
    done = _check(tmp_path, wsgi_root)
    assert done.returncode == 2 and "root: only a kind = 'php' app takes it" in done.stderr


def test_changed_php_app_gets_a_new_php_fpm_on_sighup(stack: tuple[GantryUp, Path]) -> None:
    up, tmp = stack
    old = _php_part(tmp)
    changed = (
        _stack(tmp, tmp / "site").replace('"48M"', '"64M"').replace("FRONT_PORT", str(up.port))
    )
    expect = b"php /blog/info.php /blog/info.php "
    with ClientLoad(up.port, "/blog/info.php", 2, keep_alive=True, limit=30) as load:
        assert wait_for(lambda: load.ok >= 10, 15)
        new = up.config_path.with_suffix(".new")
        new.write_text(changed)
        new.replace(up.config_path)
        assert up.process is not None
        up.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: " applied\n" in up.log_text(), 20), up.log_text()[-3000:]
        assert wait_for(lambda: load.last_body == expect + b"64M", 15)
        assert wait_for(lambda: not _alive(old["pid"]), 15)
    assert load.failures == [], load.failures[:5]
    part = _php_part(tmp)
    assert part["pid"] != old["pid"] and part["generation"] == 2
