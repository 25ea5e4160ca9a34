"""The suite stands alone: its data ships in tests/data, intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def _listed() -> dict[str, str]:
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    return sums


def test_every_data_file_matches_its_recorded_digest() -> None:
    """A case edited or corrupted by a checkout (line endings, a merge) is caught here."""
    listed = _listed()
    present = {
        str(path.relative_to(DATA)) for path in (DATA / "conformance").rglob("*") if path.is_file()
    }
    assert present == set(listed), "tests/data changed: refresh SHA256SUMS (see its README)"
    wrong = [
        name
        for name, digest in listed.items()
        if hashlib.sha256((DATA / name).read_bytes()).hexdigest() != digest
    ]
    assert wrong == []
