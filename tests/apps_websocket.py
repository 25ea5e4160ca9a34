"""A real WebSocket server (the ``websockets`` package) for the front's WebSocket tests:
``python -m tests.apps_websocket PORT [CERT KEY]`` (with a certificate: wss). Paths:
``/echo`` echoes every message;
``/headers`` sends the upgrade request's fields as one JSON message, then echoes;
``/whoami`` sends the server's port, then echoes; ``/close`` closes (1000) after
echoing the first message; ``/deny`` refuses the upgrade with a plain 403."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else "/"
    if path == "/headers" and ws.request is not None:
        await ws.send(json.dumps([[k.lower(), v] for k, v in ws.request.headers.raw_items()]))
    if path == "/whoami":
        await ws.send(str(ws.local_address[1]))
    async for message in ws:
        await ws.send(message)
        if path == "/close":
            await ws.close(1000, "server done")
            return


def refuse(ws: ServerConnection, request: Request) -> Response | None:
    if request.path == "/deny":
        return ws.respond(HTTPStatus.FORBIDDEN, "not for you\n")
    return None


async def main(port: int, tls: ssl.SSLContext | None) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=None,
        ping_interval=None,
        process_request=refuse,
        ssl=tls,
    ):
        await asyncio.Future()


if __name__ == "__main__":
    context = None
    if len(sys.argv) > 3:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
    asyncio.run(main(int(sys.argv[1]), context))
