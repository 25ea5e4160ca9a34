"""What the front sends upstream for one request: a uwsgi packet, an HTTP/1.1 head, or
FastCGI records.

The uwsgi packet carries the vars nginx's ``uwsgi_params`` send plus the request's
headers as HTTP_*. It is built straight into bytes: the keys are encoded once (a
header name once per worker), the connection's own vars once per connection, so a
request costs one join over its values.
"""

from __future__ import annotations

import struct
from typing import Final

from gantry.protocol.fastcgi import PARAMS, STDIN, begin_request, encode_pairs, stream_records
from gantry.protocol.http1 import RequestHead
from gantry.protocol.uwsgi import GANTRY_MODIFIER2, pack_header, packet_header

__all__ = [
    "FASTCGI_REQUEST_ID",
    "connection_named_fields",
    "connection_vars",
    "fastcgi_request",
    "gantry_connection_vars",
    "gantry_packet",
    "http_request_head",
    "uwsgi_packet",
    "with_fields",
    "without_connection_fields",
]

_pack_u16: Final = struct.Struct("<H").pack
_MAX_U16: Final = 0xFFFF
#: the encoded lengths of most vars, made once: a packet has two dozen of them, and a
#: list index is cheaper than a call into struct
_SMALL_U16: Final = [_pack_u16(n) for n in range(2048)]


def _u16(n: int) -> bytes:
    """``n`` as a little-endian 16-bit length; struct.error past 65535."""
    if 0 <= n < 2048:
        return _SMALL_U16[n]
    return _pack_u16(n)


def _key(name: bytes) -> bytes:
    return _u16(len(name)) + name


def _var(name: bytes, value: bytes) -> bytes:
    return _key(name) + _u16(len(value)) + value


_QUERY_STRING: Final = _key(b"QUERY_STRING")
_REQUEST_URI: Final = _key(b"REQUEST_URI")
_PATH_INFO: Final = _key(b"PATH_INFO")
# nginx's uwsgi_params omit SCRIPT_NAME; PEP 3333 wants it, and uWSGI passes it through
_SCRIPT_NAME: Final = _key(b"SCRIPT_NAME")
_SERVER_NAME: Final = _key(b"SERVER_NAME")
_CONTENT_TYPE: Final = _key(b"CONTENT_TYPE")
_CONTENT_LENGTH: Final = _key(b"CONTENT_LENGTH")
_REQUEST_METHOD: Final = _key(b"REQUEST_METHOD")
_NO_CONTENT_TYPE: Final = _var(b"CONTENT_TYPE", b"")
_NO_CONTENT_LENGTH: Final = _var(b"CONTENT_LENGTH", b"")
_NO_QUERY_STRING: Final = _var(b"QUERY_STRING", b"")
_NO_SCRIPT_NAME: Final = _var(b"SCRIPT_NAME", b"")
_METHODS: Final = {
    method: _var(b"REQUEST_METHOD", method.encode())
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}
_PROTOCOLS: Final = {
    version: _var(b"SERVER_PROTOCOL", b"HTTP/" + version.encode()) for version in ("1.1", "1.0")
}
#: asks a gantry serve uwsgi socket to keep the connection for the next packet
KEEPALIVE: Final = _var(b"GANTRY_KEEPALIVE", b"1")

# What a header name becomes: its encoded HTTP_* key, or one of these markers (told
# apart by identity: the cache holds these very objects).
_SKIP: Final = b""
_HOST: Final = b"\x00host"
_TYPE: Final = b"\x00type"
_CONNECTION: Final = b"\x00connection"
_HTTP_HOST: Final = _key(b"HTTP_HOST")
_HTTP_CONNECTION: Final = _key(b"HTTP_CONNECTION")
#: header name as the client spelled it -> encoded key (bounded: names are the client's)
_header_keys: Final[dict[bytes, bytes]] = {}
_HEADER_KEYS_MAX: Final = 1024


def _environ_key(name: bytes) -> bytes:
    """The environ key a request field goes to; b"" for none (Content-Length is the
    front's own, and a name with "_" would pass for one with "-")."""
    lname = name.lower()
    if lname == b"content-length" or lname == b"x-script-name" or b"_" in name:
        # X-Script-Name is the front's to set: a client's own would pass for a mount point
        return b""
    if lname == b"content-type":
        return b"CONTENT_TYPE"
    return b"HTTP_" + name.upper().replace(b"-", b"_")


def _remember(cache: dict[bytes, bytes], name: bytes, key: bytes) -> bytes:
    if len(cache) >= _HEADER_KEYS_MAX:
        cache.clear()
    cache[name] = key
    return key


_MARKERS: Final = {
    b"": _SKIP, b"CONTENT_TYPE": _TYPE, b"HTTP_HOST": _HOST, b"HTTP_CONNECTION": _CONNECTION
}  # fmt: skip
#: Connection options that name no field
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b""})


def connection_named_fields(connection: bytes) -> frozenset[bytes]:
    """The fields a Connection value names (RFC 9110 7.6.1: hop-by-hop, like Connection
    itself), in lower case; never Host."""
    named = {token.strip().lower() for token in connection.split(b",")}
    return frozenset(named - _CONNECTION_OPTIONS - {b"host"})


def without_connection_fields(head: RequestHead) -> RequestHead:
    """``head`` without the fields its Connection fields name, nor Connection itself (a
    copy), or ``head`` itself when they name none."""
    named: frozenset[bytes] = frozenset()
    for name, value in head.headers:
        if len(name) == 10 and name.lower() == b"connection":
            named |= connection_named_fields(value)
    if not named:
        return head
    copy = RequestHead()  # field by field: a compiled RequestHead has no __dict__
    copy.method, copy.target = head.method, head.target
    copy.path, copy.query = head.path, head.query
    copy.version, copy.keep_alive, copy.upgrade = head.version, head.keep_alive, head.upgrade
    copy.expect_continue, copy.chunked = head.expect_continue, head.chunked
    copy.content_length = head.content_length
    named |= {b"connection"}
    copy.headers = [(n, v) for n, v in head.headers if n.lower() not in named]
    return copy


def with_fields(head: RequestHead, fields: list[tuple[bytes, bytes]]) -> RequestHead:
    """A copy of ``head`` whose fields named in ``fields`` (proxy_set_header) are theirs
    instead: replaced, or removed where the value is empty."""
    named = {name.lower() for name, _ in fields}
    copy = RequestHead()  # field by field: a compiled RequestHead has no __dict__
    copy.method, copy.target = head.method, head.target
    copy.path, copy.query = head.path, head.query
    copy.version, copy.keep_alive, copy.upgrade = head.version, head.keep_alive, head.upgrade
    copy.expect_continue, copy.chunked = head.expect_continue, head.chunked
    copy.content_length = head.content_length
    copy.headers = [(n, v) for n, v in head.headers if n.lower() not in named]
    copy.headers += [(n, v) for n, v in fields if v]
    return copy


def _header_key(name: bytes) -> bytes:
    key = _environ_key(name)
    marker = _MARKERS.get(key)
    return _remember(_header_keys, name, marker if marker is not None else _key(key))


def _connection_pairs(
    remote_addr: str, remote_port: str, server_port: str, https: bool
) -> list[bytes]:
    """key, value, key, value ... of the vars alike for every request of a connection;
    HTTPS=on as nginx's uwsgi_params send it (uWSGI and gantry serve then give the app
    wsgi.url_scheme https)."""
    pairs = [b"DOCUMENT_ROOT", b"/", b"REQUEST_SCHEME", b"https" if https else b"http",
             b"REMOTE_ADDR", remote_addr.encode(), b"REMOTE_PORT", remote_port.encode(),
             b"SERVER_PORT", server_port.encode()]  # fmt: skip
    if https:
        pairs += (b"HTTPS", b"on")
    return pairs


def connection_vars(
    remote_addr: str, remote_port: str, server_port: str, https: bool = False
) -> bytes:
    """The vars that are the same for every request of one client connection."""
    pairs = _connection_pairs(remote_addr, remote_port, server_port, https)
    return b"".join([_var(key, value) for key, value in zip(pairs[::2], pairs[1::2], strict=True)])


#: Host value -> encoded SERVER_NAME var (bounded: the values are the client's)
_server_vars: Final[dict[bytes, bytes]] = {}


def _server_var(host: bytes) -> bytes:
    """SERVER_NAME: the Host without its port ("localhost" without a Host)."""
    name = host if host.endswith(b"]") or b":" not in host else host.rpartition(b":")[0]
    var = _SERVER_NAME + _u16(len(name or b"localhost")) + (name or b"localhost")
    if len(_server_vars) >= _HEADER_KEYS_MAX:
        _server_vars.clear()
    _server_vars[host] = var
    return var


class _FieldsMemo:
    """The last request's header fields and what they encoded to (see _encoded_fields):
    a keep-alive client, or many clients of one browser, send the same fields again."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        #: the encoded HTTP_* vars, the Host value, the CONTENT_TYPE var
        self.encoded = (b"", b"", _NO_CONTENT_TYPE)


_FIELDS_MEMO: Final = _FieldsMemo()


def _encoded_fields(fields: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes, bytes] | None:
    """``fields`` as uwsgi vars: (the HTTP_* vars, the first Host value, the CONTENT_TYPE
    var); None when a Connection field names fields to leave out (the caller drops them
    first). struct.error for a value past the protocol's 16-bit lengths."""
    memo = _FIELDS_MEMO
    if fields == memo.fields:
        return memo.encoded
    parts: list[bytes] = []
    host = b""
    content_type = _NO_CONTENT_TYPE
    append = parts.append
    keys = _header_keys
    for name, value in fields:
        key = keys.get(name)
        if key is None:
            key = _header_key(name)
        if not key:
            continue
        if key is _TYPE:
            if content_type is _NO_CONTENT_TYPE:
                content_type = _CONTENT_TYPE + _u16(len(value)) + value
            continue
        if key is _HOST:
            key = _HTTP_HOST
            if not host:
                host = value
        elif key is _CONNECTION:
            key = _HTTP_CONNECTION
            if connection_named_fields(value):  # rare: fields to leave out, on the long way
                return None
        append(key)
        append(_u16(len(value)))
        append(value)
    encoded = (b"".join(parts), host, content_type)
    memo.fields = list(fields)  # a copy: the caller's list may change after
    memo.encoded = encoded
    return encoded


def uwsgi_packet(
    fixed: bytes,
    head: RequestHead,
    path: str,
    script_name: str,
    body_length: int,
    keepalive: bool,
) -> bytes:
    """A whole uwsgi packet (modifier1 0): header and vars; the body follows it.

    ``fixed`` is :func:`connection_vars`; ``path`` the normalized path, from which
    the location's ``script_name`` is taken off as nginx's ``uwsgi_modifier1 30`` does.
    ValueError if a var or the block does not fit the protocol's 16-bit lengths.
    """
    try:
        encoded = _encoded_fields(head.headers)
        if encoded is None:
            lean = without_connection_fields(head)
            encoded = _encoded_fields(lean.headers) if lean is not head else None
            if encoded is None:
                raise ValueError("Connection field names fields that cannot be left out")
        memo = _PACKET_MEMO
        query, target, method, version = head.query, head.target, head.method, head.version
        fields, host, content_type = encoded
        if (
            memo.fields == fields
            and memo.host == host
            and memo.content_type == content_type
            and memo.target == target
            and memo.query == query
            and memo.path == path
            and memo.method == method
            and memo.version == version
            and memo.script_name == script_name
            and memo.body_length == body_length
            and memo.keepalive == keepalive
        ):
            before, after = memo.before, memo.after
        else:
            before, after = _packet_parts(encoded, head, path, script_name, body_length, keepalive)
            memo.fields, memo.host, memo.content_type = fields, host, content_type
            memo.target, memo.query, memo.path = target, query, path
            memo.method, memo.version, memo.script_name = method, version, script_name
            memo.body_length, memo.keepalive = body_length, keepalive
            memo.before, memo.after = before, after
        size = len(before) + len(fixed) + len(after)
        if size == memo.size:  # the usual: the connection's vars differ, not their length
            header = memo.header
        else:
            header = pack_header(0, size, 0)  # struct.error past 65535
            memo.size, memo.header = size, header
        return b"".join([header, before, fixed, after])
    except struct.error:
        raise ValueError("uwsgi var longer than 65535 bytes") from None


class _PacketMemo:
    """The last uwsgi packet's vars but the connection's own, and what they were made
    from (see uwsgi_packet): a keep-alive client, or many clients of one page, ask the
    same again, whatever connection they come on."""

    __slots__ = ("fields", "host", "content_type", "target", "query", "path", "method",
                 "version", "script_name", "body_length", "keepalive", "before",
                 "after", "size", "header")  # fmt: skip

    def __init__(self) -> None:
        #: _encoded_fields' answer (compared by value: compiled code keeps a tuple unboxed,
        #: so the same answer is not the same tuple object twice)
        self.fields = b""
        self.host = b""
        self.content_type = b""
        self.target = b""
        self.query = b""
        self.path = ""
        self.method = ""
        self.version = ""
        self.script_name = ""
        self.body_length = -1
        self.keepalive = False
        #: the vars before the connection's own, and after them
        self.before = b""
        self.after = b""
        #: the last packet's vars size (-1: none yet) and its 4-byte header
        self.size = -1
        self.header = b""


_PACKET_MEMO: Final = _PacketMemo()


def _packet_parts(
    encoded: tuple[bytes, bytes, bytes],
    head: RequestHead,
    path: str,
    script_name: str,
    body_length: int,
    keepalive: bool,
) -> tuple[bytes, bytes]:
    """The vars of uwsgi_packet before the connection's own (connection_vars), and after
    them. struct.error for a var past 65535 bytes."""
    fields, host, content_type = encoded
    if script_name:
        if path == script_name or path.startswith(script_name + "/"):
            path = path[len(script_name) :]
        script = script_name.encode("utf-8", "surrogateescape")
        script = _SCRIPT_NAME + _u16(len(script)) + script
    else:
        script = _NO_SCRIPT_NAME
    path_info = path.encode("utf-8", "surrogateescape")
    query, target = head.query, head.target
    length = _var(b"CONTENT_LENGTH", str(body_length).encode()) if body_length else b""
    protocol = _PROTOCOLS.get(head.version) or _var(
        b"SERVER_PROTOCOL", b"HTTP/" + head.version.encode()
    )
    before = b"".join([
        _QUERY_STRING + _u16(len(query)) + query if query else _NO_QUERY_STRING,
        _METHODS.get(head.method) or _var(b"REQUEST_METHOD", head.method.encode()),
        content_type,
        length or _NO_CONTENT_LENGTH,
        _REQUEST_URI, _u16(len(target)), target,
        _PATH_INFO, _u16(len(path_info)), path_info,
        script,
        protocol,
    ])  # fmt: skip
    after = b"".join([
        _server_vars.get(host) or _server_var(host),
        fields,
        KEEPALIVE if keepalive else b"",
    ])  # fmt: skip
    return before, after


# Gantry's own packet (modifier2 GANTRY_MODIFIER2, to gantry serve only): the vars as
# NUL-separated environ keys and values, which the pool reads with one split.
_G_METHODS: Final = {method: b"REQUEST_METHOD\0" + method.encode() for method in _METHODS}
_G_PROTOCOLS: Final = {
    version: b"SERVER_PROTOCOL\0HTTP/" + version.encode() for version in _PROTOCOLS
}
_G_HOST: Final = b"HTTP_HOST"
_G_TYPE: Final = b"CONTENT_TYPE"
_G_CONNECTION: Final = b"HTTP_CONNECTION"
_G_MARKERS: Final = {_G_HOST: _G_HOST, _G_TYPE: _G_TYPE, _G_CONNECTION: _G_CONNECTION}
#: header name as the client spelled it -> environ key
_g_header_keys: Final[dict[bytes, bytes]] = {}


def _g_header_key(name: bytes) -> bytes:
    key = _environ_key(name)
    return _remember(_g_header_keys, name, _G_MARKERS.get(key, key))


#: NULs inside gantry_connection_vars (10 fields, 12 with HTTPS)
_FIXED_NULS: Final = 9
_FIXED_NULS_HTTPS: Final = 11
#: where the value starts in an encoded SERVER_NAME var
_SERVER_NAME_AT: Final = len(_SERVER_NAME) + 2


def gantry_connection_vars(
    remote_addr: str, remote_port: str, server_port: str, https: bool = False
) -> bytes:
    """:func:`connection_vars` in gantry's own packet."""
    return b"\0".join(_connection_pairs(remote_addr, remote_port, server_port, https))


def gantry_packet(
    fixed: bytes, head: RequestHead, path: str, script_name: str, body_length: int
) -> bytes | None:
    """The request as gantry's own packet (see :func:`uwsgi_packet` for the arguments;
    ``fixed`` is :func:`gantry_connection_vars`). Fields repeated in the request are
    sent repeated (the pool joins them). None if the vars cannot be sent this way
    (a NUL in a value, or too long): the caller sends :func:`uwsgi_packet` instead."""
    if script_name and (path == script_name or path.startswith(script_name + "/")):
        path = path[len(script_name) :]
    parts = [
        b"QUERY_STRING", head.query,
        _G_METHODS.get(head.method) or b"REQUEST_METHOD\0" + head.method.encode(),
        b"REQUEST_URI", head.target,
        b"PATH_INFO", path.encode("utf-8", "surrogateescape"),
        b"SCRIPT_NAME", script_name.encode("utf-8", "surrogateescape"),
        _G_PROTOCOLS.get(head.version) or b"SERVER_PROTOCOL\0HTTP/" + head.version.encode(),
        fixed,
    ]  # fmt: skip
    if body_length:
        parts += (b"CONTENT_LENGTH", str(body_length).encode())
    host = b""
    typed = False
    keys = _g_header_keys
    append = parts.append
    for name, value in head.headers:
        key = keys.get(name)
        if key is None:
            key = _g_header_key(name)
        if not key:
            continue
        if key is _G_HOST:
            if host:
                continue  # the first Host counts (the parser refuses a second one anyway)
            host = value
        elif key is _G_CONNECTION:
            if connection_named_fields(value):  # rare: fields to leave out, on the long way
                lean = without_connection_fields(head)
                if lean is not head:
                    return gantry_packet(fixed, lean, path, script_name, body_length)
        elif key is _G_TYPE:
            if typed:
                continue  # the first Content-Type counts, as in the standard packet
            typed = True
        append(key)
        append(value)
    server_var = _server_vars.get(host) or _server_var(host)
    append(b"SERVER_NAME")
    append(server_var[_SERVER_NAME_AT:])
    block = b"\0".join(parts)
    # NULs: one between each two parts, and the method's, the protocol's and fixed's own
    fixed_nuls = _FIXED_NULS_HTTPS if fixed.endswith(b"HTTPS\0on") else _FIXED_NULS
    if len(block) > _MAX_U16 or block.count(b"\0") != len(parts) - 1 + 2 + fixed_nuls:
        return None
    return packet_header(len(block), 0, GANTRY_MODIFIER2) + block


# Fields the front does not pass on: hop-by-hop (RFC 9110 7.6.1), its own framing,
# and the X-Forwarded-*, X-Real-IP and X-Script-Name it sets itself.
REQUEST_DROP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authorization", b"proxy-connection", b"expect", b"content-length",
     b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
     b"x-script-name"}
)  # fmt: skip


def http_request_head(
    head: RequestHead,
    remote_addr: str,
    body_length: int,
    script_name: str = "",
    fields: list[tuple[bytes, bytes]] | None = None,
    https: bool = False,
) -> bytes:
    """The request head for an HTTP upstream: X-Forwarded-*, X-Real-IP, the location's
    X-Script-Name, and no hop-by-hop fields; the body follows it. ``fields``
    (proxy_set_header) replace the client's and the front's own of the same names, or
    remove them (an empty value)."""
    if fields is not None:
        return _with_set_fields(head, remote_addr, body_length, script_name, fields, https)
    head = without_connection_fields(head)
    lines = [head.method.encode() + b" " + head.target + b" HTTP/1.1"]
    forwarded_for = remote_addr.encode()
    host = b""
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"x-forwarded-for":
            forwarded_for = value + b", " + forwarded_for
        if lname == b"host":
            host = value
        if lname in REQUEST_DROP:
            continue
        lines.append(name + b": " + value)
    lines.append(b"X-Forwarded-For: " + forwarded_for)
    lines.append(b"X-Real-IP: " + remote_addr.encode())
    lines.append(b"X-Forwarded-Proto: https" if https else b"X-Forwarded-Proto: http")
    if host:
        lines.append(b"X-Forwarded-Host: " + host)
    else:
        # an HTTP/1.0 client may send no Host; an HTTP/1.1 upstream must get one (the
        # uwsgi packet's SERVER_NAME says "localhost" then too)
        lines.append(b"Host: localhost")
    if script_name:
        lines.append(b"X-Script-Name: " + script_name.encode("utf-8"))
    if body_length or head.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: " + str(body_length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


#: what proxy_set_header may not change: the front frames the body itself
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def _with_set_fields(
    head: RequestHead,
    remote_addr: str,
    body_length: int,
    script_name: str,
    fields: list[tuple[bytes, bytes]],
    https: bool = False,
) -> bytes:
    """http_request_head with proxy_set_header's fields in place of the same names (the
    client's and the front's own X-Forwarded-*, X-Real-IP, Host)."""
    named = {name.lower() for name, _ in fields} - _FRAMING
    lines = http_request_head(head, remote_addr, body_length, script_name, None, https).split(
        b"\r\n"
    )
    kept = [lines[0]] + [
        line for line in lines[1:-2] if line.partition(b":")[0].lower() not in named
    ]
    kept += [name + b": " + value for name, value in fields if value and name.lower() in named]
    return b"\r\n".join(kept) + b"\r\n\r\n"


#: the FastCGI request id of every request the front sends (one request per connection
#: at a time: php-fpm does not multiplex)
FASTCGI_REQUEST_ID: Final = 1
# without FCGI_KEEP_CONN: php-fpm closes after the response (see ProxyRequest.reusable)
_FCGI_BEGIN: Final = begin_request(FASTCGI_REQUEST_ID, False)
#: header name as the client spelled it -> its param name (b"": not passed)
_fcgi_header_keys: Final[dict[bytes, bytes]] = {}


def fastcgi_request(
    head: RequestHead,
    original: RequestHead,
    script_name: str,
    document_root: str,
    remote_addr: str,
    ports: tuple[str, str],
    https: bool,
    body_length: int,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    path_info: str = "",
) -> bytes:
    """FCGI_BEGIN_REQUEST (responder; the upstream closes after the response) and the
    whole PARAMS stream:
    nginx's fastcgi_params, SCRIPT_FILENAME = ``document_root`` + ``script_name``, the
    request's fields as HTTP_*, then ``extra`` (fastcgi_param), which replace a standard
    param of the same name. REQUEST_URI is ``original``'s target (as the client sent it);
    the rest is ``head``'s (the request as routed). When the body is empty, the empty
    STDIN record that ends it follows. ``path_info`` (split off by
    fastcgi_split_path_info) is PATH_INFO, and ``extra``'s values may name
    $fastcgi_script_name and $fastcgi_path_info."""
    head = without_connection_fields(head)
    root = document_root.rstrip("/") or "/"
    script = script_name.encode("utf-8", "surrogateescape")
    info = path_info.encode("utf-8", "surrogateescape")
    host = b""
    content_type = b""
    fields: dict[bytes, bytes] = {}
    keys = _fcgi_header_keys
    for name, value in head.headers:
        key = keys.get(name)
        if key is None:
            key = _remember(keys, name, _environ_key(name))
        if not key:
            continue
        if key == b"CONTENT_TYPE":
            content_type = content_type or value
            continue
        if key == b"HTTP_HOST":
            if host:
                continue
            host = value
        # repeated fields join as a CGI environment has them
        fields[key] = fields[key] + b", " + value if key in fields else value
    server_name = host if host.endswith(b"]") or b":" not in host else host.rpartition(b":")[0]
    params: dict[bytes, bytes] = {
        b"SCRIPT_FILENAME": root.encode("utf-8", "surrogateescape") + script,
        b"QUERY_STRING": head.query,
        b"REQUEST_METHOD": head.method.encode(),
        b"CONTENT_TYPE": content_type,
        b"CONTENT_LENGTH": str(body_length).encode() if body_length else b"",
        b"SCRIPT_NAME": script,
        b"REQUEST_URI": original.target,
        b"DOCUMENT_URI": script + info,
        b"DOCUMENT_ROOT": root.encode("utf-8", "surrogateescape"),
        b"SERVER_PROTOCOL": b"HTTP/" + head.version.encode(),
        b"REQUEST_SCHEME": b"https" if https else b"http",
        b"GATEWAY_INTERFACE": b"CGI/1.1",
        b"SERVER_SOFTWARE": b"gantry",
        b"REMOTE_ADDR": remote_addr.encode(),
        b"REMOTE_PORT": ports[0].encode(),
        b"SERVER_PORT": ports[1].encode(),
        b"SERVER_NAME": server_name or b"localhost",
        # PHP built with cgi.force_redirect wants it, as nginx's fastcgi.conf sends it
        b"REDIRECT_STATUS": b"200",
    }
    if https:
        params[b"HTTPS"] = b"on"
    if info:
        params[b"PATH_INFO"] = info
    params.update(fields)
    for name, value in extra:
        if b"$fastcgi_" in value:
            value = value.replace(b"$fastcgi_script_name", script)
            value = value.replace(b"$fastcgi_path_info", info)
        params[name] = value
    block = encode_pairs(params.items())
    parts = [_FCGI_BEGIN, stream_records(PARAMS, FASTCGI_REQUEST_ID, block)]
    parts.append(stream_records(PARAMS, FASTCGI_REQUEST_ID, b""))
    if not body_length:
        parts.append(stream_records(STDIN, FASTCGI_REQUEST_ID, b""))
    return b"".join(parts)
