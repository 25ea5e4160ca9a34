"""A hot static file over HTTP/2: its prepared head is turned into HTTP/2 fields once
and reused, while what is added per request (add_header with a request's variables,
Date) stays per request and nothing piles up from one request to the next."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Front, Launcher
from tests.support_http2 import RawH2

BODY = b"<p>hot</p>\n" * 20


@pytest.fixture(scope="module")
def front(module_launch: Launcher, module_short_tmp: Path) -> Iterator[Front]:
    www = module_short_tmp / "www"
    www.mkdir()
    (www / "hot.html").write_bytes(BODY)
    front = module_launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT h2c"]
[[front.server]]
[[front.server.location]]
path = "/"
root = "{www}"
add_header = {{ "X-Arg" = "$arg_n" }}
""")  # fmt: skip
    yield front


def _check(client: RawH2, n: int) -> list[tuple[bytes, bytes]]:
    answer = client.wait(client.request(f"/hot.html?n={n}"))
    assert answer.status == 200 and bytes(answer.body) == BODY
    names = [name for name, _ in answer.headers]
    # each field once: a reused head list that was added to would repeat them
    assert len(names) == len(set(names)), answer.headers
    fields = dict(answer.headers)
    assert fields[b"x-arg"] == str(n).encode()
    assert fields[b"content-length"] == str(len(BODY)).encode()
    assert b"etag" in fields and b"date" in fields
    return answer.headers


def test_a_hot_file_keeps_its_fields_and_its_per_request_ones(front: Front) -> None:
    heads = []
    for connection in range(2):
        client = RawH2(front.port)
        try:
            # the first request makes the file hot; the others are served from the
            # prepared head (within the hot file's second)
            for n in range(1, 6):
                heads.append(_check(client, 10 * connection + n))
        finally:
            client.close()
    # the same fields every time, but for the added one and Date
    fixed = [
        [(name, value) for name, value in head if name not in (b"x-arg", b"date")] for head in heads
    ]
    assert all(head == fixed[0] for head in fixed), fixed
