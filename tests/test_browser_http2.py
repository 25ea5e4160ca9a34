"""A real browser over HTTP/2 through the whole stack: headless Chromium loads a page
with 30 scripts from `gantry up` over https with the h2 listener flag; the page rendered
(every script ran) and the access log shows the page and its assets came as HTTP/2.0
requests over one connection (one client port)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.apps_http2 import ASSETS
from tests.process import REPO, Launcher, require_program, wait_for
from tests.support_tls import TestCA, https_connection


def test_chromium_loads_a_page_and_its_30_assets_over_one_http2_connection(
    launch: Launcher, short_tmp: Path
) -> None:
    chromium = require_program("chromium")
    ca = TestCA(short_tmp)
    pair = ca.issue("app.test")
    assets = short_tmp / "assets"
    assets.mkdir()
    for i in range(ASSETS):
        (assets / f"a{i}.js").write_text(f"window.ran += 1; // asset {i}\n")
    up = launch.up(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl h2"]
access_log_format = "json"
[[front.server]]
server_name = ["app.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/assets/"
root = "{short_tmp}"
[[front.server.location]]
path = "/"
proxy = "web"

[[app]]
name = "web"
module = "tests.apps_http2:app"
chdir = "{REPO}"
workers = 1
graceful_timeout = 5
""")  # fmt: skip
    context = ca.client_context()

    def ready() -> bool:
        conn = https_connection(up.port, "app.test", context)
        try:
            conn.request("GET", "/page")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    assert wait_for(ready, limit=30), up.log_text()[-2000:]
    profile = short_tmp / "chromium-profile"
    done = subprocess.run(
        [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--ignore-certificate-errors", "--host-resolver-rules=MAP app.test 127.0.0.1",
            "--virtual-time-budget=10000", "--dump-dom", f"https://app.test:{up.port}/page",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"assets ran: {ASSETS}" in done.stdout, (done.stdout, done.stderr[-3000:])

    def h2_entries() -> list[dict[str, Any]]:
        entries = []
        for line in up.log_text().splitlines():
            start = line.find("{")
            if start < 0 or '"protocol"' not in line:
                continue
            try:
                entry = json.loads(line[start:])
            except ValueError:
                continue
            if entry.get("protocol") == "HTTP/2.0":
                entries.append(entry)
        return entries

    def fetched() -> list[dict[str, Any]]:
        return [
            e for e in h2_entries()
            if e["status"] == 200 and (e["uri"] == "/page" or e["uri"].startswith("/assets/"))
        ]  # fmt: skip

    assert wait_for(lambda: len(fetched()) >= ASSETS + 1, limit=10), up.log_text()[-3000:]
    entries = fetched()
    assert sorted(e["uri"] for e in entries) == sorted(
        ["/page", *(f"/assets/a{i}.js" for i in range(ASSETS))]
    ), entries
    # one connection: every request came from the same client port
    assert len({e["remote_port"] for e in entries}) == 1, entries
