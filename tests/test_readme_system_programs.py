"""README.md says what `make test` installs with apt: every package of the Makefile's
SYSTEM_PROGRAMS, so a reader knows what the suite will put on the machine."""

from __future__ import annotations

import re

from tests.process import REPO


def _system_programs() -> list[tuple[str, str]]:
    """(program, apt package) of SYSTEM_PROGRAMS, as the Makefile's system-deps reads it."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^SYSTEM_PROGRAMS\s*:?=\s*(.+)$", makefile, re.MULTILINE)
    assert match is not None, "SYSTEM_PROGRAMS is gone from the Makefile"
    return [(pair.partition(":")[0], pair.partition(":")[2]) for pair in match[1].split()]


def test_readme_lists_every_package_make_test_installs() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("What `make test`")
    paragraph = readme[start : readme.index("\n\n", start)]
    pairs = _system_programs()
    assert len(pairs) >= 2
    missing = [package for _, package in pairs if package not in paragraph]
    assert missing == [], f"README.md does not say make test installs {missing}"


def test_every_program_a_test_requires_is_installed_by_make_test() -> None:
    """A program the tests ask for with require_program (which fails under CI=true when
    it is missing) is one make test installs: else a fresh machine fails the suite."""
    asked: set[str] = set()
    for path in (REPO / "tests").glob("*.py"):
        asked |= set(re.findall(r'require_program\("([^"]+)"', path.read_text()))
    installed = {program for program, _ in _system_programs()}
    assert asked and sorted(asked - installed) == []
