"""Helpers for the TLS tests (a helper module, not a test module): a CA made by the test
(trustme), certificates written as the PEM files a front reads, and a TLS client that
says which certificate it was given."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class PemPair:
    """A certificate chain file and its key file."""

    certificate: Path
    key: Path


class TestCA:
    """A certificate authority of the test's own; its PEM file is ``ca_file``."""

    __test__ = False  # not a test class for pytest

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, *names: str, stem: str | None = None) -> PemPair:
        """A certificate for ``names`` (written over an earlier one of the same stem)."""
        cert = self.ca.issue_cert(*names)
        stem = stem or names[0]
        pair = PemPair(self.folder / f"{stem}.crt", self.folder / f"{stem}.key")
        # written beside, then renamed: a reader never sees half a file (as certbot does)
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        for path, data in ((pair.certificate, chain), (pair.key, cert.private_key_pem.bytes())):
            part = path.with_suffix(".part")
            part.write_bytes(data)
            part.replace(path)
        return pair

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA and checks host names."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


def peer_names(port: int, server_name: str | None) -> list[str]:
    """The DNS names of the certificate the server at ``port`` gives for SNI
    ``server_name`` (None: no SNI), read without checking it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return _dns_names(der)


def _dns_names(der: bytes) -> list[str]:
    from cryptography import x509  # trustme's own dependency

    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(names.get_values_for_type(x509.DNSName))


def serial_of(sock: ssl.SSLSocket) -> int:
    """The serial number of the certificate a TLS connection was given."""
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of_file(path: Path) -> int:
    """The serial number of the first certificate of a PEM file."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def https_connection(port: int, host: str, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """An HTTPS connection to 127.0.0.1:``port`` that sends ``host`` as SNI and Host."""

    class _Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
            self.sock = context.wrap_socket(raw, server_hostname=host)

    return _Connection(host, port, timeout=15, context=context)


def site_tls_config(ca: TestCA, root: Path, settings: str = "") -> str:
    """A front config with one TLS listener (FRONT_PORT) and one server, site.test, with
    a certificate from ``ca``, serving ``root``; ``settings``: more [front] lines."""
    pair = ca.issue("site.test")
    return f"""[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
{settings}
[[front.server]]
server_name = ["site.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
root = "{root}"
"""
