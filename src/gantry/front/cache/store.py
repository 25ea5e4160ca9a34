"""The entries of a cache zone on disk, shared by every front worker of the host.

One file per stored response, ``PATH/ab/abcdef...`` (the SHA-256 of the primary key);
a response that varies leaves there a marker naming the request fields it varies on,
and each variant goes to ``PATH/ab/abcdef...-<secondary key hash>``. A file is written
under a temporary name (``.t...``) in its own folder and renamed into place (atomic),
so no reader ever sees half of one; a rename within one folder is also far cheaper than
one across folders, which Linux serializes file-system-wide. Its layout::

    b"GCE" version(1) | head length (4, big endian) | head (see ``_HEAD``)
    | body | body length (8) | body CRC-32 (4) | head CRC-32 (4)

A file whose magic, version, sizes or checksums do not hold is a miss (and removed).
Recency is the file's mtime (touched at most once a minute per entry and worker): the
sweep drops what was unused for ``inactive`` and the least recently used past
``max_size``. Each worker also keeps the hot small entries in memory (``memory``
bytes; an entry goes in on its second use, not when a miss stores it). A hit from
memory costs no system call: every worker that removes or replaces an entry's file
writes a new value into the zone's generation (``PATH/generation``, a small file each
worker maps), and a worker checks its entry against the file (a stat) only when that
value moved, or at least once a second; so a purge by another worker or a newer
version of the entry is seen on the next request.

Creating a file is the dear part of a miss (hundreds of microseconds on some file
systems), so a small entry that does not vary goes to the worker's pack instead (see
packs.py), with the other misses that end in the same turn of the loop: one write for
them all, at the end of the turn (``EntryWriter.commit_batched``). Until then the worker
answers them from memory, holds their fill locks, and holds their clients' last bytes
(so a client's next request, on any worker, finds its entry); a purge drops them; a
crash loses that turn's entries only (the index names a record only once it is written
whole). A large or varying entry's files are renamed into place at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import mmap
import os
import struct
import time
import zlib
from asyncio import AbstractEventLoop, Handle
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from gantry.config.front_model import CacheZone
from gantry.front.cache.counters import ADDED_BYTES, ADDED_ENTRIES
from gantry.front.cache.invalidations import Invalidations
from gantry.front.cache.locks import FillLocks, KeyLock
from gantry.front.cache.packs import (
    FILE_HINT,
    INDEX_HELPER,
    PackIndex,
    PackReaders,
    PackWriter,
    pack_id,
    pack_path,
    slot_tag,
    slot_tag_of,
    words_of,
)
from gantry.front.cache.policy import Fields, Freshness, vary_values

__all__ = ["CacheStore", "Entry", "EntryWriter", "KeyLock"]

MAGIC: Final = b"GCE"
VERSION: Final = 2  # 1: the head was JSON
_PREFIX: Final = struct.Struct(">3sBI")
_TRAILER: Final = struct.Struct(">QII")
#: a head larger than this is not an entry of ours
HEAD_MAX: Final = 1024 * 1024
#: bodies up to this size are read with the head (and may be kept in memory)
SMALL_BODY: Final = 256 * 1024
#: an entry's mtime is refreshed at most this often by one worker (its recency)
TOUCH_EVERY: Final = 60.0
#: pieces a body is copied in when a 304 rewrites an entry's head
COPY_PIECE: Final = 256 * 1024
#: large entries whose checksum a worker remembers having checked
VERIFIED_FILES: Final = 4096
#: how the temporary files of entries being written are named
TEMP_PREFIX: Final = ".t"
#: a memory-tier entry is checked against its file at least this often (seconds), even
#: when the zone's generation did not move (a file changed by hand, a zone folder made anew)
RECHECK_EVERY: Final = 1.0
_GENERATION: Final = struct.Struct("=Q")
#: entries waiting for their batch's write, at most (past either, a commit is done at once:
#: a disk slower than the misses slows the misses instead of filling the memory)
PENDING_ENTRIES: Final = 1024
PENDING_BYTES: Final = 32 * 1024 * 1024
#: entries a purge's walk looks at between two turns given to the loop
WALK_PIECE: Final = 256
#: digests of keys remembered (forgotten all at once past it): more than the requests a
#: worker has waiting on their upstreams at once, as a rule
RECENT_DIGESTS: Final = 1024
#: paths remembered as having no file (forgotten all at once past it)
ABSENT_PATHS: Final = 4096
#: slots of the index a piece of the sweep looks at (see CacheStore.sweep_steps)
SWEEP_SLICE: Final = 16384
#: SHA-256, looked up once (not in hashlib's namespace per miss)
_sha256: Final = hashlib.sha256
#: the length of a primary key's file name (its SHA-256 in hex)
DIGEST_HEX: Final = 64


# init=False: the __init__ below is compiled; the one dataclass() writes runs as
# interpreted Python (each miss makes an Entry: ~2 us of it)
@dataclass(init=False)
class Entry:
    """One stored response, as read from its file."""

    key: str
    status: int
    reason: bytes
    fields: Fields
    request_time: float
    response_time: float
    initial_age: float
    freshness: Freshness
    vary: tuple[bytes, ...] = ()
    vary_values: tuple[bytes | None, ...] = ()
    tags: tuple[str, ...] = ()
    #: soft-purged: served only where a stale response may be
    purged: bool = False
    path: str = ""
    body_offset: int = 0
    body_length: int = 0
    #: the whole body when it is small (else read from ``path`` at ``body_offset``)
    body: bytes | None = None
    #: (inode, mtime_ns) of the file it was read from
    identity: tuple[int, int] = (0, 0)
    #: (pack, offset, length) of its record when it is in a pack (0, 0, 0: a file of its own)
    pack: tuple[int, int, int] = (0, 0, 0)
    #: (the fields it was made from, the status line and fields as sent from the cache)
    served: tuple[Fields, bytes] | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        key: str,
        status: int,
        reason: bytes,
        fields: Fields,
        request_time: float,
        response_time: float,
        initial_age: float,
        freshness: Freshness,
        vary: tuple[bytes, ...] = (),
        vary_values: tuple[bytes | None, ...] = (),
        tags: tuple[str, ...] = (),
        purged: bool = False,
        path: str = "",
        body_offset: int = 0,
        body_length: int = 0,
        body: bytes | None = None,
        identity: tuple[int, int] = (0, 0),
        pack: tuple[int, int, int] = (0, 0, 0),
        served: tuple[Fields, bytes] | None = None,
    ) -> None:
        self.key = key
        self.status = status
        self.reason = reason
        self.fields = fields
        self.request_time = request_time
        self.response_time = response_time
        self.initial_age = initial_age
        self.freshness = freshness
        self.vary = vary
        self.vary_values = vary_values
        self.tags = tags
        self.purged = purged
        self.path = path
        self.body_offset = body_offset
        self.body_length = body_length
        self.body = body
        self.identity = identity
        self.pack = pack
        self.served = served

    def head_tail(self) -> HeadTail:
        """The part of the entry's head after its numbers and its key's length and string
        (see ``head_bytes``): the same for every entry with these reason, fields, Vary
        and tags, so a miss may reuse one made for another of them."""
        parts: list[bytes] = [self.reason]
        for name, value in self.fields:
            parts.append(name)
            parts.append(value)
        parts += self.vary
        lengths = [len(part) for part in parts]
        for given in self.vary_values:
            if given is None:
                lengths.append(_NONE)
            else:
                lengths.append(len(given))
                parts.append(given)
        for tag in self.tags:
            data = tag.encode("utf-8", "surrogatepass")
            lengths.append(len(data))
            parts.append(data)
        return _lengths(len(lengths)).pack(*lengths), b"".join(parts)

    def head_bytes(self, tail: HeadTail | None = None) -> bytes:
        """The head of the entry's file (see ``_HEAD``): its numbers in one struct, then
        the lengths of its strings, then the strings. JSON took a quarter of a miss's
        own time (a float's repr alone over a microsecond); this is one join. ``tail``:
        ``head_tail()``, if made (for an entry of the same fields)."""
        fresh = self.freshness
        flags = (
            (_MUST_REVALIDATE if fresh.must_revalidate else 0)
            | (_NO_CACHE if fresh.no_cache else 0)
            | (_PURGED if self.purged else 0)
        )
        if tail is None:
            tail = self.head_tail()
        key = self.key.encode("utf-8", "surrogatepass")
        numbers = _HEAD.pack(
            self.status, self.request_time, self.response_time, self.initial_age,
            fresh.lifetime, fresh.stale_while_revalidate, fresh.stale_if_error, flags,
            len(self.fields), len(self.vary), len(self.vary_values), len(self.tags),
        )  # fmt: skip
        # the key's length first of the lengths, its string first of the strings
        return b"".join([numbers, _KEY_LENGTH.pack(len(key)), tail[0], key, tail[1]])


#: an entry's head after its key (see Entry.head_tail): the lengths of its other
#: strings (packed), and those strings
HeadTail = tuple[bytes, bytes]
_KEY_LENGTH: Final = struct.Struct(">I")


#: an entry's head: status, request time, response time, initial age, lifetime,
#: stale-while-revalidate, stale-if-error, flags, and how many fields, Vary names, Vary
#: values (a vary marker has names and no values) and tags follow; then the lengths (4
#: bytes each) of the key (UTF-8), the reason, each field's name and value, each Vary
#: name, each Vary value (``_NONE``: the request had none) and each tag (UTF-8); then
#: those strings, one after the other
_HEAD: Final = struct.Struct(">HddddddBIIII")
_MUST_REVALIDATE: Final = 1
_NO_CACHE: Final = 2
_PURGED: Final = 4
_NONE: Final = 0xFFFFFFFF
#: the lengths' structs, by count (an entry has a handful of fields: few of them)
_LENGTHS: dict[int, struct.Struct] = {}


def _lengths(count: int) -> struct.Struct:
    """The struct of ``count`` lengths."""
    made = _LENGTHS.get(count)
    if made is None:
        made = struct.Struct(f">{count}I")
        if len(_LENGTHS) < 256:
            _LENGTHS[count] = made
    return made


class Generation:
    """A zone's change marks, shared by its workers through a small mapped file: whoever
    removes or replaces an entry's file writes a new value after doing so, and a worker
    trusts what its memory tier holds while the value it saw stays. A second mark moves
    with each purge (before it looks for entries): a worker's queued write that sees it
    move is dropped, so no purge is undone by a write that lands after it, whichever
    worker queued it. (An unsafe request's invalidation does the same key by key: see
    invalidations.py.)"""

    def __init__(self, root: str) -> None:
        path = os.path.join(root, "generation")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < 2 * _GENERATION.size:
                os.ftruncate(fd, 2 * _GENERATION.size)
            self.map = mmap.mmap(fd, 2 * _GENERATION.size)
        finally:
            os.close(fd)
        #: the map's reader (the C helper's when built)
        self.words: Any = words_of(self.map)

    def purges(self) -> int:
        """The purge mark now."""
        mark: int = self.words.u64(_GENERATION.size)
        return mark

    def bump_purges(self) -> None:
        """Say that a purge is about to look for entries."""
        size = _GENERATION.size
        self.map[size : 2 * size] = os.urandom(size)

    def value(self) -> int:
        """The mark now (a memory read, no system call)."""
        mark: int = self.words.u64(0)
        return mark

    def bump(self) -> None:
        """Say that an entry's file was removed or replaced. A random value, not a count:
        two workers bumping at once cannot lose the change (any new value is one), and
        no lock is needed."""
        self.map[: _GENERATION.size] = os.urandom(_GENERATION.size)


class _Broken(Exception):
    """A file that is not a whole entry of this format."""


def _entry_from_head(head: bytes) -> Entry:
    """The entry a head (``Entry.head_bytes``) describes; _Broken if it is not one."""
    if len(head) < _HEAD.size:
        raise _Broken("short head")
    numbers = _HEAD.unpack_from(head)
    status, request_time, response_time, age, lifetime, swr, sie, flags = numbers[:8]
    fields, vary, values, tags = numbers[8:]
    count = 2 + 2 * fields + vary + values + tags
    at = _HEAD.size + 4 * count
    if at > len(head):
        raise _Broken("short head")
    lengths = _lengths(count).unpack_from(head, _HEAD.size)
    strings: list[bytes | None] = []
    for length in lengths:
        if length == _NONE:
            strings.append(None)
            continue
        end = at + length
        if end > len(head):
            raise _Broken("short head")
        strings.append(head[at:end])
        at = end
    if at != len(head):
        raise _Broken("sizes of the head do not add up")
    try:
        key, reason = _text(strings[0]), _given(strings[1])
        pairs = [(_given(strings[i]), _given(strings[i + 1])) for i in range(2, 2 + 2 * fields, 2)]
        first = 2 + 2 * fields
        names = tuple([_given(name) for name in strings[first : first + vary]])
        given = tuple(strings[first + vary : first + vary + values])
        labels = tuple([_text(tag) for tag in strings[first + vary + values :]])
    except (TypeError, UnicodeError) as exc:
        raise _Broken(f"bad head: {exc}") from None
    return Entry(
        key=key, status=status, reason=reason, fields=pairs, request_time=request_time,
        response_time=response_time, initial_age=age,
        freshness=Freshness(
            lifetime, swr, sie, bool(flags & _MUST_REVALIDATE), bool(flags & _NO_CACHE)
        ),
        vary=names, vary_values=given, tags=labels, purged=bool(flags & _PURGED),
    )  # fmt: skip


def _given(data: bytes | None) -> bytes:
    """A string of a head that may not be absent."""
    if data is None:
        raise TypeError("a missing string")
    return data


def _text(data: bytes | None) -> str:
    """A text string of a head (UTF-8, surrogates kept)."""
    return _given(data).decode("utf-8", "surrogatepass")


def _entry_from_record(data: bytes) -> Entry:
    """The entry a pack's record holds, every check done; _Broken when it is not whole."""
    if len(data) < _PREFIX.size + _TRAILER.size:
        raise _Broken("truncated")
    magic, version, head_length = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION or head_length > HEAD_MAX:
        raise _Broken(f"not an entry of version {VERSION}")
    body_length, body_crc, head_crc = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    body_offset = _PREFIX.size + head_length
    if body_offset + body_length + _TRAILER.size != len(data):
        raise _Broken("sizes do not add up")
    head = data[_PREFIX.size : body_offset]
    if zlib.crc32(head) != head_crc:
        raise _Broken("head checksum")
    body = data[body_offset : body_offset + body_length]
    if zlib.crc32(body) != body_crc:
        raise _Broken("body checksum")
    entry = _entry_from_head(head)
    entry.body = body
    entry.body_offset = body_offset
    entry.body_length = body_length
    return entry


def _read_entry(path: str, want_body: bool) -> Entry:
    """The entry in ``path``, every check done; _Broken when it is not a whole one."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        prefix = os.pread(fd, _PREFIX.size, 0)
        if len(prefix) < _PREFIX.size:
            raise _Broken("truncated prefix")
        magic, version, head_length = _PREFIX.unpack(prefix)
        if magic != MAGIC or version != VERSION or head_length > HEAD_MAX:
            raise _Broken(f"not an entry of version {VERSION}")
        if st.st_size < _PREFIX.size + head_length + _TRAILER.size:
            raise _Broken("truncated")
        trailer = os.pread(fd, _TRAILER.size, st.st_size - _TRAILER.size)
        body_length, body_crc, head_crc = _TRAILER.unpack(trailer)
        body_offset = _PREFIX.size + head_length
        if body_offset + body_length + _TRAILER.size != st.st_size:
            raise _Broken("sizes do not add up")
        small = body_length <= SMALL_BODY
        head = os.pread(fd, head_length + (body_length if small else 0), _PREFIX.size)
        if zlib.crc32(head[:head_length]) != head_crc:
            raise _Broken("head checksum")
        entry = _entry_from_head(head[:head_length])
        if small:
            body = head[head_length:]
            if len(body) != body_length or zlib.crc32(body) != body_crc:
                raise _Broken("body checksum")
            entry.body = body
        elif want_body:
            # checked whole before a byte goes out: a corrupt entry must be a miss
            crc, offset, end = 0, body_offset, body_offset + body_length
            while offset < end:
                piece = os.pread(fd, min(COPY_PIECE, end - offset), offset)
                if not piece:
                    raise _Broken("truncated body")
                crc = zlib.crc32(piece, crc)
                offset += len(piece)
            if crc != body_crc:
                raise _Broken("body checksum")
        entry.path = path
        entry.body_offset = body_offset
        entry.body_length = body_length
        entry.identity = (st.st_ino, st.st_mtime_ns)
        return entry
    finally:
        os.close(fd)


_VARY_MARK: Final = "vary"


@dataclass
class _Hot:
    entry: Entry
    touched: float = field(default=0.0)
    #: the zone's generation when the entry was last found to match its file (-1: never)
    generation: int = -1
    #: when that was (time.time())
    checked: float = 0.0


class CacheStore:
    """One worker's view of a zone's entries on disk, with its own memory tier."""

    def __init__(self, zone: CacheZone) -> None:
        self.zone = zone
        self.root = zone.path
        #: the zone's folder with its separator: entries' paths as os.path.join makes them
        self.prefix = os.path.join(self.root, "")
        self.tmp = os.path.join(self.root, "tmp")
        self.locks = os.path.join(self.root, "locks")
        for directory in (self.root, self.tmp, self.locks):
            os.makedirs(directory, exist_ok=True)
        self.hot: OrderedDict[str, _Hot] = OrderedDict()
        #: the same entries, by key, for those with no Vary (their file is the key's own)
        self.hot_keys: dict[str, _Hot] = {}
        self.hot_bytes = 0
        #: key -> digest of the keys asked for lately
        self._digests: dict[str, str] = {}
        #: digest -> its slot tag in the index, for the same keys
        self._tags: dict[str, int] = {}
        #: paths a lookup found no file at (since then, only this worker's writes made one
        #: there, and they take it out): a packed miss need not look again
        self.absent: set[str] = set()
        self.generation = Generation(self.root)
        self.invalidations = Invalidations(self.root)
        #: path -> the writer of an entry queued for its batch's write, and the entry
        self.pending: dict[str, tuple[EntryWriter, Entry]] = {}
        self.pending_bytes = 0
        #: packable entries queued in this turn of the loop (see EntryWriter.commit_batched)
        self.batch: list[EntryWriter] = []
        self.batch_handle: Handle | None = None
        #: called once the batch is written (the answers that wait for it)
        self.after_batch: list[Callable[[], None]] = []
        self.serial = itertools.count(1)
        #: path -> (inode, size) of large entries whose body checksum held
        self.verified: dict[str, tuple[int, int]] = {}
        #: this worker's fields of the zone's counters (see counters.py): the entries
        #: and bytes its writes and removals add
        self.usage: memoryview | None = None
        #: the small entries kept in packs (see packs.py)
        self.index = PackIndex(self.root, zone.max_size)
        self.readers = PackReaders(self.root)
        self.packer = PackWriter(self.root, zone.max_size)
        self.fill_locks = FillLocks(self.locks)

    def account(self, entries: int, size: int) -> None:
        """Entries and bytes this worker added to the zone (negative: removed)."""
        usage = self.usage
        if usage is not None:
            usage[ADDED_ENTRIES] += entries
            usage[ADDED_BYTES] += size

    # names ------------------------------------------------------------------

    def digest(self, key: str) -> str:
        """The file name of a primary key."""
        # A miss asks it for the same key three times (lookup, fill lock, writer), with
        # other requests' lookups in between while its upstream answers: the recent ones
        # are remembered (a dict's get and set are each one step: a purge's thread may ask
        # too), and the index's tag with them, from the same bytes (see tag_of).
        known = self._digests.get(key)
        if known is not None:
            return known
        raw = _sha256(key.encode("utf-8", "surrogateescape")).digest()
        digest = raw.hex()
        if len(self._digests) >= RECENT_DIGESTS:
            self._digests.clear()
            self._tags.clear()
        self._digests[key] = digest
        self._tags[digest] = slot_tag_of(raw)
        return digest

    def tag_of(self, digest: str) -> int:
        """The index's tag of a digest (a miss asks it twice: its lookup, its entry's
        slot; parsing the hex took about half a microsecond each time)."""
        tag = self._tags.get(digest)
        if tag is None:
            tag = slot_tag(digest)
            if len(self._tags) >= RECENT_DIGESTS:
                self._tags.clear()
            self._tags[digest] = tag
        return tag

    def path_of(self, digest: str, variant: tuple[bytes | None, ...] | None = None) -> str:
        """The file of a key's entry (or of one of its variants)."""
        name = digest
        if variant is not None:
            blob = b"\0".join([b"\1" if v is None else b"\2" + v for v in variant])
            name += "-" + hashlib.sha256(blob).hexdigest()[:32]
        # os.path.join's own: posixpath's join is Python code, a few microseconds a miss
        return f"{self.prefix}{digest[:2]}/{name}"

    # lookup -----------------------------------------------------------------

    def lookup(self, key: str, request: Fields, now: float) -> Entry | None:
        """The entry stored for ``key`` whose secondary key matches ``request``; None
        for a miss (a missing, broken or older-format file is one)."""
        hot = self.hot_keys.get(key)
        if (
            hot is not None
            and hot.generation == self.generation.value()
            and 0.0 <= now - hot.checked < RECHECK_EVERY
        ):
            # nothing was removed or replaced in the zone since the entry matched its file
            kept = hot.entry
            self.hot.move_to_end(kept.path)
            if now - hot.touched >= TOUCH_EVERY:
                hot.touched = now
                self._touch(kept)
            return kept
        digest = self.digest(key)
        path = self.path_of(digest)
        pending = self.pending.get(path)
        entry: Entry | None = None
        if pending is not None and not pending[0].outdated(self.invalidations.horizon()):
            entry = pending[1]
        else:
            tag = self.tag_of(digest)
            found = self.index.find(tag)
            if found is None:
                # The index names every entry of the zone, a file's too (by a hint, see
                # packs.py): no slot, nothing to look for on disk. A stat per miss cost
                # it about 3 us.
                if hot is not None:
                    self._forget(path)
                if len(self.absent) >= ABSENT_PATHS:
                    self.absent.clear()
                self.absent.add(path)
                return None
            if found[1] != FILE_HINT:
                entry = self._load_packed(key, tag, found, path, now)
            if entry is None:
                entry = self._load(path, now)
        if entry is None:
            return None
        if entry.status == 0:  # a vary marker: the variant's own file
            path = self.path_of(digest, vary_values(entry.vary, request))
            entry = self._load(path, now)
            if entry is None:
                return None
        if entry.key != key or vary_values(entry.vary, request) != entry.vary_values:
            return None
        return entry

    def _load_packed(
        self, key: str, tag: int, found: tuple[int, int, int, int], path: str, now: float
    ) -> Entry | None:
        """``key``'s entry from the pack record the index ``found`` for its ``tag`` (None:
        not there, or another key's: look for a file)."""
        slot, pack, offset, length = found
        generation = self.generation.value()
        hot = self.hot.get(path)
        if hot is not None and hot.entry.pack == (pack, offset, length):
            # the same record as in memory: still there unless a sweep took its pack
            # (a sweep moves the generation)
            if hot.generation == generation or os.path.exists(pack_path(self.root, pack)):
                self.hot.move_to_end(path)
                hot.generation, hot.checked = generation, now
                if now - hot.touched >= TOUCH_EVERY:
                    hot.touched = now
                    self.index.touch(tag, now)
                return hot.entry
        data = self.readers.read(pack, offset, length)
        try:
            if data is None:
                raise _Broken("its pack is gone")
            entry = _entry_from_record(data)
        except _Broken:
            if self.index.clear(slot, tag, pack, offset):  # a miss for the next reader too
                self.account(-1, -length)
                self.generation.bump()
            return None
        if entry.key != key:
            return None  # another key with the same tag (or a slot being rewritten)
        entry.path = path
        entry.pack = (pack, offset, length)
        entry.identity = (pack, offset)
        self.index.touch(tag, now)
        self._remember(path, entry, now, generation)
        return entry

    def _load(self, path: str, now: float) -> Entry | None:
        pending = self.pending.get(path)
        if pending is not None and not pending[0].outdated(self.invalidations.horizon()):
            return pending[1]  # whole in memory; its file is being written
        hot = self.hot.get(path)
        # read before the stat: a change made after it moves the generation again
        generation = self.generation.value()
        try:
            st = _stat(path)
        except OSError:
            st = None
        if st is None:
            if hot is not None:
                self._forget(path)
            if len(self.absent) >= ABSENT_PATHS:
                self.absent.clear()
            self.absent.add(path)
            return None
        if hot is not None and hot.entry.identity == (st.st_ino, st.st_mtime_ns):
            self.hot.move_to_end(path)
            hot.generation, hot.checked = generation, now
            if now - hot.touched >= TOUCH_EVERY:
                hot.touched = now
                self._touch(hot.entry)
            return hot.entry
        # A large body's checksum is checked once per file (inode) and worker: entries are
        # only ever replaced by a rename, so a file that was whole stays whole.
        identity = (st.st_ino, st.st_size)
        verified = self.verified.get(path) == identity
        try:
            entry = _read_entry(path, want_body=not verified)
            if verified and entry.identity[0] != st.st_ino:  # replaced meanwhile
                entry = _read_entry(path, want_body=True)
        except FileNotFoundError:
            return None
        except (OSError, _Broken):
            self.remove_file(path)  # broken: a miss now and for the next reader
            return None
        if self.zone.inactive and time.time() - st.st_mtime > self.zone.inactive:
            self.remove_file(path, marker=entry.status == 0)
            return None
        if entry.body is None:
            if len(self.verified) >= VERIFIED_FILES:
                self.verified.clear()
            size = entry.body_offset + entry.body_length + _TRAILER.size
            self.verified[path] = (entry.identity[0], size)
        self._touch(entry)
        self._remember(path, entry, now, generation)
        return entry

    def _touch(self, entry: Entry) -> None:
        if entry.pack[0]:  # a packed entry's recency is in its slot
            self.index.touch(slot_tag(self.digest(entry.key)), time.time())
            return
        # The mtime is the entry's recency; the identity follows it, so the memory
        # tier does not take its own touch for a new version.
        with contextlib.suppress(OSError):
            os.utime(entry.path)
            st = os.stat(entry.path)
            entry.identity = (st.st_ino, st.st_mtime_ns)

    def _remember(self, path: str, entry: Entry, now: float, generation: int = -1) -> None:
        """Keep ``entry`` (read from ``path`` when the zone's generation was
        ``generation``; -1: not known, checked on its next use) in the memory tier.

        A miss's new entry is not kept (nginx keeps none): it goes in on its second use,
        when a lookup reads it back. Most misses are never asked for again, and keeping
        each one cost a miss about a seventh of its time: the tier's slot, the eviction
        of an older entry once the tier is full, its pages, and the cycle collector's
        walks over the entries that pile up."""
        if entry.body is None or self.zone.memory <= 0:
            return
        self._forget(path)
        size = len(entry.body) + 512
        if size > self.zone.memory:
            return
        hot = _Hot(entry, now, generation, now)
        self.hot[path] = hot
        if not entry.vary:  # neither a variant nor a vary marker: the key's own file
            self.hot_keys[entry.key] = hot
        self.hot_bytes += size
        while self.hot_bytes > self.zone.memory and self.hot:
            _, old = self.hot.popitem(last=False)
            self._dropped(old)

    def _forget(self, path: str) -> None:
        hot = self.hot.pop(path, None)
        if hot is not None:
            self._dropped(hot)

    def _dropped(self, hot: _Hot) -> None:
        self.hot_bytes -= len(hot.entry.body or b"") + 512
        if self.hot_keys.get(hot.entry.key) is hot:
            del self.hot_keys[hot.entry.key]

    # writing ----------------------------------------------------------------

    def writer(self, entry: Entry, head: bytes = b"") -> EntryWriter:
        """A writer of ``entry``'s file: its body goes in with ``write``, and ``commit``
        puts it in place. ``head``: ``entry.head_bytes()``, if made."""
        digest = self.digest(entry.key)
        variant = entry.vary_values if entry.vary else None
        final = self.path_of(digest, variant)
        # its temporary file is named when it needs one (a packed entry has none)
        return EntryWriter(self, entry, "", final, digest, head)

    def _temp_for(self, final: str) -> str:
        """A temporary name next to ``final`` (the sweep knows them by their dot)."""
        # next() of a count is one step, safe when a purge's thread names one too
        serial = next(self.serial)
        return os.path.join(os.path.dirname(final), f"{TEMP_PREFIX}{os.getpid()}.{serial}")

    def update_head(
        self, entry: Entry, fields: Fields, changes: dict[str, Any], quiet: bool = False
    ) -> Entry:
        """``entry`` with new fields and times (a 304 revalidated it), rewritten in place
        (a new file renamed over the old one; the body is copied in the kernel).
        ``quiet``: from a thread other than the loop's, leaving the memory tier and the
        writer's queue alone (the generation tells the memory tier)."""
        updated = replace(entry, fields=fields, **changes)
        temp = self._temp_for(entry.path)
        writer = EntryWriter(self, updated, temp, entry.path, self.digest(entry.key))
        if entry.body is not None:
            writer.write(entry.body)
        else:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                writer.abort()
                return updated
            try:
                offset, end = entry.body_offset, entry.body_offset + entry.body_length
                while offset < end:
                    piece = os.pread(fd, min(COPY_PIECE, end - offset), offset)
                    if not piece or not writer.write(piece):
                        writer.abort()
                        return updated
                    offset += len(piece)
            finally:
                os.close(fd)
        if quiet:
            writer._files()
            return updated
        stored = writer.commit()
        return stored if stored is not None else updated

    # removal ----------------------------------------------------------------

    def remove(self, key: str, invalidation: bool = False) -> int:
        """Remove every entry of ``key`` (its variants too; ``invalidation``: for an unsafe
        method, not a purge); how many there were."""
        digest = self.digest(key)
        directory = os.path.join(self.root, digest[:2])
        if invalidation:
            # before looking: a fill of the key under way is not stored after this
            self.invalidations.mark(self.tag_of(digest), time.time())
        else:
            # A purge: other workers' queued writes go too. Not for the invalidation an
            # unsafe method makes (RFC 9111 4.4): those come with every POST, and would
            # keep the whole zone's queued writes from ever landing.
            self.generation.bump_purges()
        count = self._cancel_queued(lambda entry: entry.key == key)
        self._forget(self.path_of(digest))
        count += self.unpack(digest)
        try:
            names = [n for n in os.listdir(directory) if n.startswith(digest)]
        except OSError:
            return count
        for name in names:
            path = os.path.join(directory, name)
            is_marker = name == digest and self._is_marker(path)
            if self.remove_file(path, marker=is_marker) and not is_marker:
                count += 1
        return count

    def unpack(self, digest: str) -> int:
        """Take the key of SHA-256 ``digest`` out of the index; 1 if a packed entry of it
        was in, else 0 (its file's hint goes too, not counted: the file is where it is
        removed)."""
        tag = slot_tag(digest)
        found = self.index.find(tag)
        if found is None:
            return 0
        slot, pack, offset, length = found
        if not self.index.clear(slot, tag, pack, offset) or pack == FILE_HINT:
            return 0
        self.account(-1, -length)
        self.generation.bump()
        return 1

    def hint_file(self, digest: str) -> None:
        """Name the file of the key of SHA-256 ``digest`` in the index (a slot with pack
        ``FILE_HINT``): a lookup looks for a file only where a slot says so. Should the
        bucket be full, the least recently used slot goes: a packed entry (counted out), or
        another file's hint (that file is found no more: a miss, swept in time)."""
        kind, old_length = self.index.put(slot_tag(digest), FILE_HINT, 0, 0, time.time())
        if kind == 2 and old_length:
            self.account(-1, -old_length)
            self.generation.bump()

    def _packed(
        self,
        key: str,
        slot: int,
        tag: int,
        pack: int,
        offset: int,
        length: int,
        readers: PackReaders | None = None,
    ) -> Entry | None:
        """The entry in a pack's record (``key``: only if it is that key's; "": any), read
        through ``readers`` (default: the loop's own)."""
        data = (readers or self.readers).read(pack, offset, length)
        if data is None:
            return None
        try:
            entry = _entry_from_record(data)
        except _Broken:
            return None
        if key and entry.key != key:
            return None
        entry.path = self.path_of(self.digest(entry.key))
        entry.pack = (pack, offset, length)
        entry.identity = (pack, offset)
        return entry

    def _cancel_queued(self, matches: Callable[[Entry], bool], soft: bool = False) -> int:
        """Drop the queued entries ``matches`` picks (a purge must not see them written
        after it), or with ``soft`` write them now marked stale; how many."""
        chosen = [(path, entry) for path, (_, entry) in self.pending.items() if matches(entry)]
        for path, entry in chosen:
            self.cancel_pending(path)
            if soft:
                self.update_head(entry, entry.fields, {"purged": True})
        return len(chosen)

    def mark_stale(self, key: str) -> int:
        """Soft purge of ``key``: its entries (each variant) are stale from now on."""
        digest = self.digest(key)
        directory = os.path.join(self.root, digest[:2])
        # not written yet: written now, marked stale (and then counted below)
        self.generation.bump_purges()
        self._cancel_queued(lambda entry: entry.key == key, soft=True)
        count = 0
        try:
            names = [n for n in os.listdir(directory) if n.startswith(digest)]
        except OSError:
            names = []
        # listed first: the packed entry marked stale becomes a file, not to count twice
        tag = slot_tag(digest)
        found = self.index.find(tag)
        if found is not None:
            slot, pack, offset, length = found
            packed = self._packed(key, slot, tag, pack, offset, length)
            if packed is not None:
                if not packed.purged:
                    self.update_head(packed, packed.fields, {"purged": True})
                count += 1
        for name in names:
            try:
                entry = _read_entry(os.path.join(directory, name), want_body=False)
            except (OSError, _Broken):
                continue
            if entry.status != 0 and entry.key == key:
                if not entry.purged:
                    self.update_head(entry, entry.fields, {"purged": True})
                count += 1
        return count

    def purge(
        self, key_prefix: str | None = None, tag: str | None = None, soft: bool = False
    ) -> int:
        """Purge every entry whose key starts with ``key_prefix``, or that carries ``tag``
        (the upstream's Surrogate-Key or Cache-Tag); ``soft`` marks them stale instead
        of removing them (``use_stale`` may still serve them). How many there were.
        (``purge_queued`` then ``purge_walk``, the latter perhaps on a thread.)"""
        return self.purge_queued(key_prefix, tag, soft) + self.purge_walk(key_prefix, tag, soft)

    def purge_queued(self, key_prefix: str | None, tag: str | None, soft: bool) -> int:
        """A purge's first step, on the worker's loop: the entries queued for their batch's
        write that it matches are dropped (soft: written now marked stale, and counted
        by the walk); how many were dropped. Any write queued later sees the purge mark
        moved and is dropped too."""
        self.generation.bump_purges()
        queued = self._cancel_queued(
            lambda entry: (
                (key_prefix is None or entry.key.startswith(key_prefix))
                and (tag is None or tag in entry.tags)
            ),
            soft,
        )
        return 0 if soft else queued

    def purge_walk(self, key_prefix: str | None, tag: str | None, soft: bool) -> int:
        """A purge's walk of the zone's files and index: the entries it matches removed
        (soft: rewritten marked stale); how many. Safe on a thread while the loop goes on:
        it touches neither the memory tier nor the writer's queue (every removal moves
        the generation, so a memory tier looks again), reads packs through descriptors of
        its own, and lets the loop run every ``WALK_PIECE`` entries."""
        readers = PackReaders(self.root)
        count = seen = 0
        try:
            for directory in os.scandir(self.root):
                if not directory.is_dir() or len(directory.name) != 2:
                    continue
                for item in os.scandir(directory.path):
                    seen += 1
                    if seen % WALK_PIECE == 0:
                        time.sleep(0)  # the loop's turn
                    if item.name.startswith(TEMP_PREFIX):
                        continue  # not in place yet
                    try:
                        entry = _read_entry(item.path, want_body=False)
                    except (OSError, _Broken):
                        continue
                    if key_prefix is not None and not entry.key.startswith(key_prefix):
                        continue
                    if tag is not None and tag not in entry.tags:
                        continue
                    if entry.status == 0:  # a vary marker
                        if not soft:
                            self._unlink_entry(item.path, marker=True)
                        continue
                    if soft:
                        if not entry.purged:
                            self.update_head(entry, entry.fields, {"purged": True}, quiet=True)
                        count += 1
                    elif self._unlink_entry(item.path):
                        count += 1
            # after the files: a packed entry marked stale becomes one, not to count twice
            for slot, marker, pack, offset, length, _ in list(self.index.scan()):
                seen += 1
                if seen % WALK_PIECE == 0:
                    time.sleep(0)
                if pack == FILE_HINT:
                    continue  # a file's: walked above
                packed = self._packed("", slot, marker, pack, offset, length, readers)
                if packed is None:
                    continue
                if key_prefix is not None and not packed.key.startswith(key_prefix):
                    continue
                if tag is not None and tag not in packed.tags:
                    continue
                if soft:
                    if not packed.purged:
                        self.update_head(packed, packed.fields, {"purged": True}, quiet=True)
                    count += 1
                elif self.index.clear(slot, marker, pack, offset):
                    self.account(-1, -length)
                    self.generation.bump()
                    count += 1
        finally:
            readers.close()
        return count

    def _unlink_entry(self, path: str, marker: bool = False) -> bool:
        """Remove an entry's file, from any thread (the memory tier is told through the
        generation); whether it was there."""
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return False
        if not marker:
            self.account(-1, -size)
        self.generation.bump()
        return True

    def _is_marker(self, path: str) -> bool:
        try:
            return _read_entry(path, want_body=False).status == 0
        except (OSError, _Broken):
            return False

    def remove_file(self, path: str, marker: bool = False) -> bool:
        """Remove one entry file, or the entry queued to be written there (``marker``: a
        vary marker, not counted as an entry); whether it was there."""
        self._forget(path)
        cancelled = self.cancel_pending(path)
        name = os.path.basename(path)
        if not marker and len(name) == DIGEST_HEX and self.unpack(name):
            cancelled = True  # the key's packed entry (see packs.py)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return cancelled
        if not marker:
            self.account(-1, -size)
        self.generation.bump()
        return True

    def cancel_pending(self, path: str) -> bool:
        """Drop the entry queued to be written to ``path``; whether there was one."""
        pending = self.pending.get(path)
        if pending is None:
            return False
        self._unqueue(pending[0])
        pending[0].cancel()
        return True

    def _unqueue(self, writer: EntryWriter) -> None:
        if self.pending.get(writer.final, (None,))[0] is writer:
            del self.pending[writer.final]
            self.pending_bytes -= writer.length

    def flush_batch(self) -> None:
        """Write the entries batched in this turn of the loop: their records in one
        append to the worker's pack, then each named in the index, and
        its fill lock let go. One whose key was purged or answered anew meanwhile is left
        out (a purge by any worker moves the zone's purge mark)."""
        handle, self.batch_handle = self.batch_handle, None
        if handle is not None:
            handle.cancel()  # when called before its turn (close, a full queue)
        batch, self.batch = self.batch, []
        purges = self.generation.purges()
        horizon = self.invalidations.horizon()
        kept: list[EntryWriter] = []
        #: the records' parts, joined once (see _record_parts), and each record's length
        parts: list[bytes] = []
        lengths: list[int] = []
        for writer in batch:
            pending = self.pending.get(writer.final)
            if pending is not None and pending[0] is writer:
                del self.pending[writer.final]
                self.pending_bytes -= writer.length
                if (
                    not writer.cancelled
                    and writer.purge_mark == purges
                    and not writer.outdated(horizon)
                ):
                    pieces = writer.pieces
                    if pieces is not None:
                        lengths.append(_record_parts(parts, writer.head, pieces, writer))
                        kept.append(writer)
                        continue
            writer.pieces = None
        try:
            if kept:
                # one record is a whole entry: a crash that cuts the write leaves a tail
                # the index never names; the records before it are whole
                pack, offset = self.packer.append(parts[0] if len(parts) == 1 else b"".join(parts))
                now = time.time()
                for at, writer in enumerate(kept):
                    length = lengths[at]
                    writer._packed_at(pack, offset, length, now, queued=True)
                    offset += length
                if self.generation.purges() != purges:
                    # a purge began while they were put in place, perhaps after its walk
                    # passed the index: they go (one that began after this finds them)
                    for writer in kept:
                        self.unpack(writer.digest)
                        self._forget(writer.final)
                elif self.invalidations.horizon() != horizon:
                    # so did an invalidation, perhaps of one of their keys
                    horizon = self.invalidations.horizon()
                    for writer in kept:
                        if writer.outdated(horizon):
                            self.unpack(writer.digest)
                            self._forget(writer.final)
        except OSError:
            for writer in kept:
                writer.pieces = None
        finally:
            for writer in batch:
                lock, writer.lock = writer.lock, None
                if lock is not None:
                    lock.release()  # in place (or not to be): the waiters may look again
            callbacks, self.after_batch = self.after_batch, []
            failed: Exception | None = None
            for callback in callbacks:
                try:
                    callback()
                except Exception as exc:  # the others' answers go on all the same
                    failed = failed or exc
            if failed is not None:
                raise failed

    def close(self) -> None:
        """Write the batch and let go of the zone's files."""
        if self.batch:
            self.flush_batch()
        self.packer.close()
        self.readers.close()
        self.fill_locks.close()

    # fill locks ---------------------------------------------------------------

    def try_lock(self, key: str) -> KeyLock | None:
        """The fill lock of ``key`` if no other request (of any worker) holds it."""
        return self.fill_locks.try_lock(self.digest(key))

    # sweeping -----------------------------------------------------------------

    def sweep(self) -> tuple[int, int]:
        """Drop entries unused for ``inactive``, then the least recently used past
        ``max_size``, and temporary files left by a dead writer; one worker at a time
        sweeps a zone. (entries, bytes) left, vary markers not counted; (-1, -1) when
        another worker sweeps. All at once: the worker's own sweep goes piece by piece
        (``sweep_steps``)."""
        result = (-1, -1)
        for step in self.sweep_steps():
            if step is not None:
                result = step
        return result

    def sweep_steps(self) -> Generator[tuple[int, int] | None, None, None]:
        """The sweep (see ``sweep``) in pieces, for the worker's loop to run one piece a
        turn: None after each piece (an entries' folder, a slice of ``SWEEP_SLICE`` slots
        of the index), then (entries, bytes) at the end. Walking a zone whole took one
        turn 70-90 ms at 100,000 entries (the index's every slot, each folder), on a
        thread that held the interpreter meanwhile. What changes between two pieces
        (an entry stored or removed) is as a change during the walk was before: counted
        by the next sweep. Closing the generator lets the zone's sweep lock go."""
        lock = os.open(os.path.join(self.root, "sweep.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield (-1, -1)
                return
            now = time.time()
            removed = False
            files: list[tuple[float, int, str]] = []
            folders = [d.path for d in os.scandir(self.root) if d.is_dir() and len(d.name) == 2]
            for folder in folders:
                try:
                    items = list(os.scandir(folder))
                except OSError:
                    continue  # removed meanwhile
                for item in items:
                    try:
                        st = item.stat()
                    except OSError:
                        continue
                    if item.name.startswith(TEMP_PREFIX):
                        if now - st.st_mtime > 3600:  # left by a writer that died
                            _unlink(item.path)
                        continue
                    if now - st.st_mtime > self.zone.inactive:
                        _unlink(item.path)
                        removed = True
                    else:
                        files.append((st.st_mtime, st.st_size, item.path))
                yield None
            for item in os.scandir(self.tmp):  # where earlier versions wrote
                with contextlib.suppress(OSError):
                    if now - item.stat().st_mtime > 3600:
                        os.unlink(item.path)
            # the packs: their entries, bytes and last use, from the index a slice at a time
            found = self._pack_files()
            live: dict[int, tuple[float, int, int]] = {}
            missing: dict[int, bool] = {}
            gone = False
            for first in range(0, self.index.slots, SWEEP_SLICE):
                for slot, tag, pack, offset, length, used in self.index.scan(
                    first, first + SWEEP_SLICE
                ):
                    if pack == FILE_HINT:
                        continue  # a file's hint (a stale one costs a lookup a stat)
                    if pack not in found:
                        # its pack was removed (a miss), or made since the folder was
                        # listed (a worker's first write): looked at again before its
                        # slots are cleared
                        if pack not in missing:
                            missing[pack] = not os.path.exists(pack_path(self.root, pack))
                        if missing[pack] and self.index.clear(slot, tag, pack, offset):
                            gone = True
                        continue
                    last, count, size = live.get(pack, (0.0, 0, 0))
                    live[pack] = (max(last, float(used)), count + 1, size + length)
                yield None
            packs: dict[int, tuple[float, int, int, int]] = {}
            dropped: set[int] = set()
            for pack, (mtime, file_size) in found.items():
                last, count, size = live.get(pack, (0.0, 0, 0))
                last = max(last, mtime)
                if now - last > self.zone.inactive or (not count and now - mtime > TOUCH_EVERY):
                    dropped.add(pack)  # unused for inactive; or old, and no entry in it
                else:
                    packs[pack] = (last, file_size, count, size)
            total = sum(size for _, size, _ in files) + sum(p[1] for p in packs.values())
            # files and packs in one order of recency: the least recently used go first
            order: list[tuple[float, int, str, int]] = [(m, z, path, 0) for m, z, path in files]
            order += [(used, size, "", pack) for pack, (used, size, _, _) in packs.items()]
            order.sort()
            at = 0
            while at < len(order) and total > self.zone.max_size:
                _, size, path, pack = order[at]
                at += 1
                if pack:
                    dropped.add(pack)
                else:
                    _unlink(path)
                total -= size
                removed = True
            files = [(m, z, path) for m, z, path, pack in order[at:] if not pack]
            entries, size = _entries_only(files)
            for pack, (_, _, count, length) in packs.items():
                if pack not in dropped:
                    entries += count
                    size += length
            if dropped:
                for pack in dropped:
                    self.readers.removed.append(pack)
                    _unlink(pack_path(self.root, pack))
                # their slots cleared, a slice at a time (until then a lookup that reads
                # one finds its pack gone: a miss, and clears it)
                for first in range(0, self.index.slots, SWEEP_SLICE):
                    for slot, tag, pack, offset, _, _ in self.index.scan(
                        first, first + SWEEP_SLICE
                    ):
                        if pack in dropped:
                            self.index.clear(slot, tag, pack, offset)
                    yield None
            if removed or dropped or gone:
                self.generation.bump()
            yield (entries, size)
        finally:
            os.close(lock)

    def _pack_files(self) -> dict[int, tuple[float, int]]:
        """The zone's pack files by id: (mtime, size)."""
        folder = os.path.join(self.root, "packs")
        found: dict[int, tuple[float, int]] = {}
        try:
            with os.scandir(folder) as items:
                for item in items:
                    pack = pack_id(item.name)
                    if pack:
                        with contextlib.suppress(OSError):
                            st = item.stat()
                            found[pack] = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            pass
        return found


def _entries_only(files: list[tuple[float, int, str]]) -> tuple[int, int]:
    """(count, bytes) of ``files`` (mtime, size, path) without the vary markers: a
    marker is named by its key's digest alone, its variants by the digest and a dash."""
    names = [os.path.basename(path) for _, _, path in files]
    varying = {name.partition("-")[0] for name in names if "-" in name}
    entries = size = 0
    for (_, length, _), name in zip(files, names, strict=True):
        if "-" not in name and name in varying:
            continue
        entries += 1
        size += length
    return entries, size


def _stat(path: str) -> os.stat_result | None:
    """The file's status; None when it is not there, without raising: an OSError is made
    with its message (strerror), and a miss asks for a file that is not there on every
    request (measured: most of a miss's wall time in a worker went to that message)."""
    if not os.access(path, os.F_OK):
        return None
    return os.stat(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class EntryWriter:
    """One entry being written: a small body is held in memory and its file written
    whole at the end (one open, one write); a
    larger one goes to its temporary file as it comes. Either way the file is renamed
    into place only once whole."""

    def __init__(
        self, store: CacheStore, entry: Entry, temp: str, final: str, digest: str, head: bytes = b""
    ) -> None:
        self.store = store
        self.entry = entry
        self._temp = temp
        self.final = final
        self.digest = digest
        self.head = head or entry.head_bytes()
        self.length = 0
        self.crc = 0
        self.fd: int | None = None
        #: the body while it is small (None once it went to the file, or was dropped)
        self.pieces: list[bytes] | None = []
        self.marker = b""
        self.marker_temp = ""
        #: a queued write that a purge or a newer entry made moot
        self.cancelled = False
        #: the fill lock let go once the batch holding the entry is written
        self.lock: KeyLock | None = None
        #: the zone's purge mark when the entry was queued (None: not queued)
        self.purge_mark: int | None = None
        if entry.vary:
            marker = Entry(
                key=entry.key, status=0, reason=b"", fields=[], request_time=0.0,
                response_time=0.0, initial_age=0.0, freshness=Freshness(0.0), vary=entry.vary,
            )  # fmt: skip
            self.marker = _file_bytes(marker.head_bytes(), [], 0, 0)
            self.marker_temp = self.temp + ".m"

    @property
    def temp(self) -> str:
        """The temporary name its file is written under (named at first use)."""
        if not self._temp:
            self._temp = self.store._temp_for(self.final)
        return self._temp

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.fd is not None:
            written = os.write(self.fd, view)
            view = view[written:]

    def write(self, data: bytes) -> bool:
        """A piece of the body; False (and the entry dropped) past max_object_size or on
        a write error."""
        if self.fd is None and self.pieces is None:
            return False
        self.length += len(data)
        if self.length > self.store.zone.max_object_size:
            self.abort()
            return False
        self.crc = zlib.crc32(data, self.crc)
        pieces = self.pieces
        if pieces is not None and self.length <= SMALL_BODY:
            pieces.append(data)
            return True
        try:
            if pieces is not None:  # grown past SMALL_BODY: to the file from now on
                self.pieces = None
                os.makedirs(os.path.dirname(self.temp), exist_ok=True)
                self.fd = os.open(
                    self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
                self._write_all(_PREFIX.pack(MAGIC, VERSION, len(self.head)) + self.head)
                for piece in pieces:
                    self._write_all(piece)
            self._write_all(data)
        except OSError:
            self.abort()
            return False
        return True

    def abort(self) -> None:
        """Drop the entry being written."""
        self.pieces = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.temp)

    def _files(self) -> tuple[int, int] | None:
        """Write and rename the files; the (inode, mtime_ns) of the entry's file, None if
        it failed."""
        try:
            if self.pieces is not None:
                data = _file_bytes(self.head, self.pieces, self.length, self.crc)
                try:
                    _write_file(self.temp, data)
                except FileNotFoundError:  # the key's folder is not there yet
                    os.makedirs(os.path.dirname(self.final), exist_ok=True)
                    _write_file(self.temp, data)
            elif self.fd is not None:
                self._write_all(_TRAILER.pack(self.length, self.crc, zlib.crc32(self.head)))
                os.close(self.fd)
                self.fd = None
            else:
                return None
            if self.marker:
                _write_file(self.marker_temp, self.marker)
            mark = self.purge_mark
            generation = self.store.generation
            if self.cancelled or (mark is not None and generation.purges() != mark):
                raise OSError("cancelled")  # purged or replaced while queued
            invalidations = self.store.invalidations
            if self.outdated(invalidations.horizon()):
                raise OSError("cancelled")  # its key was invalidated since its fill began
            # the key's packed version, if any, would hide the file: it goes
            self.store.unpack(self.digest)
            # Another worker's memory tier may hold what these renames replace: it is
            # told through the generation (a new entry replaces nothing, tells nobody).
            try:
                old_size = os.stat(self.final).st_size  # a new version of the entry
            except FileNotFoundError:
                old_size = -1
            replaced = old_size >= 0
            if self.marker:
                primary = self.store.path_of(self.digest)
                replaced = replaced or os.path.exists(primary)
                self.store.absent.discard(primary)
                os.rename(self.marker_temp, primary)
            self.store.absent.discard(self.final)
            os.rename(self.temp, self.final)
            # named in the index, so that a lookup knows to look for a file
            self.store.hint_file(self.digest)
            st = os.stat(self.final)
            if (mark is not None and generation.purges() != mark) or self.outdated(
                invalidations.horizon()
            ):
                # A purge (or its key's invalidation) began while it was being put in
                # place, perhaps after its walk passed this folder: the entry goes (a
                # purge that began after this check finds the file in its walk).
                _unlink(self.final)
                generation.bump()
                if old_size >= 0:
                    self.store.account(-1, -old_size)
                return None
            if replaced:
                generation.bump()
        except OSError:
            self.abort()
            for path in (self._temp, self.marker_temp):
                if path:
                    _unlink(path)
            return None
        if old_size < 0:
            self.store.account(1, st.st_size)
        else:
            self.store.account(0, st.st_size - old_size)
        return (st.st_ino, st.st_mtime_ns)

    def _stored(self, identity: tuple[int, int] | None, remember: bool = True) -> Entry | None:
        """After ``_files``: the entry as stored (kept in memory when small and
        ``remember``)."""
        if identity is None:
            return None
        store = self.store
        store._forget(self.final)
        if self.marker:
            store._forget(store.path_of(self.digest))
        body = b"".join(self.pieces) if self.pieces is not None else None
        stored = replace(
            self.entry,
            path=self.final,
            body_offset=_PREFIX.size + len(self.head),
            body_length=self.length,
            body=body,
            identity=identity,
        )
        if body is not None and remember:
            store._remember(self.final, stored, time.time())
        return stored

    def packable(self) -> bool:
        """Whether the entry may go to the worker's pack: small (whole in memory) and not
        varying (a vary marker and its variants are files)."""
        return self.pieces is not None and not self.marker and not self.entry.vary

    def commit_packed(self) -> Entry | None:
        """Append the entry to the worker's pack and name it in the zone's index, now (one
        write, no file made); the entry as stored, None if it failed. Only when
        ``packable()``."""
        store = self.store
        pieces = self.pieces
        if pieces is None:
            return None
        store.cancel_pending(self.final)  # an older answer queued must not follow it
        if self.outdated(store.invalidations.horizon()):
            self.pieces = None
            return None
        record = _file_bytes(self.head, pieces, self.length, self.crc)
        try:
            pack, offset = store.packer.append(record)
        except OSError:
            self.pieces = None
            return None
        stored = self._packed_at(pack, offset, len(record), time.time())
        if stored is not None and self.outdated(store.invalidations.horizon()):
            # invalidated while it was put in place: it goes (see flush_batch)
            store.unpack(self.digest)
            return None
        return stored

    def _packed_at(
        self, pack: int, offset: int, length: int, now: float, queued: bool = False
    ) -> Entry | None:
        """After its record went to ``pack`` at ``offset``: the entry named in the index
        (an older file of its key removed); None if that failed. ``queued``: it was
        batched (its key left the memory tier then, and a pending entry keeps it out)."""
        store = self.store
        pieces = self.pieces
        if pieces is None:
            return None
        try:
            # an older version in a file of its own would come back once the pack is
            # swept: it goes. Not looked for again when this miss's lookup found none (a
            # file another worker made meanwhile, without the fill lock, would come back
            # then: a response of the origin's all the same, as old as this one).
            if self.final in store.absent:
                store.absent.discard(self.final)
            elif _stat(self.final) is not None:
                store.remove_file(self.final, marker=store._is_marker(self.final))
        except OSError:
            self.pieces = None
            return None
        kind, old_length = store.index.put(store.tag_of(self.digest), pack, offset, length, now)
        if kind == 0:
            store.account(1, length)
        elif not old_length:
            # a file's hint replaced (the file, counted where it is, is no longer found):
            # one entry more; other workers' memory tiers must look again
            store.account(1, length)
            store.generation.bump()
        else:
            # kind 1, a new version (other workers' memory tiers must look again), or 2,
            # another key's entry evicted from the bucket
            store.account(0, length - old_length)
            store.generation.bump()
        if not queued:
            store._forget(self.final)
        # the writer's own entry (made for it, used by nothing else): no copy. Not kept in
        # the memory tier: a miss's entry is there from its second use on (see _remember)
        stored = self.entry
        stored.path = self.final
        stored.body_offset = _PREFIX.size + len(self.head)
        stored.body_length = self.length
        stored.body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        stored.identity = (pack, offset)
        stored.pack = (pack, offset, length)
        return stored

    def commit_batched(self, lock: KeyLock | None, loop: AbstractEventLoop) -> bool:
        """Append the entry to the worker's pack with the others that end in this turn of
        the loop (one write for them all, at the end of the turn), and then let ``lock``
        go; until then the store answers its key from memory, and a purge or a newer
        answer drops it. False (nothing done) when it cannot wait: not ``packable()``, or
        the queue full."""
        store = self.store
        pieces = self.pieces
        if (
            pieces is None
            or not self.packable()
            or len(store.pending) >= PENDING_ENTRIES
            or store.pending_bytes + self.length > PENDING_BYTES
        ):
            return False
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.pieces = [body]
        queued = self.entry  # made for this writer: the one kept once it is written
        queued.path = self.final
        queued.body_offset = _PREFIX.size + len(self.head)
        queued.body_length = self.length
        queued.body = body
        store.cancel_pending(self.final)  # an older answer queued for it goes
        if self.entry.key in store.hot_keys:
            # (a key that does not vary is in the memory tier by its path iff by its key:
            # the odict's pop of a path it lacks cost a miss near a microsecond)
            store._forget(self.final)
        store.pending[self.final] = (self, queued)
        store.pending_bytes += self.length
        self.lock = lock
        self.purge_mark = store.generation.purges()
        store.batch.append(self)
        if store.batch_handle is None:
            store.batch_handle = loop.call_soon(store.flush_batch)
        return True

    def commit(self, remember: bool = True) -> Entry | None:
        """Put the entry in place (atomically), now; the entry as stored, None if it failed.
        ``remember``: kept in the memory tier (a miss's entry is not: see _remember)."""
        self.store.cancel_pending(self.final)  # an older answer queued must not follow it
        return self._stored(self._files(), remember)

    def cancel(self) -> None:
        """A queued write is moot: its batch leaves it out."""
        self.cancelled = True

    def outdated(self, horizon: float) -> bool:
        """Whether the entry's key was invalidated (RFC 9111 4.4) since its fill began
        (``horizon``: the zone's ``Invalidations.horizon()``, read lately): the origin may
        have answered before the unsafe request, so the entry must not be put in place."""
        start = self.entry.request_time
        store = self.store
        return start <= horizon and store.invalidations.since(store.tag_of(self.digest), start)


def _record_parts(parts: list[bytes], head: bytes, pieces: list[bytes], writer: EntryWriter) -> int:
    """Add the parts of ``writer``'s record (its file's bytes, see _file_bytes) to
    ``parts``; the record's length."""
    if INDEX_HELPER is not None and len(pieces) == 1:
        record = _file_bytes(head, pieces, writer.length, writer.crc)  # made whole in C
        parts.append(record)
        return len(record)
    parts.append(_PREFIX.pack(MAGIC, VERSION, len(head)))
    parts.append(head)
    parts += pieces
    parts.append(_TRAILER.pack(writer.length, writer.crc, zlib.crc32(head)))
    return _PREFIX.size + len(head) + writer.length + _TRAILER.size


def _file_bytes(head: bytes, pieces: list[bytes], length: int, crc: int) -> bytes:
    """The whole file of an entry whose body is ``pieces``."""
    if INDEX_HELPER is not None and len(pieces) == 1:
        # in one allocation, the head's checksum with it (see _index.c)
        record: bytes = INDEX_HELPER.record(head, pieces[0], length, crc)
        return record
    prefix = _PREFIX.pack(MAGIC, VERSION, len(head))
    return b"".join([prefix, head, *pieces, _TRAILER.pack(length, crc, zlib.crc32(head))])


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            # the count in a name of its own: compiled, view[os.write(...):] made the call twice
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
