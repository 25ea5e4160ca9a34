"""TLS to an upstream (``protocol = "https"``): the client context of a pool and the name
each server is checked for."""

from __future__ import annotations

import ipaddress
import ssl

from gantry.config.front_model import Upstream

__all__ = ["UpstreamTLS", "client_context", "server_name"]

#: how to reach one server of an https upstream: the pool's client context, the name its
#: certificate is checked for, and the key its kept connections are filed under (the
#: upstream's own: a connection checked for one pool must not serve another)
UpstreamTLS = tuple[ssl.SSLContext, str, str]


def client_context(upstream: Upstream) -> ssl.SSLContext | None:
    """The client context of an https upstream (None for http and uwsgi ones): the
    certificate is checked by default, as a browser would, unlike nginx's default."""
    if upstream.protocol != "https":
        return None
    if upstream.ssl_verify:
        context = ssl.create_default_context(cafile=upstream.ssl_trusted_certificate)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def server_name(upstream: Upstream, address: str) -> str:
    """What SNI says and the certificate is checked for: ssl_name, else the address's host
    (an IP address is checked against the certificate's IP entries and not sent as SNI)."""
    if upstream.ssl_name:
        return upstream.ssl_name
    if address.startswith("unix:"):
        return "localhost"
    host = address.rpartition(":")[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
