"""Virtual hosts, locations and access rules, chosen as nginx chooses them (sans-I/O)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from gantry.config.front_model import AccessRule, Location, VirtualServer

__all__ = ["Router", "client_allowed", "normalize_path"]


class _CompiledServer:
    def __init__(self, server: VirtualServer) -> None:
        self.server = server
        self.exact: list[Location] = []
        self.prefixes: list[Location] = []  # longest first
        self.regexes: list[tuple[re.Pattern[str], Location]] = []
        for location in server.locations:
            if location.modifier == "=":
                self.exact.append(location)
            elif location.modifier in ("", "^~"):
                self.prefixes.append(location)
            elif location.modifier in ("~", "~*"):
                flags = re.IGNORECASE if location.modifier == "~*" else 0
                try:
                    pattern = re.compile(location.path, flags)
                except re.error as exc:
                    raise ValueError(f"location {location.path!r}: bad regex: {exc}") from None
                self.regexes.append((pattern, location))
            else:
                raise ValueError(
                    f"location {location.path!r}: unknown modifier {location.modifier!r}"
                )
        self.prefixes.sort(key=lambda loc: len(loc.path), reverse=True)


class Router:
    """Picks the server block for a Host and the location for a path."""

    def __init__(self, servers: Sequence[VirtualServer]) -> None:
        self._compiled = {id(s): _CompiledServer(s) for s in servers}
        self._exact: dict[str, VirtualServer] = {}
        self._leading: list[tuple[str, VirtualServer]] = []  # ".example.test", longest first
        self._trailing: list[tuple[str, VirtualServer]] = []  # "www.example.", longest first
        self._regex: list[tuple[re.Pattern[str], VirtualServer]] = []
        self._default = next((s for s in servers if s.default), servers[0] if servers else None)
        for server in servers:
            for name in server.server_names:
                name = name.lower().rstrip(".")
                if name.startswith("~"):
                    self._regex.append((re.compile(name[1:], re.IGNORECASE), server))
                elif name.startswith("*."):
                    self._leading.append((name[1:], server))
                elif name.startswith("."):  # ".example.test" = exact and wildcard
                    self._exact.setdefault(name[1:], server)
                    self._leading.append((name, server))
                elif name.endswith(".*"):
                    self._trailing.append((name[:-1], server))
                else:
                    self._exact.setdefault(name, server)
        self._leading.sort(key=lambda item: len(item[0]), reverse=True)
        self._trailing.sort(key=lambda item: len(item[0]), reverse=True)

    def server_for(self, host: str | None) -> VirtualServer:
        """The server block for a Host header value (port and trailing dot ignored)."""
        name = _host_name(host or "")
        if name:
            found = self._exact.get(name)
            if found is not None:
                return found
            for suffix, server in self._leading:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return server
            for prefix, server in self._trailing:
                if name.startswith(prefix) and len(name) > len(prefix):
                    return server
            for pattern, server in self._regex:
                if pattern.search(name):
                    return server
        if self._default is None:
            return VirtualServer()
        return self._default

    def location_for(self, server: VirtualServer, path: str) -> Location | None:
        """nginx's order: exact, then the longest prefix (final if ``^~``), then regexes in file
        order, then that longest prefix."""
        compiled = self._compiled.get(id(server))
        if compiled is None:
            return None
        for location in compiled.exact:
            if location.path == path:
                return location
        longest = next((loc for loc in compiled.prefixes if path.startswith(loc.path)), None)
        if longest is not None and longest.modifier == "^~":
            return longest
        for pattern, location in compiled.regexes:
            if pattern.search(path):
                return location
        return longest


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def client_allowed(rules: Sequence[AccessRule], address: str) -> bool:
    """The first rule matching the client decides; no rule at all allows."""
    if not rules:
        return True
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        client = None
    for rule in rules:
        if rule.network is None or (client is not None and client in rule.network):
            return rule.allow
    return True


def normalize_path(raw_path: bytes) -> str | None:
    """Percent-decode and resolve "."/".." and "//" as nginx does; None to refuse the path.

    Refused: NUL, bytes that are not UTF-8, and any path climbing above "/".
    Decoding happens once, so "%252e" stays the literal "%2e".
    """
    if not raw_path.startswith(b"/"):
        return None
    if b"%" not in raw_path and b"/." not in raw_path and b"//" not in raw_path:
        # nothing to decode or resolve (the common case)
        if b"\0" in raw_path:
            return None
        try:
            return raw_path.decode("utf-8")
        except UnicodeDecodeError:
            return None
    decoded = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
    if b"\0" in decoded:
        return None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    segments: list[str] = []
    parts = text.split("/")
    for part in parts[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if not segments:
                return None
            segments.pop()
            continue
        segments.append(part)
    path = "/" + "/".join(segments)
    if text.endswith("/") or parts[-1] in (".", "..") and path != "/":
        if not path.endswith("/"):
            path += "/"
    return path
