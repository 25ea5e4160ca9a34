"""testssl.sh against the front's TLS listener (offline, 127.0.0.1): its protocol, cipher
category, forward-secrecy and vulnerability checks flag nothing as weak or vulnerable.

testssl takes about half a minute: it starts a process, so tests/conftest.py marks it
``servers`` and `make test` runs it once, in the compiled pass only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.process import Launcher, require_program
from tests.support_tls import TestCA

#: testssl's severities from which a finding is a problem (INFO, OK and WARN are not:
#: WARN is about testssl's own openssl, e.g. "RC4 not supported by local OpenSSL")
FLAGGED = {"LOW", "MEDIUM", "HIGH", "CRITICAL"}


def test_testssl_flags_nothing_weak_or_vulnerable(launch: Launcher, short_tmp: Path) -> None:
    testssl = require_program("testssl", "testssl.sh")
    ca = TestCA(short_tmp)
    pair = ca.issue("a.test")
    root = short_tmp / "www"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
[[front.server]]
server_name = ["a.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
hsts = "max-age=63072000"
[[front.server.location]]
path = "/"
root = "{root}"
""")  # fmt: skip
    report = short_tmp / "testssl.json"
    done = subprocess.run(
        [testssl, "--quiet", "--color", "0", "--warnings", "off", "--fast",
         "--protocols", "--std", "--fs", "--vulnerable",
         "--connect-timeout", "5", "--openssl-timeout", "5",
         "--jsonfile", str(report), "--severity", "LOW",
         "--ip", "127.0.0.1", f"127.0.0.1:{front.port}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert report.exists(), done.stdout + done.stderr
    findings = json.loads(report.read_text())
    flagged = [f for f in findings if f.get("severity") in FLAGGED]
    assert not flagged, json.dumps(flagged, indent=1)
    text = done.stdout
    # the checks did run: the versions as the front offers them
    assert "TLS 1.2    offered (OK)" in text and "TLS 1.3    offered (OK)" in text, text
    assert "TLS 1.1    not offered" in text and "Heartbleed" in text, text
    assert "X25519" in text or "x25519" in text.lower(), text
