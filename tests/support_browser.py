"""Helpers for the headless-browser tests (a helper module, not a test module): wait for
an https site to answer, let Chromium load a page and give back the DOM it rendered,
and read the JSON lines of an access log."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

from tests.process import wait_for
from tests.support_tls import https_connection


def https_ready(port: int, host: str, context: ssl.SSLContext, path: str, limit: float) -> bool:
    """Whether ``https://host:port/path`` answers 200 within ``limit`` seconds."""

    def ready() -> bool:
        conn = https_connection(port, host, context)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    return wait_for(ready, limit=limit)


def chromium_dom(chromium: str, profile: Path, host: str, port: int, path: str) -> tuple[str, str]:
    """Headless Chromium loads ``https://host:port/path`` (``host`` mapped to 127.0.0.1,
    any certificate taken): the DOM it rendered, and its stderr."""
    done = subprocess.run(
        [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--ignore-certificate-errors", f"--host-resolver-rules=MAP {host} 127.0.0.1",
            "--virtual-time-budget=10000", "--dump-dom", f"https://{host}:{port}{path}",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout, done.stderr


def json_log_entries(text: str) -> list[dict[str, Any]]:
    """The access-log lines of ``text`` written as JSON (access_log_format = "json"),
    whatever prefix each line has (gantry up tags its parts' lines)."""
    entries = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or '"request"' not in line:
            continue
        try:
            entries.append(json.loads(line[start:]))
        except ValueError:
            continue
    return entries
