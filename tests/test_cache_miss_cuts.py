"""What the cuts in a miss's cost changed that a client could see: entries written with
the JSON head of version 1 are misses now (in a file of their own or in a pack), never
read as entries of the new layout, and what a worker of the new layout writes is read
back by another worker; Cache-Control values parsed once give what parsing gives."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache import policy
from gantry.front.cache.packs import slot_tag
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry

NOW = time.time()


def _zone(path: Path) -> CacheZone:
    return CacheZone(name="z", path=str(path))


def _entry(key: str = "k") -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=NOW, response_time=NOW, initial_age=0.0, freshness=Freshness(600.0),
    )  # fmt: skip


def _version_1(key: str, body: bytes) -> bytes:
    """An entry as version 1 wrote it: a JSON head, every checksum right."""
    head = json.dumps(
        {
            "key": key,
            "status": 200,
            "reason": "OK",
            "fields": [["Content-Type", "text/plain"]],
            "request_time": NOW,
            "response_time": NOW,
            "initial_age": 0.0,
            "freshness": [600.0, 0.0, 0.0, False, False],
            "vary": [],
            "vary_values": [],
            "tags": [],
            "purged": False,
        },  # fmt: skip
        separators=(",", ":"),
    ).encode()
    prefix = struct.pack(">3sBI", b"GCE", 1, len(head))
    trailer = struct.pack(">QII", len(body), zlib.crc32(body), zlib.crc32(head))
    return prefix + head + body + trailer


def test_a_version_1_file_is_a_miss_and_goes(tmp_path: Path) -> None:
    store = CacheStore(_zone(tmp_path))
    path = Path(store.path_of(store.digest("k")))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_version_1("k", b"old body"))
    assert store.lookup("k", [], NOW) is None  # not named in the index: not looked at
    store.hint_file(store.digest("k"))  # as a file written in place has
    assert store.lookup("k", [], NOW) is None
    assert not path.exists()  # removed: the next reader misses at once


def test_a_version_1_record_in_a_pack_is_a_miss(tmp_path: Path) -> None:
    store = CacheStore(_zone(tmp_path))
    record = _version_1("k", b"old body")
    pack, offset = store.packer.append(record)
    store.index.put(slot_tag(store.digest("k")), pack, offset, len(record), NOW)
    assert store.lookup("k", [], NOW) is None
    assert store.index.find(slot_tag(store.digest("k"))) is None  # its slot cleared


def test_the_new_layout_is_read_back_by_another_worker(tmp_path: Path) -> None:
    one = CacheStore(_zone(tmp_path))
    for key, packed in (("packed", True), ("file", False)):
        writer = one.writer(_entry(key))
        assert writer.write(b"body of " + key.encode())
        assert (writer.commit_packed() if packed else writer.commit()) is not None
    other = CacheStore(_zone(tmp_path))  # nothing in its memory
    for key in ("packed", "file"):
        found = other.lookup(key, [], NOW)
        assert found is not None and found.body == b"body of " + key.encode()
        assert found.fields == [(b"Content-Type", b"text/plain")]
        assert found.freshness.lifetime == 600.0 and found.request_time == NOW


def test_cache_control_values_parsed_once_give_what_parsing_gives() -> None:
    values = [b"max-age=%d, public" % n for n in range(policy.PARSED_VALUES + 10)]
    values += [b'no-cache="Set-Cookie", max-age=5', b"MAX-AGE=7, max-age=8", b"max-age=3600"]
    for _ in range(2):  # the second time from memory (for most), past the bound for some
        for value in values:
            assert policy.directives(value) == policy._parse_directives(value)
    assert policy.directives(b"max-age=3600") == {"max-age": b"3600"}
    assert policy.directives(b'no-cache="Set-Cookie"') == {"no-cache": b"Set-Cookie"}
    assert policy.directives(None) == {} and policy.directives(b"") == {}
    assert len(policy._PARSED) <= policy.PARSED_VALUES
