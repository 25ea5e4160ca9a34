"""The front server's configuration objects, as the router, static files and proxy see them.

Built once from the [front] table of gantry.toml (see ``gantry.config.front``);
plain frozen dataclasses, so every part of the front can be tested without files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessRule:
    """One allow/deny line; nginx order: the first rule matching the client decides."""

    allow: bool
    network: IPNetwork | None  # None means "all"


@dataclass(frozen=True)
class Location:
    """A location block: how requests whose path matches are answered."""

    path: str  # the prefix, the exact path ("=") or the regular expression ("~", "~*")
    modifier: str = ""  # "" (prefix), "=", "^~", "~", "~*"
    root: str | None = None
    alias: str | None = None
    index: tuple[str, ...] = ("index.html",)
    try_files: tuple[str, ...] = ()
    autoindex: bool = False
    expires: int | None = None  # seconds; Cache-Control: max-age and Expires
    proxy: str | None = None  # the name of an upstream
    access: tuple[AccessRule, ...] = ()
    #: serve files starting with "." (off, as nginx configs usually deny them)
    hidden_files: bool = False
    #: follow symlinks leading out of the root (off)
    follow_symlinks_outside_root: bool = False
    gzip_static: bool = True  # serve x.gz / x.br siblings to clients that accept them
    #: the app's mount point ("/blog"): SCRIPT_NAME (and PATH_INFO without it) to uwsgi
    #: upstreams, the ``X-Script-Name`` header to HTTP ones
    script_name: str | None = None
    #: read the whole request body before proxying (nginx's proxy_request_buffering);
    #: off streams a Content-Length body to the upstream as it arrives
    request_buffering: bool = True
    #: the name of the cache zone proxied responses are stored in (None: not cached)
    cache: str | None = None


@dataclass(frozen=True)
class VirtualServer:
    """A server block: names it answers to, and its locations in file order."""

    server_names: tuple[str, ...] = ()
    default: bool = False
    locations: tuple[Location, ...] = ()
    access: tuple[AccessRule, ...] = ()
    #: the indexes (in FrontConfig.listeners) of the listeners it answers on; (): all
    listen: tuple[int, ...] = ()
    #: the PEM files of its certificate chain and key (TLS listeners)
    ssl_certificate: str | None = None
    ssl_certificate_key: str | None = None
    ssl_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    #: the Strict-Transport-Security value added to its https responses (None: none)
    hsts: str | None = None


@dataclass(frozen=True)
class Listener:
    """One listening address of the front and its flags (nginx's `listen ... ssl`)."""

    address: str  # "HOST:PORT", "[V6]:PORT", ":PORT" or "unix:PATH", without flags
    ssl: bool = False


@dataclass(frozen=True)
class UpstreamServer:
    """One server of an upstream pool."""

    address: str  # "HOST:PORT" or "unix:/path"
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False


@dataclass(frozen=True)
class HealthCheck:
    """Active health checks (open-source nginx has none): probe each server on a timer."""

    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    expect_status: int = 200
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class Upstream:
    """A named pool the locations proxy to."""

    name: str
    protocol: str = "http"  # "http" or "uwsgi"
    servers: tuple[UpstreamServer, ...] = ()
    balance: str = "round_robin"  # round_robin | least_conn | ip_hash | hash
    hash_key: str = "$request_uri"
    max_tries: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 128  # idle connections kept per worker
    keepalive_timeout: float = 1.5  # seconds an idle kept connection is trusted
    #: a uwsgi upstream that is gantry serve keeps the connection (GANTRY_KEEPALIVE=1)
    gantry_keepalive: bool = False
    #: also retry idempotent requests on these (nginx's proxy_next_upstream)
    next_upstream: tuple[str, ...] = ("error",)
    health_check: HealthCheck | None = None
    #: protocol "https": check the servers' certificates (against ssl_trusted_certificate,
    #: else the system's CAs) for ssl_name, else the host of each server's address
    ssl_verify: bool = True
    ssl_trusted_certificate: str | None = None
    ssl_name: str | None = None


@dataclass(frozen=True)
class CacheZone:
    """A cache zone (``[front.cache.NAME]``): where its entries live and how they are used.

    Sizes in bytes, times in seconds; ``valid`` maps a status (0: any) to the lifetime of
    responses that carry no freshness of their own.
    """

    name: str
    path: str
    max_size: int = 1024**3
    memory: int = 16 * 1024**2
    inactive: float = 600.0
    max_object_size: int = 1024**3
    key: str = "$scheme$host$request_uri"
    valid: dict[int, float] = field(default_factory=dict)
    use_stale: tuple[str, ...] = ()
    background_update: bool = False
    lock: bool = False
    lock_timeout: float = 5.0
    min_uses: int = 1
    bypass: tuple[str, ...] = ()
    purge_allow: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class FrontConfig:
    """The whole [front] table."""

    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    #: the same addresses with their flags, in the same order (empty: plain HTTP on all)
    listeners: tuple[Listener, ...] = ()
    workers: int = 1
    servers: tuple[VirtualServer, ...] = ()
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    access_log: str | None = None
    #: "combined" or "json"
    access_log_format: str = "combined"
    error_pages: dict[int, str] = field(default_factory=dict)
    client_max_body_size: int = 1024 * 1024 * 1024
    #: the user and group the workers run as
    user: str | None = None
    group: str | None = None
    # Client timeouts and the graceful stop (seconds), as nginx names them.
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    graceful_timeout: float = 10.0
    #: cache zones by name, for a location's ``cache``
    caches: dict[str, CacheZone] = field(default_factory=dict)
    #: the control socket's path (``gantry ctl``), None: none
    control: str | None = None
