"""HTTPS at the front: real TLS clients (Python's ssl, curl) against `gantry front` with
certificates from a CA the test makes: SNI, the default server, refused old versions,
static files through TLS, HSTS, the scheme upstreams see, and certificates read again
on SIGHUP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest

from tests.process import (
    GantryServer,
    Launcher,
    free_port,
    ready_workers,
    require_program,
    wait_for,
)
from tests.support_config import check_file
from tests.support_front import RawUpstream, fields_of
from tests.support_tls import (
    TestCA,
    https_connection,
    peer_names,
    serial_of,
    serial_of_file,
)

BIG = 4 * 1024 * 1024


def _site(folder: Path, name: str) -> Path:
    root = folder / name
    root.mkdir()
    (root / "index.html").write_text(f"site {name}\n")
    return root


def _two_hosts(tmp: Path, ca: TestCA, extra: str = "", workers: int = 1) -> str:
    """a.test and b.test (the default, by `default = true`) on FRONT_PORT with TLS."""
    a, b = ca.issue("a.test"), ca.issue("b.test")
    root_a, root_b = _site(tmp, "a"), _site(tmp, "b")
    (root_a / "big.bin").write_bytes(os.urandom(BIG))
    return f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
workers = {workers}
[[front.server]]
server_name = ["a.test"]
ssl_certificate = "{a.certificate}"
ssl_certificate_key = "{a.key}"
hsts = "max-age=63072000; includeSubDomains"
[[front.server.location]]
path = "/"
root = "{root_a}"
[[front.server]]
server_name = ["b.test"]
default = true
ssl_certificate = "{b.certificate}"
ssl_certificate_key = "{b.key}"
[[front.server.location]]
path = "/"
root = "{root_b}"
{extra}"""


def _get(port: int, host: str, ca: TestCA, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = https_connection(port, host, ca.client_context())
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_sni_picks_each_hosts_certificate_and_the_default_answers_the_rest(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca))
    assert peer_names(front.port, "a.test") == ["a.test"]
    assert peer_names(front.port, "b.test") == ["b.test"]
    assert peer_names(front.port, "unknown.test") == ["b.test"]
    assert peer_names(front.port, None) == ["b.test"]
    # verified by the client (CA and host name), and routed to the host's own site
    assert _get(front.port, "a.test", ca)[::2] == (200, b"site a\n")
    assert _get(front.port, "b.test", ca)[::2] == (200, b"site b\n")


def test_alpn_says_http11_and_tls12_uses_an_intermediate_cipher(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca))
    context = ca.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() == "TLSv1.2"
            cipher = tls.cipher()
            assert cipher is not None and cipher[0].startswith("ECDHE-"), cipher
            assert "GCM" in cipher[0] or "CHACHA20" in cipher[0], cipher


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_10_and_11_are_refused(
    launch: Launcher, short_tmp: Path, version: ssl.TLSVersion
) -> None:
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # the client would refuse these versions itself at OpenSSL's default level
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # the versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw, server_hostname="a.test").close()
    curl = require_program("curl")
    flag = "--tlsv1.0" if version == ssl.TLSVersion.TLSv1 else "--tlsv1.1"
    maximum = "1.0" if version == ssl.TLSVersion.TLSv1 else "1.1"
    resolve = f"a.test:{front.port}:127.0.0.1"
    base = [curl, "-sS", "--cacert", str(ca.ca_file), "--resolve", resolve, "-o", "/dev/null"]
    done = subprocess.run(
        [*base, flag, "--tls-max", maximum, f"https://a.test:{front.port}/"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    done = subprocess.run(
        [*base, "--tlsv1.2", "--tls-max", "1.2", f"https://a.test:{front.port}/"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_static_file_goes_whole_through_tls_and_hsts_is_sent(
    launch: Launcher, short_tmp: Path
) -> None:
    """sendfile(2) would write the file in clear on a TLS socket: it must not be used."""
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca))
    expected = hashlib.sha256((short_tmp / "a" / "big.bin").read_bytes()).hexdigest()
    conn = https_connection(front.port, "a.test", ca.client_context())
    try:
        for _ in range(2):  # twice on the same keep-alive connection
            conn.request("GET", "/big.bin")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert hashlib.sha256(body).hexdigest() == expected
            hsts = response.getheader("Strict-Transport-Security")
            assert hsts == "max-age=63072000; includeSubDomains"
    finally:
        conn.close()
    # a small file goes with its head in one write; a range of it, a multipart range too
    conn = https_connection(front.port, "a.test", ca.client_context())
    try:
        for headers, status, expected_body in (
            ({}, 200, b"site a\n"),
            ({"Range": "bytes=0-3"}, 206, b"site"),
        ):
            conn.request("GET", "/", headers=headers)
            response = conn.getresponse()
            assert (response.status, response.read()) == (status, expected_body)
        conn.request("GET", "/", headers={"Range": "bytes=0-1,5-6"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 206 and b"si" in body and b"a\n" in body, body
    finally:
        conn.close()
    # curl too, and b.test has no hsts
    curl = require_program("curl")
    done = subprocess.run(
        [curl, "-sS", "-D", "-", "--cacert", str(ca.ca_file), "--resolve",
         f"b.test:{front.port}:127.0.0.1", f"https://b.test:{front.port}/"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"site b" in done.stdout
    assert b"strict-transport-security" not in done.stdout.lower()


def test_the_scheme_reaches_http_and_uwsgi_upstreams(launch: Launcher, short_tmp: Path) -> None:
    """X-Forwarded-Proto to an HTTP upstream; HTTPS=on to a uwsgi one, so Flask's
    url_for(_external=True) builds https links; a plain listener beside says http."""
    ca = TestCA(short_tmp)
    pair = ca.issue("a.test")
    raw = RawUpstream(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sock = short_tmp / "app.sock"
    launch.serve("tests.apps_tls:app", "--uwsgi-socket", str(sock), http=False, wait_for=str(sock))
    plain = free_port()
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl", "127.0.0.1:{plain}"]
[[front.server]]
server_name = ["a.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
hsts = "max-age=60"
[[front.server.location]]
path = "/raw/"
proxy = "raw"
[[front.server.location]]
path = "/"
proxy = "flask"
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{raw.port}" }}]
[front.upstream.flask]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
""")  # fmt: skip
    try:
        status, _, body = _get(front.port, "a.test", ca, "/raw/x")
        assert (status, body) == (200, b"ok")
        assert ("x-forwarded-proto", "https") in fields_of(raw.received[-1])
        status, fields, body = _get(front.port, "a.test", ca, "/link")
        assert status == 200, body
        seen = json.loads(body)
        assert seen["link"] == f"https://a.test:{front.port}/link", seen
        assert seen["url_scheme"] == "https"
        assert fields["Strict-Transport-Security"] == "max-age=60"
        # the plain listener: http, and no HSTS (it is for https responses only)
        with socket.create_connection(("127.0.0.1", plain), timeout=10) as conn:
            conn.sendall(b"GET /link HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert b'"link":"http://a.test/link"' in answer.replace(b" ", b""), answer
        assert b"strict-transport-security" not in answer.lower()
        conn2 = socket.create_connection(("127.0.0.1", plain), timeout=10)
        with conn2:
            conn2.sendall(b"GET /raw/y HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            while conn2.recv(65536):
                pass
        assert ("x-forwarded-proto", "http") in fields_of(raw.received[-1])
    finally:
        raw.close()


def test_a_server_answers_only_on_the_listeners_it_names(launch: Launcher, short_tmp: Path) -> None:
    ca = TestCA(short_tmp)
    pair = ca.issue("a.test")
    root_a, root_p = _site(short_tmp, "a"), _site(short_tmp, "p")
    plain = free_port()
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl", "127.0.0.1:{plain}"]
[[front.server]]
server_name = ["plain.test"]
listen = ["127.0.0.1:{plain}"]
[[front.server.location]]
path = "/"
root = "{root_p}"
[[front.server]]
server_name = ["a.test"]
listen = ["127.0.0.1:FRONT_PORT ssl"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
root = "{root_a}"
""")  # fmt: skip
    # a.test is not on the plain listener: its only server answers
    with socket.create_connection(("127.0.0.1", plain), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.endswith(b"site p\n"), answer
    # and on the TLS listener, plain.test gets a.test's site (the only server there)
    assert peer_names(front.port, "plain.test") == ["a.test"]
    conn3 = https_connection(front.port, "a.test", ca.client_context())
    try:
        conn3.request("GET", "/", headers={"Host": "plain.test"})
        assert conn3.getresponse().read() == b"site a\n"
    finally:
        conn3.close()


def test_a_renewed_certificate_is_served_after_sighup_and_a_download_in_flight_ends(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca, workers=2))
    ready_workers(front.pid, 2)  # the master's signal handlers are in place
    context = ca.client_context()
    old_serial = serial_of_file(short_tmp / "a.test.crt")
    raw = socket.create_connection(("127.0.0.1", front.port), timeout=15)
    tls = context.wrap_socket(raw, server_hostname="a.test")
    try:
        assert serial_of(tls) == old_serial
        tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\n\r\n")
        received = tls.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        ca.issue("a.test")  # renewed on disk, as certbot does
        new_serial = serial_of_file(short_tmp / "a.test.crt")
        assert new_serial != old_serial
        os.kill(front.pid, signal.SIGHUP)

        def served_serial() -> int:
            with socket.create_connection(("127.0.0.1", front.port), timeout=10) as fresh:
                with context.wrap_socket(fresh, server_hostname="a.test") as new:
                    return serial_of(new)

        assert wait_for(lambda: served_serial() == new_serial, limit=20), front.log_text()
        # the download begun before the reload goes on to its last byte
        head, _, body = received.partition(b"\r\n\r\n")
        while len(body) < BIG:
            chunk = tls.recv(1 << 20)
            assert chunk, f"closed after {len(body)} bytes"
            body += chunk
        expected = (short_tmp / "a" / "big.bin").read_bytes()
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        # and that connection still takes a request (the old worker answers, then closes)
        tls.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        answer = b""
        while b"site a\n" not in answer:
            chunk = tls.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        tls.close()


def test_a_bad_pair_at_reload_leaves_the_old_certificate_serving(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca, workers=2))
    ready_workers(front.pid, 2)  # the master's signal handlers are in place
    old_serial = serial_of_file(short_tmp / "a.test.crt")
    # a renewal half done: the new certificate with the old key (a mismatched pair)
    key = (short_tmp / "a.test.key").read_bytes()
    ca.issue("a.test")
    (short_tmp / "a.test.key").write_bytes(key)
    os.kill(front.pid, signal.SIGHUP)
    assert wait_for(lambda: "certificates not reloaded" in front.log_text()), front.log_text()
    assert "ssl_certificate_key" in front.log_text()
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        with ca.client_context().wrap_socket(raw, server_hostname="a.test") as tls:
            assert serial_of(tls) == old_serial
    assert _get(front.port, "a.test", ca)[::2] == (200, b"site a\n")


def test_bad_certificates_are_config_errors_naming_file_and_key(short_tmp: Path) -> None:
    ca = TestCA(short_tmp)
    a, b = ca.issue("a.test"), ca.issue("b.test")

    def check(cert: Path | str, key: Path | str, listen: str = "127.0.0.1:8443 ssl") -> str:
        done = check_file(
            short_tmp / "g.toml",
            f'[front]\nlisten = ["{listen}"]\n[[front.server]]\n'
            f'ssl_certificate = "{cert}"\nssl_certificate_key = "{key}"\n',
        )
        assert done.returncode != 0, done.stdout
        return done.stderr

    error = check(a.certificate, b.key)
    assert "front.server[0].ssl_certificate_key" in error and str(b.key) in error, error
    error = check(short_tmp / "missing.crt", a.key)
    assert "front.server[0].ssl_certificate:" in error and "missing.crt" in error, error
    (short_tmp / "junk.pem").write_text("not a certificate\n")
    error = check(short_tmp / "junk.pem", a.key)
    assert "front.server[0].ssl_certificate:" in error and "junk.pem" in error, error
    error = check(a.certificate, short_tmp / "junk.pem")
    assert "front.server[0].ssl_certificate_key" in error, error
    error = check(a.certificate, a.key, "127.0.0.1:8443 h2")
    assert "front.listen[0]" in error and "'h2' needs 'ssl'" in error, error
    error = check(a.certificate, a.key, "127.0.0.1:8443 tls")
    assert "unknown listen flag 'tls'" in error, error
    done = check_file(
        short_tmp / "g.toml",
        '[front]\nlisten = ["127.0.0.1:8443 ssl"]\n[[front.server]]\nserver_name = ["x"]\n',
    )
    assert done.returncode != 0 and "ssl_certificate" in done.stderr, done.stderr
    done = check_file(
        short_tmp / "g.toml",
        f'[front]\nlisten = ["127.0.0.1:8443 ssl"]\n[[front.server]]\n'
        f'ssl_certificate = "{a.certificate}"\nssl_certificate_key = "{a.key}"\n'
        f'ssl_protocols = ["TLSv1.1"]\n',
    )
    assert done.returncode != 0 and "ssl_protocols" in done.stderr, done.stderr


def test_the_front_refuses_to_start_on_a_mismatched_pair(short_tmp: Path) -> None:
    ca = TestCA(short_tmp)
    a, b = ca.issue("a.test"), ca.issue("b.test")
    port = free_port()
    (short_tmp / "f.toml").write_text(
        f'[front]\nlisten = ["127.0.0.1:{port} ssl"]\n[[front.server]]\n'
        f'ssl_certificate = "{a.certificate}"\nssl_certificate_key = "{b.key}"\n'
    )
    server = GantryServer("", log_path=short_tmp / "front.log", port=port)
    server.command = [*server.command[:3], "front", "-c", str(short_tmp / "f.toml")]
    done = subprocess.run(server.command, env=server.env, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"front.server[0].ssl_certificate_key" in done.stderr, done.stderr


def test_the_cache_keys_http_and_https_apart(launch: Launcher, short_tmp: Path) -> None:
    """$scheme in the default key follows the listener: an upstream's redirect to https,
    cached for http clients, must not come back to the https ones (a redirect loop)."""
    ca = TestCA(short_tmp)
    pair = ca.issue("a.test")

    def answer(head: bytes) -> bytes:
        proto = dict(fields_of(head))["x-forwarded-proto"].encode()
        return b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n%b" % (
            len(proto),
            proto,
        )

    raw = RawUpstream(answer)
    plain = free_port()
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl", "127.0.0.1:{plain}"]
[[front.server]]
server_name = ["a.test"]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
proxy = "raw"
cache = "zone"
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{raw.port}" }}]
[front.cache.zone]
path = "{short_tmp / "cache"}"
""")  # fmt: skip
    try:
        for _ in range(2):  # the second of each is a hit
            with socket.create_connection(("127.0.0.1", plain), timeout=10) as conn:
                conn.sendall(b"GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                answer_bytes = b""
                while chunk := conn.recv(65536):
                    answer_bytes += chunk
            assert answer_bytes.endswith(b"\r\n\r\nhttp"), answer_bytes
            assert _get(front.port, "a.test", ca, "/p")[::2] == (200, b"https")
        assert len(raw.received) == 2
    finally:
        raw.close()


def test_sessions_resume_on_any_worker(launch: Launcher, short_tmp: Path) -> None:
    """The contexts are made in the master before the fork, so both workers share each
    one's ticket key: a session from one connection resumes on every next one, whichever
    worker accepts it (with a key per worker about half would do a full handshake)."""
    ca = TestCA(short_tmp)
    front = launch.front(_two_hosts(short_tmp, ca, workers=2))
    ready_workers(front.pid, 2)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ca.client_context()
        context.maximum_version = version
        session = None
        reused = 0
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="a.test", session=session) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    while tls.recv(65536):  # TLS 1.3 tickets come after the handshake
                        pass
                    reused += tls.session_reused
                    session = session or tls.session
        assert reused == 11, (version, reused)
