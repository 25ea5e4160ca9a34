"""A real browser through the whole stack: headless Chromium loads an https page from
`gantry up` (the app's HTML, the front's compressed stylesheet and script) and the test
reads what the page rendered: the script ran and saw the stylesheet applied."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.process import REPO, Launcher, require_program, wait_for
from tests.support_tls import TestCA, https_connection

# Big enough to be compressed (gzip_min_length), and compressible.
CSS = "#styled { color: rgb(1, 2, 3); }\n" + "/* padding padding padding */\n" * 400
JS = (
    "const c = getComputedStyle(document.getElementById('styled')).color;\n"
    "document.getElementById('out').textContent = 'script ran, color ' + c;\n"
    + "// padding padding padding\n"
    * 400
)


def test_chromium_renders_an_https_page_with_compressed_assets(
    launch: Launcher, short_tmp: Path
) -> None:
    chromium = require_program("chromium")
    ca = TestCA(short_tmp)
    pair = ca.issue("app.test")
    assets = short_tmp / "assets"
    assets.mkdir()
    (assets / "app.css").write_text(CSS)
    (assets / "app.js").write_text(JS)
    up = launch.up(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
access_log_format = "json"
[[front.server]]
server_name = ["app.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
gzip = true
gzip_types = ["text/html", "text/css", "application/javascript", "text/javascript"]
[[front.server.location]]
path = "/assets/"
root = "{short_tmp}"
[[front.server.location]]
path = "/"
proxy = "web"

[[app]]
name = "web"
module = "tests.apps_browser:app"
chdir = "{REPO}"
workers = 1
graceful_timeout = 5
""")  # fmt: skip
    context = ca.client_context()

    def ready() -> bool:
        conn = https_connection(up.port, "app.test", context)
        try:
            conn.request("GET", "/")
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
            "--virtual-time-budget=10000", "--dump-dom", f"https://app.test:{up.port}/",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "script ran, color rgb(1, 2, 3)" in done.stdout, (done.stdout, done.stderr[-3000:])

    # The browser asked for gzip (or br/zstd) and got the assets compressed: the access
    # log's bytes sent are well under the files' sizes.
    def logged() -> dict[str, int]:
        sent: dict[str, int] = {}
        for line in up.log_text().splitlines():
            start = line.find("{")
            if start < 0 or '"request"' not in line:
                continue
            try:
                entry = json.loads(line[start:])
            except ValueError:
                continue
            request = str(entry.get("request", ""))
            for name in ("app.css", "app.js"):
                if f"/assets/{name} " in request and entry.get("status") == 200:
                    sent[name] = int(entry["body_bytes_sent"])
        return sent

    assert wait_for(lambda: len(logged()) == 2, limit=10), up.log_text()[-3000:]
    sizes = logged()
    assert sizes["app.css"] < len(CSS) // 4 and sizes["app.js"] < len(JS) // 4, sizes
