"""Checks of a certificate and its key, as the config reader and a reload make them."""

from __future__ import annotations

import ssl

__all__ = ["CertificateError", "load_pair"]


class CertificateError(Exception):
    """A certificate or key that cannot be used; ``key`` names the setting at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20)  # a chain of a few certificates is some kilobytes
    except OSError as exc:
        raise CertificateError(key, f"cannot read {path!r}: {exc.strerror or exc}") from None


def load_pair(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """Load a PEM certificate chain and its private key into ``context``; CertificateError
    naming ``ssl_certificate`` or ``ssl_certificate_key`` when a file is missing,
    unreadable, not PEM of the right kind, or when the key is not the certificate's."""
    cert_text = _read(certificate, "ssl_certificate")
    key_text = _read(key, "ssl_certificate_key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        raise CertificateError(
            "ssl_certificate", f"{certificate!r} holds no PEM certificate (BEGIN CERTIFICATE)"
        )
    if b"PRIVATE KEY-----" not in key_text:
        raise CertificateError(
            "ssl_certificate_key", f"{key!r} holds no PEM private key (BEGIN PRIVATE KEY)"
        )
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "MISMATCH" in reason.upper():
            raise CertificateError(
                "ssl_certificate_key", f"{key!r} is not the key of the certificate {certificate!r}"
            ) from None
        if "KEY" in reason.upper():
            raise CertificateError("ssl_certificate_key", f"{key!r}: {reason}") from None
        raise CertificateError("ssl_certificate", f"{certificate!r}: {reason}") from None
    except OSError as exc:  # a file removed between the read and the load
        raise CertificateError("ssl_certificate", f"{certificate!r}: {exc}") from None
