"""A real browser over HTTP/2 through the whole stack: headless Chromium loads a page
with 30 scripts from `gantry up` over https with the h2 listener flag; the page rendered
(every script ran) and the access log shows the page and its assets came as HTTP/2.0
requests over one connection (one client port)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.apps_http2 import ASSETS
from tests.process import REPO, Launcher, require_program, wait_for
from tests.support_browser import chromium_dom, https_ready, json_log_entries
from tests.support_tls import TestCA


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
    ready = https_ready(up.port, "app.test", ca.client_context(), "/page", 30)
    assert ready, up.log_text()[-2000:]
    dom, errors = chromium_dom(chromium, short_tmp / "chromium-profile", "app.test", up.port,
                               "/page")  # fmt: skip
    assert f"assets ran: {ASSETS}" in dom, (dom, errors[-3000:])

    def fetched() -> list[dict[str, Any]]:
        return [
            e for e in json_log_entries(up.log_text())
            if e.get("protocol") == "HTTP/2.0" and e["status"] == 200
            and (e["uri"] == "/page" or e["uri"].startswith("/assets/"))
        ]  # fmt: skip

    assert wait_for(lambda: len(fetched()) >= ASSETS + 1, limit=10), up.log_text()[-3000:]
    entries = fetched()
    assert sorted(e["uri"] for e in entries) == sorted(
        ["/page", *(f"/assets/a{i}.js" for i in range(ASSETS))]
    ), entries
    # one connection: every request came from the same client port
    assert len({e["remote_port"] for e in entries}) == 1, entries
