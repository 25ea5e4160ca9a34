"""Static answers a shared cache can store safely, through a real `gantry front`."""

from __future__ import annotations

import http.client
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.process import Launcher
from tests.support_static import static_config, write_site

LOCATIONS = """
[[front.server.location]]
path = "/static/"
alias = "SITE/"
gzip_static = true
expires = 3600
"""


@pytest.fixture()
def front(launch: Launcher) -> int:
    return launch.front(static_config(write_site(launch.workdir / "site"), LOCATIONS)).port


def _get(port: int, path: str, **headers: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@pytest.mark.parametrize("accept", [None, "identity", "gzip"])
def test_a_file_with_a_compressed_sibling_always_varies(front: int, accept: str | None) -> None:
    """Plain or compressed, the answer names Accept-Encoding in Vary: without it a
    downstream cache would hand the plain copy to everyone (or the gzip one)."""
    headers = {"Accept_Encoding": accept} if accept else {}
    for _ in range(3):  # the first answer and the hot-file cache's
        response = _get(front, "/static/page.html", **headers)
        assert response.status == 200
        assert response.getheader("Vary") == "Accept-Encoding"
        assert (response.getheader("Content-Encoding") == "gzip") == (accept == "gzip")


def test_a_file_without_a_sibling_does_not_vary(front: int) -> None:
    response = _get(front, "/static/plain.html")
    assert response.status == 200 and response.getheader("Vary") is None


def test_expires_is_date_plus_the_setting(front: int) -> None:
    """`expires = 3600` means Expires = Date + 3600 s, whatever the clock's phase."""
    for _ in range(12):  # spread over more than a second of the front's clock
        response = _get(front, "/static/plain.html")
        date = parsedate_to_datetime(response.getheader("Date", ""))
        expires = parsedate_to_datetime(response.getheader("Expires", ""))
        assert (expires - date).total_seconds() == 3600, (date, expires)
        assert response.getheader("Cache-Control") == "max-age=3600"
        time.sleep(0.11)  # the stimulus: requests at several points of the second
