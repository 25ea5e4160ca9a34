"""The http-tests cache-tests suite (tests/data/cache-tests, cache-tests.fyi) run against
`gantry front` with a cache zone, scored as cache-tests.fyi scores it.

It waits on real clocks (a few minutes): it starts processes, so tests/conftest.py marks
it ``servers`` and `make test` runs it once, in the compiled pass only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.process import Launcher, free_port, require_program

SUITE = Path(__file__).resolve().parent / "data" / "cache-tests"
#: required tests passed when this was written (of 163): a regression fails the test
REACHED = 156


def test_cache_tests_score(launch: Launcher, short_tmp: Path) -> None:
    require_program("node", "nodejs")
    origin_port = free_port()
    config = f"""[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.origin]
servers = [{{ address = "127.0.0.1:{origin_port}" }}]

[front.cache.suite]
path = "{short_tmp / "cache"}"
use_stale = ["error", "timeout", "http_500", "http_502", "http_503", "http_504"]

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "origin"
cache = "suite"
"""
    front = launch.front(config)
    results = short_tmp / "results.json"
    done = subprocess.run(
        ["bash", str(SUITE / "run.sh"), f"http://127.0.0.1:{front.port}", str(origin_port)],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LIST": "1", "RESULTS": str(results)},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    score = re.search(r"^required: (\d+)/(\d+) passed", done.stdout, re.MULTILINE)
    assert score is not None, done.stdout
    passed, total = int(score.group(1)), int(score.group(2))
    assert total == 163
    assert passed >= REACHED, f"required {passed}/{total}: the failures\n{done.stdout}"
