"""The application server's settings: one typed object, built once and passed down."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gantry.protocol.http1 import HTTPLimits
from gantry.protocol.uwsgi import DEFAULT_BUFFER_SIZE

__all__ = ["ConfigError", "ListenAddress", "ServeConfig", "parse_address"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: a TCP uwsgi socket trusts only these peers unless told otherwise
DEFAULT_UWSGI_ALLOW = ("127.0.0.0/8", "::1/128")


class ConfigError(Exception):
    """A setting Gantry cannot use; the message names the setting and what was expected."""


@dataclass(frozen=True)
class ListenAddress:
    """A socket to listen on: TCP host and port, or a unix socket path."""

    kind: str  # "http" or "uwsgi"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    #: handed over by systemd or ``gantry up``: the socket file belongs to them, not to us
    inherited: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, kind: str, setting: str) -> ListenAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``unix:PATH`` or a path (for uwsgi)."""
    if text.startswith("unix:"):
        return ListenAddress(kind, path=text[5:])
    if text.startswith("/") or text.startswith("./"):
        return ListenAddress(kind, path=text)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT or a unix socket path, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return ListenAddress(kind, host=host or "0.0.0.0", port=int(port_text))


def parse_networks(items: list[str], setting: str) -> tuple[IPNetwork, ...]:
    """Parse CIDR blocks (or single addresses) for an allow list."""
    networks = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ConfigError(
                    f"{setting}: expected an IP address or CIDR, got {part!r}"
                ) from None
    return tuple(networks)


@dataclass
class ServeConfig:
    """Everything ``gantry serve`` needs to run one worker."""

    app: str = ""
    listen: list[ListenAddress] = field(default_factory=list)
    chdir: str | None = None
    #: 0: the app runs on the event-loop thread; N: on a pool of N threads
    threads: int = 0
    mount_prefix: str = ""
    uwsgi_socket_mode: int | None = None
    uwsgi_allow_from: tuple[IPNetwork, ...] = field(
        default_factory=lambda: parse_networks(list(DEFAULT_UWSGI_ALLOW), "uwsgi-allow-from")
    )
    #: uwsgi vars block limit, as uWSGI's buffer-size
    buffer_size: int = DEFAULT_BUFFER_SIZE
    limits: HTTPLimits = field(default_factory=HTTPLimits)
    #: bodies larger than this are spooled to a temporary file
    body_spool_threshold: int = 1024 * 1024
    keepalive_timeout: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: seconds a client may leave its answer unread (nginx's send_timeout) before the close
    send_timeout: float = 60.0
    graceful_timeout: float = 30.0
    access_log: str | None = None
    error_log: str | None = None
    use_uvloop: bool = True
    backlog: int = 2048
    #: 0: one process, no master; N: a master and N worker processes
    workers: int = 0
    #: import the app in the master before forking (default: each worker imports it)
    preload: bool = False
    max_requests: int = 0
    max_requests_jitter: int = 0
    #: seconds a request may run before the master kills its worker (0: never)
    harakiri: float = 0.0
    #: MiB of RSS above which a worker is recycled (0: never)
    reload_on_rss: int = 0
    pidfile: str | None = None
    #: the user and group the workers run as (the master binds as root, then they switch)
    user: str | None = None
    group: str | None = None
    #: uWSGI-style stats server: HOST:PORT or a unix socket path
    stats: str | None = None
    #: Prometheus text exposition over HTTP: HOST:PORT
    metrics: str | None = None

    def check(self) -> None:
        """Refuse combinations that cannot work, naming the setting."""
        if ":" not in self.app:
            raise ConfigError(f"app: expected MODULE:CALLABLE, got {self.app!r}")
        if not self.listen:
            raise ConfigError("listen: give at least one --http or --uwsgi-socket")
        if self.workers < 0:
            raise ConfigError(f"workers: expected 0 or more, got {self.workers}")
        if (self.harakiri or self.stats or self.metrics or self.max_requests) and not self.workers:
            raise ConfigError(
                "workers: harakiri, max-requests, stats and metrics need a master: give --workers N"
            )
        if self.threads < 0:
            raise ConfigError(f"threads: expected 0 or more, got {self.threads}")
        if self.mount_prefix and not self.mount_prefix.startswith("/"):
            raise ConfigError(
                f"mount-prefix: expected a path starting with '/', got {self.mount_prefix!r}"
            )
        for name in (
            "keepalive_timeout",
            "header_timeout",
            "body_timeout",
            "send_timeout",
            "graceful_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name.replace('_', '-')}: expected a positive number of seconds"
                )
