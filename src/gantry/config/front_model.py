"""The front server's configuration objects, as the router, static files and proxy see them.

Built once from the [front] table of gantry.toml (see ``gantry.config.front``);
plain frozen dataclasses, so every part of the front can be tested without files.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Template:
    """A value with nginx variables, split once at load: ``parts`` alternate literal text
    (even indexes) and variable names (odd: "host", "http_user_agent", "1")."""

    text: str
    parts: tuple[str, ...] = ()

    @property
    def constant(self) -> bool:
        """No variable in it: its value is its text."""
        return len(self.parts) <= 1


@dataclass(frozen=True)
class RewriteRule:
    """One nginx ``rewrite``: the regex (matched against $uri), the replacement and the
    flag ("" none, "last", "break", "redirect", "permanent")."""

    pattern: re.Pattern[str]
    replacement: Template
    flag: str = ""
    #: the replacement starts with http://, https:// or $scheme: always a redirect
    absolute: bool = False
    #: the request's args are appended (the replacement does not end with "?")
    keep_args: bool = True


@dataclass(frozen=True)
class ReturnRule:
    """nginx's ``return``: a status and a URL (301, 302, 303, 307, 308) or a body text."""

    status: int
    text: Template | None = None


@dataclass(frozen=True)
class HeaderRule:
    """One ``add_header`` field: added to responses of 200, 201, 204, 206, 301, 302, 303,
    304, 307 and 308, or to every response when ``always``."""

    name: str
    value: Template
    always: bool = False
    #: the whole field line (CRLF-ended) when the value has no variable; b"" otherwise
    line: bytes = b""


@dataclass(frozen=True)
class RewriteRules:
    """What nginx's rewrite module does in one block: the rewrites in order, then the
    return (if no rewrite stopped the processing)."""

    rewrites: tuple[RewriteRule, ...] = ()
    return_: ReturnRule | None = None

    def __bool__(self) -> bool:
        return bool(self.rewrites) or self.return_ is not None


@dataclass(frozen=True)
class AccessRule:
    """One allow/deny line; nginx order: the first rule matching the client decides."""

    allow: bool
    network: IPNetwork | None  # None means "all"


@dataclass(frozen=True)
class LimitReq:
    """One ``limit_req`` of a location (or server): which zone, and how excess is treated.

    ``burst`` and ``delay`` are in requests; ``nodelay`` means excess up to ``burst`` is
    never delayed (nginx's ``nodelay``, the same as ``delay = burst``)."""

    zone: str
    burst: int = 0
    nodelay: bool = False
    delay: int = 0
    status: int = 503
    dry_run: bool = False


@dataclass(frozen=True)
class LimitConn:
    """One ``limit_conn``: at most ``limit`` requests in progress per key of ``zone``."""

    zone: str
    limit: int
    status: int = 503
    dry_run: bool = False


@dataclass(frozen=True)
class LimitReqZone:
    """``[front.limit_req_zone.NAME]``: a key, a rate in requests per second (a float:
    "600r/m" is 10.0) and the zone's size in bytes (its number of keys follows)."""

    name: str
    key: str
    rate: float
    size: int = 1024 * 1024


@dataclass(frozen=True)
class LimitConnZone:
    """``[front.limit_conn_zone.NAME]``: the key requests in progress are counted by."""

    name: str
    key: str
    size: int = 1024 * 1024


@dataclass(frozen=True)
class AutobanRule:
    """``[[front.autoban]]``: ``count`` events of kind ``when`` ("limit_req",
    "limit_conn", a status "401" or a class "4xx") from one address within ``within``
    seconds ban it for ``ban_for`` seconds."""

    when: str
    count: int
    within: float
    ban_for: float


@dataclass(frozen=True)
class SharedStore:
    """``[front.shared]``: limit counters and bans shared by fronts through Redis."""

    redis: str
    #: "open": Redis unreachable, local limits apply; "closed": limited requests refused
    fail: str = "open"


@dataclass(frozen=True)
class Compression:
    """On-the-fly compression of responses (``gzip = true``): what is compressed and how."""

    #: gzip_comp_level (1-9); brotli's quality and zstd's level too
    level: int = 1
    #: the media types compressed (lower case, without parameters), text/html always
    types: frozenset[str] = frozenset({"text/html"})
    #: any media type ("*" in gzip_types)
    any_type: bool = False
    #: bodies shorter than this (when their length is known) are sent as they are
    min_length: int = 256
    #: add ``Vary: Accept-Encoding`` to responses that could be compressed
    vary: bool = True
    #: the content codings offered, the server's preference first: "zstd", "br", "gzip"
    codings: tuple[str, ...] = ("gzip",)


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
    #: extra FastCGI params (name, value) of a location proxied to a fastcgi upstream
    fastcgi_param: tuple[tuple[bytes, bytes], ...] = ()
    #: nginx's fastcgi_split_path_info: a regex whose two groups split the path into
    #: the script ($fastcgi_script_name) and PATH_INFO ($fastcgi_path_info)
    fastcgi_split_path_info: re.Pattern[str] | None = None
    #: read the whole request body before proxying (nginx's proxy_request_buffering);
    #: off streams a Content-Length body to the upstream as it arrives
    request_buffering: bool = True
    #: pass WebSocket upgrades to an HTTP upstream (False: 403)
    websocket: bool = True
    #: the name of the cache zone proxied responses are stored in (None: not cached)
    cache: str | None = None
    #: request-rate and concurrency limits (nginx's limit_req / limit_conn); empty:
    #: the server's apply, as nginx inherits them only when a location has none
    limit_req: tuple[LimitReq, ...] = ()
    limit_conn: tuple[LimitConn, ...] = ()
    #: the location's own rewrites and return (the server's run before location selection)
    rewrite: RewriteRules = RewriteRules()
    #: add_header, proxy_set_header, proxy_hide_header: the server's merged with the
    #: location's own (the location's wins on the same name; lower-case names to hide)
    add_header: tuple[HeaderRule, ...] = ()
    proxy_set_header: tuple[tuple[str, Template], ...] = ()
    proxy_hide_header: frozenset[bytes] = frozenset()
    #: on-the-fly compression (gzip = true; the server's unless the location sets its own);
    #: None: off
    compression: Compression | None = None


@dataclass(frozen=True)
class VirtualServer:
    """A server block: names it answers to, and its locations in file order."""

    server_names: tuple[str, ...] = ()
    default: bool = False
    locations: tuple[Location, ...] = ()
    access: tuple[AccessRule, ...] = ()
    limit_req: tuple[LimitReq, ...] = ()
    limit_conn: tuple[LimitConn, ...] = ()
    #: the server-level rewrites and return, run before a location is chosen
    rewrite: RewriteRules = RewriteRules()
    #: add_header of responses no location answers (the server's own)
    add_header: tuple[HeaderRule, ...] = ()
    #: compression of responses no location answers (None: off)
    compression: Compression | None = None
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
    """One listening address of the front and its flags (nginx's `listen ... ssl` and
    `listen ... proxy_protocol`)."""

    address: str  # "HOST:PORT", "[V6]:PORT", ":PORT" or "unix:PATH", without flags
    ssl: bool = False
    #: a PROXY protocol v1/v2 header comes first, from a peer in real_ip.from
    proxy_protocol: bool = False
    #: HTTP/2 offered by ALPN (an ssl listener)
    http2: bool = False
    #: cleartext HTTP/2 with prior knowledge: every connection is HTTP/2
    h2c: bool = False

    @property
    def flags(self) -> frozenset[str]:
        """Its flags as written after the address."""
        flags: set[str] = set()
        if self.ssl:
            flags.add("ssl")
        if self.proxy_protocol:
            flags.add("proxy_protocol")
        if self.http2:
            flags.add("h2")
        if self.h2c:
            flags.add("h2c")
        return frozenset(flags)

    @property
    def spec(self) -> str:
        """The address and its flags in one order (what ``gantry check`` prints)."""
        return " ".join([self.address, *sorted(self.flags)])


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
    protocol: str = "http"  # "http", "https", "uwsgi" or "fastcgi"
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
class RealIp:
    """``[front.real_ip]``: whom to believe about the client's address (nginx's realip)."""

    #: the trusted proxies (set_real_ip_from)
    trusted: tuple[IPNetwork, ...] = ()
    #: connections over a unix socket are trusted ("unix:" in from)
    trust_unix: bool = False
    #: "X-Forwarded-For", "X-Real-IP", "proxy_protocol", or "" (none: the peer's address)
    header: str = ""
    #: skip trusted addresses from the right of X-Forwarded-For (real_ip_recursive)
    recursive: bool = False


@dataclass(frozen=True)
class Blocklist:
    """``[front.blocklist]``: addresses refused before anything else runs."""

    #: files of addresses and CIDRs, one a line, watched while running
    files: tuple[str, ...] = ()
    #: 403, or 444: close without an answer
    status: int = 403
    #: the runtime bans file (ctl, autoban), kept across restarts; "" for none
    state: str = ""


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
    #: "combined", "json" or a template of nginx's $variables
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
    #: seconds a WebSocket tunnel may stay silent both ways
    websocket_idle_timeout: float = 60.0
    #: HTTP/2: open streams of one connection, the largest header block (bytes), and
    #: seconds a connection with no open stream is kept
    http2_max_concurrent_streams: int = 128
    http2_max_header_size: int = 16 * 1024
    http2_idle_timeout: float = 180.0
    #: cache zones by name, for a location's ``cache``
    caches: dict[str, CacheZone] = field(default_factory=dict)
    #: the control socket's path (``gantry ctl``), None: none
    control: str | None = None
    #: limit zones by name, for the limit_req / limit_conn of servers and locations
    limit_req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    limit_conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)
    autoban: tuple[AutobanRule, ...] = ()
    #: where bans are kept across restarts (JSON lines; None: in memory only)
    ban_file: str | None = None
    shared: SharedStore | None = None
    real_ip: RealIp = field(default_factory=RealIp)
    blocklist: Blocklist = field(default_factory=Blocklist)
    # Slow clients: minimum rates (bytes a second, 0: off) once a head or body has begun,
    # after a grace; requests on one connection; connections of one worker and one address.
    client_header_min_rate: int = 0
    client_body_min_rate: int = 0
    client_min_rate_grace: float = 2.0
    keepalive_requests: int = 1000
    worker_connections: int = 10000
    #: the open-file limit set at start (0: what worker_connections needs, if allowed)
    worker_rlimit_nofile: int = 0
    max_connections_per_address: int = 0
    #: the stats and metrics sockets of `gantry front` (its master serves them)
    stats: str | None = None
    metrics: str | None = None
