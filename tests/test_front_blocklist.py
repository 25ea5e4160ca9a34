"""[front.blocklist]: files watched while running (a line added refuses the next request in
every worker within a second, a line removed lets it in), 403 or 444, and the runtime
bans file (BanStore: add / remove with expiry and reason, hit counts) that survives a
restart. Clients are told apart by X-Forwarded-For from a trusted 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.front.blocklist import BanStore, read_list
from tests.process import Front, Launcher, require_program, wait_for

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = {workers}

[front.real_ip]
from = ["127.0.0.1"]

[front.blocklist]
files = ["{files}"]
status = {status}
state = "{state}"

[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""


def _front(launch: Launcher, tmp: Path, workers: int = 2, status: int = 403) -> Front:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    config = CONFIG.format(
        workers=workers,
        files=tmp / "blocked.txt",
        status=status,
        state=tmp / "state" / "bans",
        root=root,
    )
    return launch.front(config)


class Client:
    """A keep-alive connection, and the front worker (pid) that accepted it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.worker = 0

    def get(self, client: str) -> int:
        """The status of GET / as ``client``; 0 when closed without an answer."""
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n".encode()
        )
        response = http.client.HTTPResponse(self.sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return 0
        response.read()
        return response.status

    def close(self) -> None:
        self.sock.close()


def _owners(port: int) -> dict[int, int]:
    """Client port -> pid of the process holding the front's side of the connection."""
    ss = require_program("ss", "iproute2")
    out = subprocess.run(
        [ss, "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    owners = {}
    for line in out.splitlines():
        fields = line.split()
        peer = fields[3] if len(fields) > 3 else ""
        match = re.search(r"pid=(\d+)", line)
        if match and peer.rpartition(":")[2].isdigit():
            owners[int(peer.rpartition(":")[2])] = int(match[1])
    return owners


@pytest.fixture
def clients_in_both_workers(
    launch: Launcher, short_tmp: Path
) -> Iterator[tuple[Front, list[Client]]]:
    (short_tmp / "blocked.txt").write_text("# nothing yet\n")
    front = _front(launch, short_tmp)
    clients: list[Client] = []
    try:
        # connections until each of the two workers holds at least one (bounded)
        while len({c.worker for c in clients}) < 2 and len(clients) < 200:
            client = Client(front.port)
            assert client.get("192.0.2.1") == 200
            client.worker = _owners(front.port).get(client.sock.getsockname()[1], 0)
            clients.append(client)
        assert len({c.worker for c in clients} - {0}) == 2, "one worker took every connection"
        yield front, clients
    finally:
        for client in clients:
            client.close()


def _first_per_worker(clients: list[Client]) -> list[Client]:
    seen: dict[int, Client] = {}
    for client in clients:
        seen.setdefault(client.worker, client)
    return list(seen.values())


def _until(client: Client, who: str, status: int, limit: float) -> float:
    """Seconds until GET as ``who`` gets ``status`` on this connection."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if client.get(who) == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{who} did not get {status} within {limit}s")


def test_a_line_added_refuses_the_next_request_in_both_workers(
    clients_in_both_workers: tuple[Front, list[Client]], short_tmp: Path
) -> None:
    front, clients = clients_in_both_workers
    chosen = _first_per_worker(clients)
    blocked = short_tmp / "blocked.txt"
    with blocked.open("a") as file:  # edited in place
        file.write("192.0.2.0/24  # a bad neighbourhood\n")
    for client in chosen:
        assert _until(client, "192.0.2.9", 403, 1.0) < 1.0
        assert client.get("198.51.100.1") == 200  # others still in
    # replaced whole (as an editor or a tool renames a new file over it)
    fresh = short_tmp / "blocked.new"
    fresh.write_text("2001:db8::/32\n")
    os.replace(fresh, blocked)
    for client in chosen:
        assert _until(client, "192.0.2.9", 200, 1.0) < 1.0
        assert client.get("2001:db8::77") == 403
        assert client.get("::ffff:192.0.2.9") == 200
    assert front.process is not None and front.process.poll() is None


def test_status_444_closes_without_an_answer(launch: Launcher, short_tmp: Path) -> None:
    (short_tmp / "blocked.txt").write_text("203.0.113.0/24\nnot-an-address\n")
    front = _front(launch, short_tmp, workers=1, status=444)
    client = Client(front.port)
    try:
        assert client.get("198.51.100.1") == 200
        assert client.get("203.0.113.5") == 0
    finally:
        client.close()
    assert wait_for(lambda: "1 line(s) skipped" in front.log_text(), 5), front.log_text()


def test_runtime_bans_expire_lift_and_survive_a_restart(launch: Launcher, short_tmp: Path) -> None:
    (short_tmp / "blocked.txt").write_text("")
    store = BanStore(str(short_tmp / "state" / "bans"))
    store.add("198.51.100.50", 3600, "made before the start")
    front = _front(launch, short_tmp, workers=2)
    client = Client(front.port)
    try:
        assert client.get("198.51.100.50") == 403
        store.add("198.51.100.60", None, "by hand")
        assert _until(client, "198.51.100.60", 403, 1.0) < 1.0
        store.add("198.51.100.70", 1.0, "short")
        assert _until(client, "198.51.100.70", 403, 1.0) < 1.0
        assert _until(client, "198.51.100.70", 200, 3.0) < 3.0  # expired by itself
        assert store.remove("198.51.100.60") is True
        assert store.remove("198.51.100.60") is False
        assert _until(client, "198.51.100.60", 200, 1.0) < 1.0
        bans = {ban.target: ban for ban in store.active()}
        assert set(bans) == {"198.51.100.50"}
        assert bans["198.51.100.50"].reason == "made before the start"
        assert wait_for(lambda: store.hits().get("198.51.100.50", 0) >= 1, 3)
    finally:
        client.close()
    front.stop()
    front.start()
    before = store.hits()["198.51.100.50"]
    client = Client(front.port)
    try:
        assert client.get("198.51.100.50") == 403  # the 1h ban outlived the front
        assert client.get("198.51.100.60") == 200
    finally:
        client.close()
    # the hits of the workers before the restart are folded into one report, and kept
    assert wait_for(lambda: store.hits().get("198.51.100.50", 0) == before + 1, 3)
    reports = sorted(os.listdir(store.hits_dir))
    assert "total" in reports and len(reports) <= 3, reports  # total + the live workers


def test_ban_store_refuses_what_is_not_an_address(short_tmp: Path) -> None:
    store = BanStore(str(short_tmp / "bans"))
    with pytest.raises(ValueError, match="IP address or CIDR"):
        store.add("example.test", 60)
    store.add("2001:db8::/48", 60, "multi\nline reason")
    (ban,) = store.active()
    assert (ban.target, ban.reason) == ("2001:db8::/48", "multi\nline reason")
    assert 55 < ban.until - time.time() <= 60
    # the autoban's ban_file lines (appended, the last one of an address wins) read the same
    with open(store.path, "a", encoding="utf-8") as file:
        file.write('{"addr": "192.0.2.4", "until": 1, "reason": "old"}\n')
        file.write('not json\n{"addr": "example.test", "until": null}\n')
        file.write(f'{{"addr": "192.0.2.4", "until": {time.time() + 60}, "reason": "again"}}\n')
    assert {b.target: b.reason for b in store.active()} == {
        "2001:db8::/48": "multi\nline reason",
        "192.0.2.4": "again",
    }
    store.ban("192.0.2.5", 30, "autoban: 4xx")  # the autoban's Banner protocol
    assert "192.0.2.5" in {b.target for b in store.active()}


def test_read_list_takes_comments_and_cidrs() -> None:
    text = "# header\n10.0.0.0/8\n  192.0.2.1  # one host\n\n::1\nbad/99\n1.2.3.4/33\n"
    assert [entry for _, entry in read_list(text, "t")] == ["10.0.0.0/8", "192.0.2.1", "::1"]


def test_address_set_finds_the_most_specific_entry() -> None:
    from gantry.front.addresses import AddressSet, network_key

    written = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "::ffff:192.0.2.0/120"]
    entries = [(key, text) for text in written if (key := network_key(text)) is not None]
    found = AddressSet(entries)
    assert found.find("10.1.2.3") == "10.1.2.3"
    assert found.find("10.1.9.9") == "10.1.0.0/16"
    assert found.find("10.200.0.1") == "10.0.0.0/8"
    assert found.find("::ffff:10.1.2.3") == "10.1.2.3"  # v4-mapped is IPv4
    assert found.find("192.0.2.200") == "::ffff:192.0.2.0/120"
    assert found.find("2001:db8:ffff::1") == "2001:db8::/32"
    assert found.find("2001:db9::1") is None
    assert found.find("11.0.0.1") is None
    for junk in ("", "example.test", "10.1.2", "1.2.3.4.5", "::g", "10.1.2.3/8"):
        assert found.find(junk) is None, junk
    assert not AddressSet() and AddressSet([]).find("10.0.0.1") is None


def test_gantry_check_warns_of_a_blocklist_file_it_cannot_read(tmp_path: Path) -> None:
    from tests.support_config import check_file

    present = tmp_path / "present.txt"
    present.write_text("192.0.2.1\n")
    config = f"""
[front]
[front.blocklist]
files = ["{present}", "{tmp_path / "missing.txt"}"]
[[app]]
name = "hello"
module = "gantry.demo:app"
"""
    done = check_file(tmp_path / "gantry.toml", config)
    assert done.returncode == 0, done.stderr
    assert "front.blocklist.files[1]: cannot read" in done.stderr, done.stderr
    assert "files[0]" not in done.stderr
