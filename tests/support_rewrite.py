"""Helpers of the rewrite and header-rule tests: one request with its whole head, and a
real nginx running given server blocks (the same rules as a Gantry front)."""

from __future__ import annotations

import getpass
import http.client
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tests.process import Launcher, free_port, require_program

__all__ = ["Answer", "ask", "start_nginx"]


@dataclass
class Answer:
    """A response: status, fields (names in lower case, in order) and body."""

    status: int
    fields: list[tuple[str, str]]
    body: bytes
    reason: str = ""

    def field(self, name: str) -> str | None:
        """The first value of ``name`` (any case), None if absent."""
        name = name.lower()
        return next((value for key, value in self.fields if key == name), None)

    def all(self, name: str) -> list[str]:
        """Every value of ``name``."""
        name = name.lower()
        return [value for key, value in self.fields if key == name]

    def location(self) -> str | None:
        """Location with the port of 127.0.0.1 or a test host replaced by PORT (the
        fronts compared listen on different ports)."""
        value = self.field("location")
        return re.sub(r":\d{2,5}/", ":PORT/", value) if value is not None else None


def ask(
    port: int,
    path: str,
    host: str = "site.test",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection to 127.0.0.1:``port``; redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        fields = [(name.lower(), value) for name, value in response.getheaders()]
        return Answer(response.status, fields, response.read(), response.reason)
    finally:
        conn.close()


def start_nginx(launch: Launcher, servers: str, name: str = "nginx") -> int:
    """A real nginx with these server blocks (``NGINX_PORT`` in them becomes its port),
    started by ``launch`` (stopped with the test); its port. Skips without nginx."""
    binary = require_program("nginx")
    folder = launch.workdir / name
    folder.mkdir(exist_ok=True)
    os.chmod(launch.workdir, 0o755)  # nginx's workers may run as another user
    os.chmod(folder, 0o755)
    port = free_port()
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    conf = Path(folder, "nginx.conf")
    conf.write_text(
        f"""
daemon off;
{user}
worker_processes 1;
error_log {folder}/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    {servers.replace("NGINX_PORT", str(port))}
}}
"""
    )
    launch.program(
        [binary, "-p", str(folder), "-c", str(conf)], ("127.0.0.1", port), name, limit=10
    )
    return port
