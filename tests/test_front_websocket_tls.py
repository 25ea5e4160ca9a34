"""WebSocket through gantry front over TLS at both ends: a wss client on an ssl listener,
the front's tunnel to an https upstream (the websockets server with a certificate of the
test's own CA, checked by the front)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from websockets.asyncio.client import connect

from tests.process import Launcher, free_port
from tests.support_tls import TestCA


def test_wss_to_the_front_and_to_an_https_upstream(launch: Launcher, short_tmp: Path) -> None:
    ca = TestCA(short_tmp)
    front_pair, upstream_pair = ca.issue("front.test"), ca.issue("upstream.test")
    port = free_port()
    launch.program(
        [sys.executable, "-m", "tests.apps_websocket", str(port),
         str(upstream_pair.certificate), str(upstream_pair.key)],
        ("127.0.0.1", port),
        name="wss",
    )  # fmt: skip
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
[[front.server]]
server_name = ["front.test"]
ssl_certificate = "{front_pair.certificate}"
ssl_certificate_key = "{front_pair.key}"
[[front.server.location]]
path = "/"
proxy = "secure"
[front.upstream.secure]
protocol = "https"
ssl_trusted_certificate = "{ca.ca_file}"
ssl_name = "upstream.test"
servers = [{{ address = "127.0.0.1:{port}" }}]
""")
    context = ca.client_context()

    async def scenario() -> dict[str, str]:
        url = f"wss://front.test:{front.port}"
        options = {"ssl": context, "host": "127.0.0.1", "ping_interval": None}
        async with connect(url + "/echo", max_size=None, **options) as ws:  # type: ignore[arg-type]
            data = os.urandom(16 << 20)
            await ws.send(data)
            back = await asyncio.wait_for(ws.recv(), 60)
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        async with connect(url + "/headers", **options) as ws:  # type: ignore[arg-type]
            return dict(json.loads(await ws.recv()))

    fields = asyncio.run(scenario())
    assert fields["x-forwarded-proto"] == "https"
    assert fields["upgrade"] == "websocket"
