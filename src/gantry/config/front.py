"""The [front] table of gantry.toml: a pydantic schema, turned into ``FrontConfig``."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import ssl
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from gantry.config import ConfigError, parse_address
from gantry.config.certificates import CertificateError, load_pair
from gantry.config.document import read_document
from gantry.config.errors import error_lines
from gantry.config.file import optional_address_check
from gantry.config.front_model import (
    AccessRule,
    AutobanRule,
    Blocklist,
    CacheZone,
    Compression,
    FrontConfig,
    HealthCheck,
    LimitConn,
    LimitConnZone,
    LimitReq,
    LimitReqZone,
    Listener,
    Location,
    RealIp,
    SharedStore,
    Upstream,
    UpstreamServer,
    VirtualServer,
)
from gantry.config.front_rules import (
    AddHeaders,
    HideHeaders,
    ReturnValue,
    Rewrites,
    SetHeaders,
    compile_rewrites,
    header_rules,
    merge_headers,
    set_header_rules,
)
from gantry.config.units import ByteRate, Duration, Size, WholeSeconds

__all__ = [
    "LOG_VARIABLES",
    "ControlPath",
    "load_front_config",
    "front_config_from_dict",
    "parse_listener",
    "split_listen",
    "split_log_format",
]

#: the variables an access_log_format template may use (nginx's names), besides
#: $http_NAME for any request field
LOG_VARIABLES = frozenset(
    {
        "remote_addr", "remote_user", "time_local", "time_iso8601", "msec", "request",
        "request_method", "request_uri", "server_protocol", "status", "body_bytes_sent",
        "http_referer", "http_user_agent", "upstream_addr", "upstream_response_time",
        "request_time", "upstream_cache_status", "limit_req_status", "bytes_received",
        "remote_port",
    }
)  # fmt: skip
_LOG_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def split_log_format(template: str) -> list[str]:
    """An nginx log_format template as its literal text and variable names in turn
    (text, name, text, ..., text); ValueError naming an unknown variable."""
    parts: list[str] = []
    position = 0
    for match in _LOG_VARIABLE.finditer(template):
        name = match.group(1) or match.group(2)
        if name not in LOG_VARIABLES and not (name.startswith("http_") and len(name) > 5):
            known = ", ".join(f"${v}" for v in sorted(LOG_VARIABLES))
            raise ValueError(f"unknown variable ${name} (known: {known}, $http_NAME)")
        parts += [template[position : match.start()], name]
        position = match.end()
    parts.append(template[position:])
    return parts


def _log_format(value: str) -> str:
    if value in ("combined", "json"):
        return value
    if "$" not in value:
        raise ValueError(
            f"expected 'combined', 'json' or a template with $variables, got {value!r}"
        )
    split_log_format(value)
    return value


class _Strict(BaseModel):
    # the policy of every table: unknown keys and values of the wrong type are errors
    # populate_by_name: `gantry up` passes the dumped table on, keyed by field names
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _upstream_address(text: str) -> str:
    # the proxy connects to "unix:PATH" or splits "HOST:PORT" at the last colon
    if text.startswith("unix:") and len(text) > 5:
        return text
    try:
        address = parse_address(text, "http", "")
    except ConfigError:
        address = None
    if address is None or address.port is None:
        raise ValueError(f"expected 'HOST:PORT' or 'unix:/path', got {text!r}")
    return text


#: what nginx's proxy_next_upstream names and the front's proxy reads
NextUpstream = Literal[
    "error",
    "timeout",
    "invalid_header",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "non_idempotent",
    "off",
]


#: the flags a listen address may carry after it, as nginx writes them: ssl (HTTPS),
#: proxy_protocol (a PROXY protocol v1/v2 header comes first, from a peer in real_ip.from),
#: h2 (HTTP/2 by ALPN on an ssl listener; nginx's older spelling "http2" too) and h2c
#: (cleartext HTTP/2 with prior knowledge)
LISTEN_FLAGS: Final = frozenset({"ssl", "proxy_protocol", "h2", "http2", "h2c"})


def parse_listener(text: str) -> Listener:
    """The one parser of a [front] listen entry: ``"0.0.0.0:443 ssl"`` -> its Listener;
    ValueError for a bad address or an unknown flag."""
    address, *flags = text.split()
    for flag in flags:
        if flag not in LISTEN_FLAGS:
            known = ", ".join(sorted(LISTEN_FLAGS))
            raise ValueError(f"unknown listen flag {flag!r} in {text!r} (known: {known})")
    if "ssl" in flags and "proxy_protocol" in flags:
        # the PROXY header comes before the TLS handshake, and the loop's TLS transport
        # would take it for the handshake's first bytes
        raise ValueError(
            f"'ssl' and 'proxy_protocol' on one listener are not supported yet, in {text!r}"
        )
    h2 = "h2" in flags or "http2" in flags
    if h2 and "ssl" not in flags:
        # ALPN is a TLS extension: without TLS a client cannot ask for HTTP/2 that way
        raise ValueError(
            f"the listen flag 'h2' needs 'ssl' (HTTP/2 by ALPN), in {text!r}; "
            "cleartext HTTP/2 with prior knowledge is 'h2c'"
        )
    if "h2c" in flags and ("ssl" in flags or h2 or "proxy_protocol" in flags):
        raise ValueError(
            f"'h2c' (cleartext HTTP/2 with prior knowledge) takes no other flag, in {text!r}"
        )
    try:
        parse_address(address, "http", "")
    except ConfigError as exc:
        # parse_address's own words (which part is wrong), and the flags a listener takes
        message = str(exc).partition(": ")[2] or str(exc)
        if flags:
            flags_known = "'ssl', 'h2', 'h2c', 'proxy_protocol'"
            message += f" (in {text!r}: an address, then flags {flags_known})"
        raise ValueError(message) from None
    return Listener(
        address,
        "ssl" in flags,
        "proxy_protocol" in flags,
        "h2" in flags or "http2" in flags,
        "h2c" in flags,
    )


def split_listen(text: str) -> tuple[str, frozenset[str]]:
    """``"0.0.0.0:443 ssl"`` -> ("0.0.0.0:443", {"ssl"}), through parse_listener."""
    listener = parse_listener(text)
    return listener.address, listener.flags


def _listen_spec(text: str) -> str:
    if not text.strip():
        raise ValueError(
            "expected 'HOST:PORT' with optional flags ('ssl', 'h2', 'h2c', 'proxy_protocol'), "
            "got ''"
        )
    return parse_listener(text).spec


#: a front listen address with its flags: "0.0.0.0:443 ssl"
ListenSpec = Annotated[str, AfterValidator(_listen_spec)]

#: the TLS versions a server may offer (1.0 and 1.1 are broken: RFC 8996)
TLSVersion = Literal["TLSv1.2", "TLSv1.3"]


def _default_protocols() -> list[TLSVersion]:
    return ["TLSv1.2", "TLSv1.3"]


def _control_path(text: str) -> str:
    # a unix socket's path is at most 107 bytes (sun_path); relative paths would name
    # different files for the front and for `gantry ctl` run from elsewhere
    path = text.removeprefix("unix:")
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"expected the absolute path of a unix socket, got {text!r}")
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"expected a unix socket path of at most 107 bytes, got {text!r}")
    return path


#: the path of a control socket (``gantry ctl``)
ControlPath = Annotated[str, AfterValidator(_control_path)]


def _status_keys(pages: dict[str, str]) -> dict[str, str]:
    for code in pages:
        if not (code.isdigit() and 400 <= int(code) <= 599):
            raise ValueError(f"expected HTTP statuses from 400 to 599 as keys, got {code!r}")
    return pages


def _next_upstream_default() -> list[NextUpstream]:
    return ["error"]


def _off_alone(values: list[str]) -> list[str]:
    if "off" in values and len(values) > 1:
        raise ValueError(f"expected 'off' alone or a list without it, got {values!r}")
    return values


class UpstreamServerSettings(_Strict):
    """One server of an upstream pool (nginx's `server` line in an `upstream` block)."""

    address: Annotated[str, AfterValidator(_upstream_address)] = Field(
        description="'HOST:PORT' or 'unix:/path'."
    )
    weight: int = Field(1, ge=1, description="Share of requests (round robin, least_conn, hash).")
    max_fails: int = Field(1, ge=0, description="Failures within fail_timeout that mark it down.")
    fail_timeout: Duration = Field(10.0, gt=0, description="Seconds it then stays out of rotation.")
    backup: bool = Field(False, description="Used only when every primary server is down.")
    down: bool = Field(False, description="Never used (kept in the list for the hash).")


class HealthCheckSettings(_Strict):
    """Active health checks of an upstream's servers: each server is probed on a timer and
    taken out of rotation after `fall` failed probes (open-source nginx has no such thing)."""

    path: str = Field("/", description="Path requested from each server.")
    interval: Duration = Field(5.0, gt=0, description="Seconds between two probes of a server.")
    timeout: Duration = Field(2.0, gt=0, description="Seconds a probe may take.")
    expect_status: int = Field(200, ge=100, le=599, description="The status that means healthy.")
    rise: int = Field(2, ge=1, description="Passed probes in a row that bring a server back.")
    fall: int = Field(3, ge=1, description="Failed probes in a row that take it out.")


class UpstreamSettings(_Strict):
    """A named pool of servers a location can proxy to (nginx's `upstream` block); each
    `[[app]]` pool of `gantry up` adds one of its own name."""

    protocol: Literal["http", "https", "uwsgi", "fastcgi"] = Field(
        "http",
        description="How to speak to the servers: HTTP, HTTP over TLS, uwsgi, or FastCGI "
        "(php-fpm: SCRIPT_FILENAME is the location's root + the path).",
    )
    servers: list[UpstreamServerSettings] = Field(min_length=1, description="The pool.")
    balance: Literal["round_robin", "least_conn", "ip_hash", "hash"] = Field(
        "round_robin",
        description="How a server is picked: smooth weighted round robin, fewest requests in "
        "flight, the client's /24 (IPv4) as nginx's ip_hash, or a consistent hash of `key`.",
    )
    key: str = Field(
        "$request_uri",
        description="The key of balance = 'hash', with nginx variables: $request_uri, $uri, "
        "$args, $host, $remote_addr, $request_method, $http_NAME, $cookie_NAME.",
    )
    max_tries: int = Field(3, ge=1, description="Servers tried for one request at most.")
    connect_timeout: Duration = Field(
        5.0, gt=0, description="Seconds to connect to a server (nginx's proxy_connect_timeout)."
    )
    read_timeout: Duration = Field(
        60.0,
        gt=0,
        description="Seconds to wait for the response, or between two reads of it (504 after).",
    )
    send_timeout: Duration = Field(
        60.0, gt=0, description="Seconds allowed between two writes of the request body."
    )
    keepalive: int = Field(
        128,
        ge=0,
        description="Idle connections kept per worker for reuse (HTTP upstreams, "
        "and uwsgi upstreams with gantry_keepalive).",
    )
    keepalive_timeout: Duration = Field(
        1.5,
        gt=0,
        description="Seconds an idle kept connection may wait for its next request; "
        "keep it below the upstream's own keep-alive timeout (gunicorn: 2 s, gantry: 5 s).",
    )
    gantry_keepalive: bool = Field(
        False,
        description="uwsgi upstreams that are `gantry serve` only: speak gantry's own "
        "packet to them (the environ in one split, modifier2 0x67) and keep the connection "
        "for the next request. Real uWSGI cannot read that packet: leave it false there "
        "(uWSGI closes after each response, as nginx expects). `gantry up` sets it for its "
        "pools.",
    )
    health_check: HealthCheckSettings | None = Field(
        None, description="Active health checks; unset: only passive ones (max_fails)."
    )
    ssl_verify: bool = Field(
        True,
        description="protocol = 'https': check each server's certificate and name (502 when "
        "it does not pass); false accepts any (nginx's proxy_ssl_verify, on here).",
    )
    ssl_trusted_certificate: str | None = Field(
        None,
        description="PEM file of the CAs a server's certificate is checked against; unset: "
        "the system's.",
    )
    ssl_name: str | None = Field(
        None,
        description="The name sent as SNI and checked in the certificate; unset: the host "
        "of each server's address.",
    )
    next_upstream: Annotated[list[NextUpstream], AfterValidator(_off_alone)] = Field(
        default_factory=_next_upstream_default,
        description="When an idempotent request is tried on the next server, as nginx's "
        "proxy_next_upstream: error, timeout, invalid_header, http_500, http_502, "
        "http_503, http_504, http_403, http_404, http_429, non_idempotent, or off alone.",
    )


#: a media type of gzip_types: "text/css", or "*" for any
MediaType = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][\w.+-]*/[A-Za-z0-9*][\w.+-]*)$")]
#: a content coding of compress
Coding = Literal["zstd", "br", "gzip"]


class LocationSettings(_Strict):
    """A location block: how requests whose path matches are answered: a static file
    (`root` or `alias`), or a proxied response (`proxy`). nginx's precedence: an exact
    match, then the longest prefix (stopping there with '^~'), then the first regex in
    file order, else that longest prefix."""

    path: str = Field(description="Prefix, exact path, or regular expression (see modifier).")
    modifier: Literal["", "=", "^~", "~", "~*"] = Field(
        "",
        description="nginx's location modifier: '=' exact, '^~' prefix that stops regex "
        "search, '~' regex, '~*' case-insensitive regex, '' prefix.",
    )
    root: str | None = Field(
        None,
        description="Serve files from this directory: the file is root + the whole path, "
        "as nginx's root.",
    )
    alias: str | None = Field(
        None,
        description="Serve files from this directory in place of the location's path "
        "(location '/static/' with alias '/srv/assets/' maps /static/a.css to "
        "/srv/assets/a.css); end both with '/' or neither. Not together with root.",
    )
    index: list[str] = Field(
        default_factory=lambda: ["index.html"],
        description="Files tried, in order, for a request ending in '/'.",
    )
    try_files: list[str] = Field(
        default_factory=list,
        description="nginx's try_files: candidates ('$uri', '$uri/', '/index.html') served "
        "from this location if they exist; the last entry is the fallback: '=404' (a "
        "status) or a path served from this location.",
    )
    autoindex: bool = Field(
        False, description="List a directory that has no index file (else 403)."
    )
    expires: WholeSeconds | None = Field(
        None, ge=0, description="Seconds for Cache-Control: max-age."
    )
    proxy: str | None = Field(None, description="Name of the upstream to proxy to.")
    access: list[str] = Field(
        default_factory=list,
        description="'allow CIDR' / 'deny CIDR' / 'deny all' lines, checked after the server's; "
        "the first line matching the client decides (403 for deny).",
    )
    hidden_files: bool = Field(
        False, description="Serve paths with a segment starting with '.' (else 404)."
    )
    follow_symlinks_outside_root: bool = Field(
        False, description="Follow symbolic links that lead out of root or alias (else 404)."
    )
    gzip_static: bool = Field(
        True,
        description="Serve a precompressed sibling (file.br, file.gz) to clients that accept it.",
    )
    gzip: bool | None = Field(
        None,
        description="Compress responses on the fly (gzip, and brotli and zstd when "
        "installed: see compress) for clients that accept it; unset: the server's.",
    )
    gzip_comp_level: int | None = Field(
        None, ge=1, le=9, description="Compression level, 1-9; unset: the server's."
    )
    gzip_types: list[MediaType] | None = Field(
        None, description="Media types compressed (text/html always); unset: the server's."
    )
    gzip_min_length: Size | None = Field(
        None, ge=0, description="Bodies shorter than this are not compressed; unset: the server's."
    )
    gzip_vary: bool | None = Field(
        None, description="Add Vary: Accept-Encoding; unset: the server's."
    )
    compress: list[Coding] | None = Field(
        None, description="Codings offered, preferred first; unset: the server's."
    )
    script_name: str | None = Field(
        None,
        pattern=r"^/[^?#]*[^/?#]$",
        description="Where the proxied app is mounted ('/blog'): SCRIPT_NAME and PATH_INFO "
        "without it for uwsgi upstreams, X-Script-Name for HTTP ones.",
    )
    fastcgi_param: dict[str, str] = Field(
        default_factory=dict,
        description="Extra FastCGI params for a location proxied to a protocol = 'fastcgi' "
        "upstream (nginx's fastcgi_param), beside the standard set (nginx's fastcgi_params "
        "and SCRIPT_FILENAME); one of the same name replaces the standard one.",
    )
    fastcgi_split_path_info: str | None = Field(
        default=None,
        description="nginx's fastcgi_split_path_info, for a location proxied to a protocol = "
        "'fastcgi' upstream: a regular expression with two groups, e.g. "
        "'^(.+?\\.php)(/.*)$', splitting the path into the script ($fastcgi_script_name: "
        "SCRIPT_NAME, and SCRIPT_FILENAME = root + it) and PATH_INFO ($fastcgi_path_info). "
        "try_files may name '$fastcgi_script_name'; the script must still be an existing "
        "file whose path matches the location's own regex, else 404. fastcgi_param values "
        "may use both variables.",
    )
    request_buffering: bool = Field(
        True,
        description="Read the whole body before proxying (retries stay possible); false "
        "streams a Content-Length body to the upstream as it arrives.",
    )
    websocket: bool = Field(
        True,
        description="Pass WebSocket upgrades (`Upgrade: websocket`) on to an HTTP upstream "
        "and relay the bytes both ways after its 101; false refuses them with 403.",
    )
    cache: str | None = Field(
        None,
        description="Name of the cache zone (`[front.cache.NAME]`) proxied responses of this "
        "location are stored in and answered from; unset: not cached.",
    )
    limit_req: list[LimitReqSettings] = Field(
        default_factory=list,
        description="Request-rate limits, all applied (nginx's limit_req); unset: the server's.",
    )
    limit_conn: list[LimitConnSettings] = Field(
        default_factory=list,
        description="Limits on requests in progress, all applied; unset: the server's.",
    )
    return_: ReturnValue = Field(
        None,
        alias="return",
        description="nginx's return: 'CODE URL' for 301, 302, 303, 307, 308 "
        "('301 https://$host$request_uri'), 'CODE text' for the others, 'CODE' alone, or a "
        "URL alone (302). Runs after this block's rewrites, unless one stopped them.",
    )
    rewrite: Rewrites = Field(
        default_factory=list,
        description="nginx's rewrite, in order: [regex, replacement] or [regex, "
        "replacement, flag] with flag 'last', 'break', 'redirect' (302) or 'permanent' "
        "(301); the regex is matched against $uri; the request's args are appended "
        "unless the replacement ends with '?'; a replacement starting with http://, "
        "https:// or $scheme is a redirect.",
    )
    add_header: AddHeaders = Field(
        default_factory=dict,
        description="Fields added to responses of 200, 201, 204, 206, 301, 302, 303, 304, 307 "
        "and 308 (nginx variables allowed; an empty value adds nothing); a value "
        "{ value = '...', always = true } is added to every response, errors too. Merged with the "
        "server's: the location's wins on the same name, the server's others stay.",
    )
    proxy_set_header: SetHeaders = Field(
        default_factory=dict,
        description="Request fields sent to the upstream in place of the client's "
        "('Host' = '$host', 'X-Real-IP' = '$remote_addr'); an empty value removes the "
        "field. Merged with the "
        "server's: the location's wins on the same name, the server's others stay.",
    )
    proxy_hide_header: HideHeaders = Field(
        default_factory=list,
        description="Fields of the upstream's responses not passed to the client "
        "('X-Powered-By'). Merged with the "
        "server's: the location's wins on the same name, the server's others stay.",
    )


#: what a stale entry may be served on (nginx's proxy_cache_use_stale)
UseStale = Literal[
    "error",
    "timeout",
    "updating",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "off",
]


def _compression(
    server: ServerSettings, loc: LocationSettings | None, where: str
) -> Compression | None:
    """The compression of a location (its own keys over the server's), None when off."""

    def pick(name: str) -> Any:
        own = getattr(loc, name) if loc is not None else None
        return own if own is not None else getattr(server, name)

    if not pick("gzip"):
        return None
    types = {t.lower() for t in pick("gzip_types")} | {"text/html"}
    wanted = pick("compress")
    if wanted is None:
        codings = tuple(c for c in ("zstd", "br", "gzip") if coding_available(c))
    else:
        for coding in wanted:
            if not coding_available(coding):
                raise ConfigError(
                    f"{where}.compress: {coding!r} needs the {_PACKAGES[coding]!r} package, "
                    "which is not installed (pip install gantry[compression])"
                )
        codings = tuple(dict.fromkeys(wanted))
        if not codings:
            raise ConfigError(f"{where}.compress: expected at least one of zstd, br, gzip")
    return Compression(
        level=pick("gzip_comp_level"),
        types=frozenset(types - {"*"}),
        any_type="*" in types,
        min_length=pick("gzip_min_length"),
        vary=pick("gzip_vary"),
        codings=codings,
    )


_PACKAGES = {"br": "brotli", "zstd": "zstandard", "gzip": "zlib"}


def coding_available(coding: str) -> bool:
    """Whether the module of a content coding can be imported here."""
    return importlib.util.find_spec(_PACKAGES[coding]) is not None


def _valid_keys(valid: dict[str, float]) -> dict[str, float]:
    for code in valid:
        if code != "any" and not (code.isdigit() and 200 <= int(code) <= 599):
            raise ValueError(
                f"expected HTTP statuses from 200 to 599 or 'any' as keys, got {code!r}"
            )
    return valid


def _networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"expected an IP network ('127.0.0.1/32', '::1'), got {value!r}"
            ) from None
    return values


class CacheSettings(_Strict):
    """A cache zone for proxied responses (RFC 9111, shared cache), used by the locations
    whose `cache` names it. One zone is shared by every front worker of the host; its
    entries live on disk under `path` and survive reloads and restarts."""

    path: str = Field(description="Directory of the zone's entries (made if missing).")
    max_size: Size = Field(
        1024**3, ge=0, description="Bytes on disk at most; least recently used entries go past it."
    )
    memory: Size = Field(
        16 * 1024**2, ge=0, description="Bytes of hot entries also held in each worker's memory."
    )
    inactive: Duration = Field(
        600.0, gt=0, description="Entries unused this long are dropped, fresh or not."
    )
    max_object_size: Size = Field(
        1024**3, ge=0, description="Largest response body stored, in bytes (larger: not stored)."
    )
    key: str = Field(
        "$scheme$host$request_uri",
        description="The primary key, with nginx variables ($scheme, $host, $request_uri, "
        "$uri, $args, $http_NAME, $cookie_NAME, ...).",
    )
    valid: Annotated[dict[str, Duration], AfterValidator(_valid_keys)] = Field(
        default_factory=dict,
        description="Lifetime by status for responses with no freshness of their own "
        '(nginx\'s proxy_cache_valid): {"200" = "10m", "404" = "1m", "any" = "1m"}.',
    )
    use_stale: Annotated[list[UseStale], AfterValidator(_off_alone)] = Field(
        default_factory=list,
        description="When a stale entry is served instead (nginx's proxy_cache_use_stale): "
        "error, timeout, updating, http_500, http_502, http_503, http_504, http_403, "
        "http_404, http_429, or off alone.",
    )
    background_update: bool = Field(
        False, description="A stale entry is served while one request refreshes it."
    )
    lock: bool = Field(
        False, description="One request fills a missing entry; the others wait for it."
    )
    lock_timeout: Duration = Field(
        5.0, gt=0, description="Seconds a request waits for the lock, then goes to the upstream."
    )
    min_uses: int = Field(
        1,
        ge=1,
        description="Requests for a key before its response is stored (counted per worker).",
    )
    bypass: list[str] = Field(
        default_factory=list,
        description="nginx variables ('$cookie_sessionid', '$http_authorization'): a request "
        "where one is neither empty nor '0' is not answered from the cache.",
    )
    purge_allow: Annotated[list[str], AfterValidator(_networks)] = Field(
        default_factory=list,
        description="Networks that may send PURGE (403 for any other address); empty: none.",
    )


class LimitReqSettings(_Strict):
    """One request-rate limit of a location or server (nginx's limit_req)."""

    zone: str = Field(description="Name of the `[front.limit_req_zone.NAME]` it counts in.")
    burst: int = Field(0, ge=0, description="Requests beyond the rate held (delayed) or let "
        "through (nodelay) before the rest are refused.")  # fmt: skip
    nodelay: bool = Field(False, description="Let requests within the burst through at once.")
    delay: int = Field(
        0, ge=0, description="Requests of the burst let through at once; the rest of it is "
        "delayed to the rate (nginx's delay=N)."
    )  # fmt: skip
    status: int = Field(503, ge=400, le=599, description="Status of a refused request (429...).")
    dry_run: bool = Field(
        False, description="Count and log as usual, but refuse and delay nothing."
    )


class LimitConnSettings(_Strict):
    """One concurrency limit of a location or server (nginx's limit_conn)."""

    zone: str = Field(description="Name of the `[front.limit_conn_zone.NAME]` it counts in.")
    limit: int = Field(ge=1, description="Requests in progress per key at most.")
    status: int = Field(503, ge=400, le=599, description="Status of a refused request (429...).")
    dry_run: bool = Field(False, description="Count and log as usual, but refuse nothing.")


_RATE = re.compile(r"^(\d+)r/([sm])$")


def _rate(text: str) -> str:
    match = _RATE.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"expected a rate such as '10r/s' or '600r/m', got {text!r}")
    return text


def _key(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a key with nginx variables ('$binary_remote_addr'), got ''")
    return text


class LimitReqZoneSettings(_Strict):
    """A request-rate zone (nginx's limit_req_zone): one leaky bucket per key, shared by
    every worker of the front; when full, the least recently used keys go."""

    key: Annotated[str, AfterValidator(_key)] = Field(
        description="What requests are counted by, with nginx variables: $binary_remote_addr, "
        "$remote_addr, $server_name, $host, $uri, $request_uri, $http_NAME, $cookie_NAME; "
        "a request whose key is empty is not limited."
    )
    rate: Annotated[str, AfterValidator(_rate)] = Field(
        description="Requests per second ('10r/s') or per minute ('600r/m')."
    )
    size: Size = Field(
        1024 * 1024, ge=4096, description="Shared memory for the keys (64 bytes a key)."
    )


class LimitConnZoneSettings(_Strict):
    """A concurrency zone (nginx's limit_conn_zone): requests in progress per key,
    shared by every worker of the front."""

    key: Annotated[str, AfterValidator(_key)] = Field(
        description="What requests are counted by (nginx variables, as limit_req_zone)."
    )
    size: Size = Field(
        1024 * 1024, ge=4096, description="Shared memory for the keys (64 bytes a key)."
    )


_WHEN = re.compile(r"^(limit_req|limit_conn|[1-5]\d\d|[1-5]xx)$")


def _when(text: str) -> str:
    if _WHEN.match(text) is None:
        raise ValueError(
            f"expected 'limit_req', 'limit_conn', a status ('401') or a class ('4xx'), got {text!r}"
        )
    return text


class AutobanSettings(_Strict):
    """A ban rule (fail2ban, built in): `count` events of one address within `within`
    ban it for `ban_for`; banned addresses get 403 from every worker."""

    when: Annotated[str, AfterValidator(_when)] = Field(
        description="What is counted: 'limit_req' or 'limit_conn' refusals (dry runs too), "
        "a response status ('401') or a class ('4xx')."
    )
    count: int = Field(ge=1, description="Events that trigger the ban.")
    within: Duration = Field(gt=0, description="The window they are counted in.")
    ban_for: Duration = Field(gt=0, description="How long the address is banned.")


class SharedSettings(_Strict):
    """State shared by several fronts (hosts) through Redis: limit_req counters (an atomic
    GCRA script, one round trip a request) and bans."""

    redis: str = Field(
        pattern=r"^(redis|unix)://",
        description="'redis://HOST:PORT/DB' or 'unix:///path/redis.sock?db=0'.",
    )
    fail: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: 'open' goes on with this front's own limits; "
        "'closed' refuses the requests of limited locations.",
    )


def _trusted_sources(values: list[str]) -> list[str]:
    for value in values:
        if value == "unix:":
            continue
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"expected an IP network ('10.0.0.0/8', '::1') or 'unix:', got {value!r}"
            ) from None
    return values


class RealIpSettings(_Strict):
    """``[front.real_ip]``: the client's real address, from a proxy in front of the front
    (nginx's realip module). Only a peer in `from` is believed; the address found is what
    the access log, allow/deny, the blocklist, X-Forwarded-For / X-Real-IP and the app's
    REMOTE_ADDR see."""

    # "from" is a Python keyword: the field is from_, the key is "from" (either is read)
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    from_: Annotated[list[str], AfterValidator(_trusted_sources)] = Field(
        default_factory=list,
        alias="from",
        description="Trusted proxies (nginx's set_real_ip_from): networks, and 'unix:' for "
        "connections over a unix socket. A proxy_protocol listener takes the header only "
        "from these (others are closed).",
    )
    header: Literal["X-Forwarded-For", "X-Real-IP", "proxy_protocol"] = Field(
        "X-Forwarded-For",
        description="Where the address is (nginx's real_ip_header): a request field, or "
        "the PROXY protocol header of a proxy_protocol listener.",
    )
    recursive: bool = Field(
        False,
        description="X-Forwarded-For: the last address not in `from`, read from the right "
        "(nginx's real_ip_recursive); false: the last address.",
    )


class BlocklistSettings(_Strict):
    """``[front.blocklist]``: client addresses refused before any other handler runs (after
    the real address is known). Its files are watched: a change applies in every worker
    within a second, without a reload."""

    files: list[str] = Field(
        default_factory=list,
        description="Files of one address or CIDR a line ('#' starts a comment); a missing "
        "file counts as empty until it appears.",
    )
    status: Literal[403, 444] = Field(
        403,
        description="The answer: 403, or 444 to close the connection without one. A client "
        "listed by its own address (no trusted proxy names another) is refused at accept: "
        "its first request gets the 403 unparsed and the connection closes (444: closed at "
        "once).",
    )
    state: str | None = Field(
        None,
        description="The runtime bans file (bans made while running, with their expiry and "
        "reason), kept across restarts: one JSON object a line, "
        '{"addr", "until", "reason"}; the same file as `[front] ban_file` (either key '
        "names it); unset: `control` + '.bans' when `control` is set, else none.",
    )


class ServerSettings(_Strict):
    """A server block (virtual host), picked by the request's Host as nginx does: an exact
    name, then the longest '*.example.test', then the longest 'www.example.*', then the
    first regex ('~...'), else the default server."""

    server_name: list[str] = Field(
        default_factory=list,
        description="Host names it answers to: 'example.test', '*.example.test', "
        "'.example.test' (the name and its subdomains), 'www.example.*', '~regex'.",
    )
    default: bool = Field(
        False,
        description="Answer requests no server_name matches (default: the first server).",
    )
    access: list[str] = Field(
        default_factory=list,
        description="'allow CIDR' / 'deny CIDR' / 'deny all' lines for every location; the "
        "first line matching the client decides (403 for deny).",
    )
    location: list[LocationSettings] = Field(
        default_factory=list, description="The server's locations."
    )
    gzip: bool = Field(
        False,
        description="Compress responses on the fly for clients that accept it (Accept-"
        "Encoding, q-values honoured): static files and proxied responses, streamed. Not "
        "compressed: ranges (206), HEAD, 204/304, bodies with a Content-Encoding or "
        "Cache-Control: no-transform, types not in gzip_types, bodies known to be shorter "
        "than gzip_min_length. Precompressed siblings (gzip_static) come first.",
    )
    gzip_comp_level: int = Field(
        1,
        ge=1,
        le=9,
        description="Compression level, 1 (fastest, nginx's default) to 9; also brotli's "
        "quality and zstd's level.",
    )
    gzip_types: list[MediaType] = Field(
        default_factory=lambda: ["text/html"],
        description="Media types compressed ('text/css', 'application/javascript'); "
        "text/html always; '*' for any.",
    )
    gzip_min_length: Size = Field(
        256,
        ge=0,
        description="Bodies shorter than this (when their length is known) are not compressed.",
    )
    gzip_vary: bool = Field(
        True, description="Add Vary: Accept-Encoding to responses that may be compressed."
    )
    compress: list[Coding] | None = Field(
        None,
        description="The codings offered, preferred first at equal q: 'zstd', 'br', "
        "'gzip'. Default: all three, those installed (brotli and zstd come with the "
        "'compression' extra: pip install gantry[compression]); naming one not installed "
        "is an error.",
    )

    limit_req: list[LimitReqSettings] = Field(
        default_factory=list,
        description="Request-rate limits of the locations that have none of their own.",
    )
    limit_conn: list[LimitConnSettings] = Field(
        default_factory=list,
        description="Limits on requests in progress of the locations that have none.",
    )
    return_: ReturnValue = Field(
        None,
        alias="return",
        description="nginx's return: 'CODE URL' for 301, 302, 303, 307, 308 "
        "('301 https://$host$request_uri'), 'CODE text' for the others, 'CODE' alone, or a "
        "URL alone (302). Runs after the server's rewrites, before a location is chosen.",
    )
    rewrite: Rewrites = Field(
        default_factory=list,
        description="nginx's rewrite, in order: [regex, replacement] or [regex, "
        "replacement, flag] with flag 'last', 'break', 'redirect' (302) or 'permanent' "
        "(301); the regex is matched against $uri; the request's args are appended "
        "unless the replacement ends with '?'; a replacement starting with http://, "
        "https:// or $scheme is a redirect.",
    )
    add_header: AddHeaders = Field(
        default_factory=dict,
        description="Fields added to responses of 200, 201, 204, 206, 301, 302, 303, 304, 307 "
        "and 308 (nginx variables allowed; an empty value adds nothing); a value "
        "{ value = '...', always = true } is added to every response, errors too. "
        "Every location gets them (see the location's key).",
    )
    proxy_set_header: SetHeaders = Field(
        default_factory=dict,
        description="Request fields sent to the upstream in place of the client's "
        "('Host' = '$host', 'X-Real-IP' = '$remote_addr'); an empty value removes the "
        "field. Every location gets them (see the location's key).",
    )
    proxy_hide_header: HideHeaders = Field(
        default_factory=list,
        description="Fields of the upstream's responses not passed to the client "
        "('X-Powered-By'). Every location gets them (see the location's key).",
    )
    listen: list[ListenSpec] | None = Field(
        None,
        description="The listeners of [front] listen it answers on, written as there "
        "('0.0.0.0:443 ssl'); unset: all of them.",
    )
    ssl_certificate: str | None = Field(
        None,
        description="PEM file of its certificate chain (the certificate first), for its "
        "'ssl' listeners; read at start and on SIGHUP.",
    )
    ssl_certificate_key: str | None = Field(
        None, description="PEM file of the certificate's private key."
    )
    ssl_protocols: list[TLSVersion] = Field(
        default_factory=_default_protocols,
        min_length=1,
        description="TLS versions offered: 'TLSv1.2', 'TLSv1.3' (1.0 and 1.1 are refused).",
    )
    hsts: str | None = Field(
        None,
        description="Strict-Transport-Security value added to its https responses "
        "('max-age=63072000; includeSubDomains'); unset: none.",
    )


class FrontSettings(_Strict):
    """``[front]``: the front server (nginx's role): where it listens, its virtual hosts
    (`[[front.server]]`) and the upstream pools its locations proxy to."""

    listen: list[ListenSpec] = Field(
        default_factory=lambda: ["127.0.0.1:8080"],
        description="HTTP sockets: 'HOST:PORT', '[V6]:PORT', ':PORT' or 'unix:PATH', each "
        "optionally followed by flags: 'ssl' for HTTPS ('0.0.0.0:443 ssl'), "
        "'proxy_protocol' (a PROXY protocol v1/v2 header comes first, from a peer in "
        "real_ip.from), 'h2' with 'ssl' for HTTP/2 by ALPN ('0.0.0.0:443 ssl h2'; HTTP/1.1 "
        "for clients that do not offer it), 'h2c' for cleartext HTTP/2 with prior knowledge "
        "('127.0.0.1:8080 h2c').",
    )
    workers: int = Field(1, ge=1, description="Worker processes, under the front's own master.")
    user: str | None = Field(
        None, description="User (name or uid) the workers run as (nginx's `user`); unset: "
        "the front's own."
    )  # fmt: skip
    group: str | None = Field(
        None, description="Group (name or gid) the workers run as; unset: the user's own group."
    )
    access_log: str | None = Field(
        None,
        description="Where the access log goes: a file it is appended to, '-' for standard "
        "output, 'stderr', or 'off'. Unset: none for `gantry front`, 'stderr' under "
        "`gantry up`.",
    )
    access_log_format: Annotated[str, AfterValidator(_log_format)] = Field(
        "combined",
        description="'combined': nginx's combined format, then upstream address, upstream "
        "response time and request time; 'json': one JSON object a line with those fields "
        "and upstream_cache_status; or a template as nginx's log_format writes it, e.g. "
        "'$remote_addr \"$request\" $status $upstream_cache_status' (variables: "
        + ", ".join(f"${v}" for v in sorted(LOG_VARIABLES))
        + ", $http_NAME for a request field; each value escaped as nginx does).",
    )
    stats: Annotated[str | None, AfterValidator(optional_address_check("stats"))] = Field(
        None,
        description="Stats server of `gantry front` in uWSGI's format (workers and cache "
        "zones), read by `gantry top`: 'HOST:PORT' or a unix socket path. Under `gantry up` "
        "the front's figures are in [stack] stats instead.",
    )
    metrics: Annotated[str | None, AfterValidator(optional_address_check("metrics"))] = Field(
        None,
        description="Prometheus metrics of `gantry front` over HTTP (workers and cache zones): "
        "'HOST:PORT'. Under `gantry up`, [stack] metrics.",
    )
    client_max_body_size: Size = Field(
        1024 * 1024 * 1024, ge=0, description="Largest request body in bytes (413 above)."
    )
    error_pages: Annotated[dict[str, str], AfterValidator(_status_keys)] = Field(
        default_factory=dict,
        description="HTML file sent for a status the front answers itself, by status: "
        '{"404" = "/srv/404.html", "502" = "/srv/502.html"}.',
    )
    server: list[ServerSettings] = Field(
        default_factory=list,
        description="Virtual hosts; with none, `gantry up` sends everything to the first pool.",
    )
    upstream: dict[str, UpstreamSettings] = Field(
        default_factory=dict, description="Upstream pools by name, for a location's `proxy`."
    )
    cache: dict[str, CacheSettings] = Field(
        default_factory=dict, description="Cache zones by name, for a location's `cache`."
    )
    control: ControlPath | None = Field(
        None,
        description="Unix socket (absolute path, mode 0600) the front's master answers "
        "`gantry ctl` on (purge, status); its folder must exist. Unset: none.",
    )
    limit_req_zone: dict[str, LimitReqZoneSettings] = Field(
        default_factory=dict, description="Request-rate zones by name, for `limit_req`."
    )
    limit_conn_zone: dict[str, LimitConnZoneSettings] = Field(
        default_factory=dict, description="Concurrency zones by name, for `limit_conn`."
    )
    autoban: list[AutobanSettings] = Field(
        default_factory=list, description="Ban rules (`[[front.autoban]]`)."
    )
    ban_file: str | None = Field(
        None,
        description="File the bans are kept in (one JSON object a line), read at start so "
        "they survive a restart: the runtime bans file, the same as "
        "`[front.blocklist] state` (naming two different files is an error); unset: "
        "`control` + '.bans' when `control` is set, else bans last until the front stops.",
    )
    shared: SharedSettings | None = Field(
        None, description="Limit counters and bans shared by several fronts through Redis."
    )
    # Client timeouts and the graceful stop (the front worker's own), as nginx names them.
    client_header_timeout: Duration = Field(
        60.0, gt=0, description="Seconds a client may take to send a request head (408 past it)."
    )
    client_body_timeout: Duration = Field(
        60.0, gt=0, description="Seconds between two reads of a request body (408 past it)."
    )
    keepalive_timeout: Duration = Field(
        75.0, gt=0, description="Seconds an idle keep-alive client connection is kept open."
    )
    send_timeout: Duration = Field(
        60.0, gt=0, description="Seconds a client may take to read part of a response."
    )
    graceful_timeout: Duration = Field(
        10.0, gt=0, description="Seconds a stopping worker lets in-flight requests finish."
    )
    http2_max_concurrent_streams: int = Field(
        128,
        ge=1,
        le=65536,
        description="Streams an HTTP/2 client may have open at once on one connection "
        "(SETTINGS_MAX_CONCURRENT_STREAMS); a stream past it is refused.",
    )
    http2_max_header_size: Size = Field(
        16 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest HTTP/2 request header block, encoded or decoded (HPACK), in "
        "bytes; a larger one closes the connection (GOAWAY).",
    )
    http2_idle_timeout: Duration = Field(
        180.0,
        gt=0,
        description="Seconds an HTTP/2 connection with no open stream is kept open "
        "(nginx's former http2_idle_timeout, 3 minutes, by default).",
    )
    websocket_idle_timeout: Duration = Field(
        60.0,
        gt=0,
        description="Seconds a WebSocket tunnel may carry no byte either way before both "
        "sides are closed (nginx closes one after proxy_read_timeout, 60 s).",
    )
    # Slow and greedy clients.
    client_header_min_rate: ByteRate = Field(
        0,
        ge=0,
        description="Once a request head has begun, bytes a second it must keep arriving "
        "at after client_min_rate_grace (as Apache's mod_reqtimeout MinRate); slower: 408 "
        "and close. 0: off.",
    )
    client_body_min_rate: ByteRate = Field(
        0,
        ge=0,
        description="The same for a request body, from the end of its head. 0: off.",
    )
    client_min_rate_grace: Duration = Field(
        2.0,
        gt=0,
        description="Seconds a head or body may take before its minimum rate is applied.",
    )
    keepalive_requests: int = Field(
        1000, ge=1, description="Requests one client connection may carry, then it closes."
    )
    worker_connections: int = Field(
        10000,
        ge=1,
        description="Client connections one worker holds at most; past it new ones are "
        "closed at once (one log line a second says so) while the open ones are served. A "
        "worker within 1/64 of it leaves new clients to the other workers on plain "
        "listeners; when every one is full, a new client is closed within two seconds.",
    )
    worker_rlimit_nofile: int = Field(
        0,
        ge=0,
        description="The open-file limit of the front's processes (nginx's "
        "worker_rlimit_nofile), set at start; past it a worker refuses new connections. "
        "0: raised, within the hard limit, to what worker_connections needs (twice it, "
        "for proxied requests' upstream connections, and 100 more).",
    )
    max_connections_per_address: int = Field(
        0,
        ge=0,
        description="Client connections one address may hold open in one worker; past it "
        "a new one is closed at once. 0: no cap.",
    )
    real_ip: RealIpSettings = Field(
        default_factory=lambda: RealIpSettings.model_validate({}),
        description="The client's real address.",
    )
    blocklist: BlocklistSettings = Field(
        default_factory=lambda: BlocklistSettings.model_validate({}),
        description="Refused client addresses.",
    )


_RULE = re.compile(r"^\s*(allow|deny)\s+(\S+)\s*$")


def _rules(lines: list[str], where: str) -> tuple[AccessRule, ...]:
    rules = []
    for line in lines:
        match = _RULE.match(line)
        if match is None:
            raise ConfigError(f"{where}: expected 'allow CIDR' or 'deny CIDR|all', got {line!r}")
        verb, target = match.groups()
        network = None
        if target != "all":
            try:
                network = ipaddress.ip_network(target, strict=False)
            except ValueError:
                raise ConfigError(f"{where}: {target!r} is not an IP network") from None
        rules.append(AccessRule(verb == "allow", network))
    return tuple(rules)


def _split_path_info(pattern: str | None, where: str) -> re.Pattern[str] | None:
    """fastcgi_split_path_info compiled: a regex with exactly two groups."""
    if pattern is None:
        return None
    key = f"{where}.fastcgi_split_path_info"
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}: not a regular expression ({exc}): {pattern!r}") from None
    if compiled.groups != 2:
        raise ConfigError(
            f"{key}: expected a regular expression with two groups (the script, then the "
            f"path info), e.g. '^(.+?\\.php)(/.*)$'; {pattern!r} has {compiled.groups}"
        )
    return compiled


def front_config_from_dict(data: dict[str, Any], source: str = "<config>") -> FrontConfig:
    """Validate a [front] table (as a dict) and build the FrontConfig."""
    try:
        settings = FrontSettings.model_validate(data)
    except ValidationError as exc:
        at = lambda loc, path: f"{source}: {path}"  # noqa: E731
        raise ConfigError(error_lines(exc, at, "front", FrontSettings)) from None
    servers = []
    for i, server in enumerate(settings.server):
        locations = []
        for j, loc in enumerate(server.location):
            where = f"{source}: front.server[{i}].location[{j}]"
            if loc.proxy and loc.proxy not in settings.upstream:
                known = ", ".join(settings.upstream) or "none"
                raise ConfigError(
                    f"{where}.proxy: no upstream named {loc.proxy!r} (known: {known})"
                )
            if loc.root and loc.alias:
                raise ConfigError(f"{where}: give root or alias, not both")
            if loc.proxy and settings.upstream[loc.proxy].protocol == "fastcgi" and not loc.root:
                raise ConfigError(
                    f"{where}.root: a location proxied to the FastCGI upstream {loc.proxy!r} "
                    "needs root (SCRIPT_FILENAME is root + the path)"
                )
            if loc.fastcgi_param and not (
                loc.proxy and settings.upstream[loc.proxy].protocol == "fastcgi"
            ):
                raise ConfigError(
                    f"{where}.fastcgi_param: only for a location whose proxy is a "
                    "protocol = 'fastcgi' upstream"
                )
            split = _split_path_info(loc.fastcgi_split_path_info, where)
            if split is not None and not (
                loc.proxy and settings.upstream[loc.proxy].protocol == "fastcgi"
            ):
                raise ConfigError(
                    f"{where}.fastcgi_split_path_info: only for a location whose proxy is a "
                    "protocol = 'fastcgi' upstream"
                )
            if loc.cache is not None:
                if loc.cache not in settings.cache:
                    known = ", ".join(settings.cache) or "none"
                    raise ConfigError(
                        f"{where}.cache: no cache zone named {loc.cache!r} (known: {known})"
                    )
                if not loc.proxy:
                    raise ConfigError(f"{where}.cache: a cached location needs proxy")
            locations.append(
                Location(
                    path=loc.path,
                    modifier=loc.modifier,
                    root=loc.root,
                    alias=loc.alias,
                    index=tuple(loc.index),
                    try_files=tuple(loc.try_files),
                    autoindex=loc.autoindex,
                    expires=loc.expires,
                    proxy=loc.proxy,
                    access=_rules(loc.access, f"{where}.access"),
                    hidden_files=loc.hidden_files,
                    follow_symlinks_outside_root=loc.follow_symlinks_outside_root,
                    gzip_static=loc.gzip_static,
                    script_name=loc.script_name,
                    fastcgi_param=tuple(
                        (name.encode("latin-1"), value.encode("utf-8"))
                        for name, value in loc.fastcgi_param.items()
                    ),
                    fastcgi_split_path_info=split,
                    request_buffering=loc.request_buffering,
                    websocket=loc.websocket,
                    cache=loc.cache,
                    limit_req=_limit_req(settings, loc.limit_req, f"{where}.limit_req"),
                    limit_conn=_limit_conn(settings, loc.limit_conn, f"{where}.limit_conn"),
                    rewrite=compile_rewrites(loc.rewrite, loc.return_),
                    add_header=header_rules(merge_headers(server.add_header, loc.add_header)),
                    proxy_set_header=set_header_rules(
                        merge_headers(server.proxy_set_header, loc.proxy_set_header)
                    ),
                    proxy_hide_header=frozenset(
                        name.lower().encode()
                        for name in (*server.proxy_hide_header, *loc.proxy_hide_header)
                    ),
                    compression=_compression(server, loc, where),
                )  # fmt: skip
            )
        servers.append(
            VirtualServer(
                server_names=tuple(server.server_name),
                default=server.default,
                locations=tuple(locations),
                access=_rules(server.access, f"{source}: front.server[{i}].access"),
                limit_req=_limit_req(
                    settings, server.limit_req, f"{source}: front.server[{i}].limit_req"
                ),
                limit_conn=_limit_conn(
                    settings, server.limit_conn, f"{source}: front.server[{i}].limit_conn"
                ),
                rewrite=compile_rewrites(server.rewrite, server.return_),
                add_header=header_rules(server.add_header),
                compression=_compression(server, None, f"{source}: front.server[{i}]"),
                listen=_server_listen(server, settings.listen, f"{source}: front.server[{i}]"),
                ssl_certificate=server.ssl_certificate,
                ssl_certificate_key=server.ssl_certificate_key,
                ssl_protocols=tuple(server.ssl_protocols),
                hsts=server.hsts,
            )
        )
    listeners = tuple(parse_listener(spec) for spec in settings.listen)
    _check_tls(servers, listeners, source)
    upstreams = {
        name: Upstream(
            name=name,
            protocol=up.protocol,
            balance=up.balance,
            hash_key=up.key,
            max_tries=up.max_tries,
            connect_timeout=up.connect_timeout,
            read_timeout=up.read_timeout,
            send_timeout=up.send_timeout,
            keepalive=up.keepalive,
            keepalive_timeout=up.keepalive_timeout,
            gantry_keepalive=up.gantry_keepalive,
            next_upstream=tuple(up.next_upstream),
            health_check=HealthCheck(**up.health_check.model_dump()) if up.health_check else None,
            ssl_verify=up.ssl_verify,
            ssl_trusted_certificate=up.ssl_trusted_certificate,
            ssl_name=up.ssl_name,
            servers=tuple(UpstreamServer(**s.model_dump()) for s in up.servers),
        )  # fmt: skip
        for name, up in settings.upstream.items()
    }
    for name, up in settings.upstream.items():
        if up.protocol == "https" and up.ssl_trusted_certificate is not None:
            try:
                ssl.create_default_context(cafile=up.ssl_trusted_certificate)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ConfigError(
                    f"{source}: front.upstream.{name}.ssl_trusted_certificate: cannot load "
                    f"{up.ssl_trusted_certificate!r}: {reason}"
                ) from None
    pages = {int(code): path for code, path in settings.error_pages.items()}
    real_ip = settings.real_ip
    if any(listener.proxy_protocol for listener in listeners) and not real_ip.from_:
        raise ConfigError(
            f"{source}: front.real_ip.from: a proxy_protocol listener needs the proxies "
            "it takes the header from (networks or 'unix:'), got none"
        )
    if real_ip.header == "proxy_protocol" and not any(
        listener.proxy_protocol for listener in listeners
    ):
        raise ConfigError(
            f"{source}: front.real_ip.header: 'proxy_protocol' needs a listener with the "
            'proxy_protocol flag (listen = ["0.0.0.0:8080 proxy_protocol"]), got none'
        )
    caches = {name: _zone(name, zone) for name, zone in settings.cache.items()}
    bans_file = _bans_file(settings, source)
    return FrontConfig(
        listen=tuple(listener.address for listener in listeners), listeners=listeners,
        workers=settings.workers, servers=tuple(servers),
        upstreams=upstreams, error_pages=pages,
        access_log=None if settings.access_log == "off" else settings.access_log,
        access_log_format=settings.access_log_format,
        client_max_body_size=settings.client_max_body_size, user=settings.user,
        group=settings.group,
        client_header_timeout=settings.client_header_timeout,
        client_body_timeout=settings.client_body_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        send_timeout=settings.send_timeout,
        graceful_timeout=settings.graceful_timeout,
        websocket_idle_timeout=settings.websocket_idle_timeout,
        http2_max_concurrent_streams=settings.http2_max_concurrent_streams,
        http2_max_header_size=settings.http2_max_header_size,
        http2_idle_timeout=settings.http2_idle_timeout,
        caches=caches, control=settings.control,
        limit_req_zones={
            name: LimitReqZone(name=name, key=zone.key, rate=_rate_per_second(zone.rate),
                               size=zone.size)
            for name, zone in settings.limit_req_zone.items()
        },
        limit_conn_zones={
            name: LimitConnZone(name=name, key=zone.key, size=zone.size)
            for name, zone in settings.limit_conn_zone.items()
        },
        autoban=tuple(AutobanRule(**rule.model_dump()) for rule in settings.autoban),
        ban_file=bans_file,
        shared=SharedStore(**settings.shared.model_dump()) if settings.shared else None,
        real_ip=RealIp(
            trusted=tuple(
                ipaddress.ip_network(n, strict=False) for n in real_ip.from_ if n != "unix:"
            ),
            trust_unix="unix:" in real_ip.from_,
            header=real_ip.header if real_ip.from_ else "",
            recursive=real_ip.recursive,
        ),
        blocklist=Blocklist(
            files=tuple(settings.blocklist.files), status=settings.blocklist.status,
            state=bans_file or "",
        ),
        client_header_min_rate=settings.client_header_min_rate,
        client_body_min_rate=settings.client_body_min_rate,
        client_min_rate_grace=settings.client_min_rate_grace,
        keepalive_requests=settings.keepalive_requests,
        worker_connections=settings.worker_connections,
        worker_rlimit_nofile=settings.worker_rlimit_nofile,
        max_connections_per_address=settings.max_connections_per_address,
        stats=settings.stats, metrics=settings.metrics,
    )  # fmt: skip


def _bans_file(settings: FrontSettings, source: str) -> str | None:
    """The one runtime bans file: ``[front] ban_file`` and ``[front.blocklist] state`` are
    two names of it (autoban and ``gantry ctl block`` write it, every worker reads it);
    unset, it sits beside the control socket so that ``gantry ctl block`` works with
    only ``control`` set."""
    ban_file, state = settings.ban_file, settings.blocklist.state
    if ban_file and state and os.path.abspath(ban_file) != os.path.abspath(state):
        raise ConfigError(
            f"{source}: front.blocklist.state: {state!r} and front.ban_file {ban_file!r} "
            "name two files, but they are one (the runtime bans file): set one of them, or "
            "both to the same path"
        )
    if ban_file or state:
        return ban_file or state
    if settings.control is not None:
        return settings.control + ".bans"
    return None


def _rate_per_second(text: str) -> float:
    match = _RATE.match(text.strip())
    assert match is not None  # validated
    return int(match[1]) / (60.0 if match[2] == "m" else 1.0)


def _limit_req(
    settings: FrontSettings, limits: list[LimitReqSettings], where: str
) -> tuple[LimitReq, ...]:
    for n, limit in enumerate(limits):
        if limit.zone not in settings.limit_req_zone:
            known = ", ".join(settings.limit_req_zone) or "none"
            raise ConfigError(
                f"{where}[{n}].zone: no limit_req_zone named {limit.zone!r} (known: {known})"
            )
        if limit.delay and limit.nodelay:
            raise ConfigError(f"{where}[{n}]: give delay or nodelay, not both")
    return tuple(LimitReq(**limit.model_dump()) for limit in limits)


def _limit_conn(
    settings: FrontSettings, limits: list[LimitConnSettings], where: str
) -> tuple[LimitConn, ...]:
    for n, limit in enumerate(limits):
        if limit.zone not in settings.limit_conn_zone:
            known = ", ".join(settings.limit_conn_zone) or "none"
            raise ConfigError(
                f"{where}[{n}].zone: no limit_conn_zone named {limit.zone!r} (known: {known})"
            )
    return tuple(LimitConn(**limit.model_dump()) for limit in limits)


def _server_listen(server: ServerSettings, listen: list[str], where: str) -> tuple[int, ...]:
    """The indexes of the front's listeners a server names (): all of them)."""
    if server.listen is None:
        return ()
    indexes = []
    for k, spec in enumerate(server.listen):
        if spec not in listen:
            known = ", ".join(repr(s) for s in listen)
            raise ConfigError(
                f"{where}.listen[{k}]: {spec!r} is not one of [front] listen ({known})"
            )
        indexes.append(listen.index(spec))
    return tuple(indexes)


def answering(servers: list[VirtualServer], index: int) -> list[VirtualServer]:
    """The servers that answer on listener ``index``, in file order."""
    return [s for s in servers if not s.listen or index in s.listen]


def _check_tls(servers: list[VirtualServer], listeners: tuple[Listener, ...], source: str) -> None:
    """Every certificate pair loads; each ssl listener's default server has one."""
    for i, server in enumerate(servers):
        where = f"{source}: front.server[{i}]"
        cert, key = server.ssl_certificate, server.ssl_certificate_key
        if (cert is None) != (key is None):
            missing = "ssl_certificate_key" if key is None else "ssl_certificate"
            raise ConfigError(f"{where}.{missing}: expected it with the other of the pair")
        if cert is not None and key is not None:
            try:
                load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
            except CertificateError as exc:
                raise ConfigError(f"{where}.{exc.key}: {exc}") from None
    for index, listener in enumerate(listeners):
        if not listener.ssl:
            continue
        on = answering(servers, index)
        default = next((s for s in on if s.default), on[0] if on else None)
        if default is None or default.ssl_certificate is None:
            at = servers.index(default) if default is not None else None
            where = f"front.server[{at}]" if at is not None else "front.server"
            raise ConfigError(
                f"{source}: {where}.ssl_certificate: expected a certificate for the default "
                f"server of the listener '{listener.address} ssl'"
            )


def _zone(name: str, zone: CacheSettings) -> CacheZone:
    valid = {0 if code == "any" else int(code): time for code, time in zone.valid.items()}
    return CacheZone(
        name=name, path=zone.path, max_size=zone.max_size, memory=zone.memory,
        inactive=zone.inactive, max_object_size=zone.max_object_size, key=zone.key,
        valid=valid, use_stale=tuple(s for s in zone.use_stale if s != "off"),
        background_update=zone.background_update, lock=zone.lock,
        lock_timeout=zone.lock_timeout, min_uses=zone.min_uses, bypass=tuple(zone.bypass),
        purge_allow=tuple(ipaddress.ip_network(n, strict=False) for n in zone.purge_allow),
    )  # fmt: skip


def load_front_config(path: str) -> FrontConfig:
    """Read the [front] table of a gantry.toml."""
    data = read_document(path)
    if "front" not in data:
        raise ConfigError(f"{path}: front: expected a [front] table, found none")
    if not isinstance(data["front"], dict):
        raise ConfigError(f"{path}: front: expected a table, got {data['front']!r}")
    return front_config_from_dict(data["front"], path)
