"""``[front.shared] redis``: limit_req counters and bans shared by several fronts.

One Lua script checks every limit_req of a request atomically, in one round trip (the
leaky bucket of nginx written as GCRA: one stored time per key, the moment its bucket
would be empty, in Redis's own clock so that hosts agree). Bans are a key each with an
expiry, announced on a channel every worker listens to, and read again whenever the
connection comes back.

When Redis cannot be reached the front goes on with its own (host-local) limits,
``fail = "closed"`` refuses instead; it says so once, retries with a growing pause,
and says when Redis is back.
"""

from __future__ import annotations

import asyncio

# redis reads its own version from its package's metadata at its first connection
# (importlib.metadata, which imports email.parser then): imported with this module, in
# the master, since a worker's user may not read Python's library (see front.run)
import email.parser  # noqa: F401
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis
import redis.asyncio

from gantry.config.front_model import SharedStore

__all__ = ["RedisShare", "share_ban", "shared_bans"]

log: Final = logging.getLogger("gantry.front")

#: KEYS: one per limit; ARGV: per limit, microseconds per request then the burst.
#: Returns {0, index, excess} when limit ``index`` (1-based) is over, nothing counted;
#: else {1, excess of each limit...}; excess in thousandths of a request, as nginx's.
GCRA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local empty_at = tonumber(redis.call('GET', key))
  local queued = 0
  if empty_at then
    queued = empty_at - now + interval
    if queued < 0 then queued = 0 end
  end
  if queued > burst * interval then
    return {0, i, math.floor(queued * 1000 / interval)}
  end
  next[i] = queued
end
local out = {1}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local ttl = math.floor((next[i] + interval) / 1000) + 1000
  -- %.0f: a plain number of 16 digits would be written as 1.7e+15, losing precision
  redis.call('SET', key, string.format('%.0f', now + next[i]), 'PX', ttl)
  out[i + 1] = math.floor(next[i] * 1000 / interval)
end
return out
"""

BAN_PREFIX: Final = "gantry:ban:"

BAN_CHANNEL: Final = "gantry:bans"
LIMIT_PREFIX: Final = "gantry:limit:"
#: seconds a limit check may take before the request goes on without Redis
CHECK_TIMEOUT: Final = 0.25
MAX_BACKOFF: Final = 5.0
#: connections to Redis per worker at most (one of them listens for bans)
POOL_SIZE: Final = 32


def share_ban(store: SharedStore, addr: str, until: float | None, reason: str = "") -> None:
    """Share a ban made by ``gantry ctl`` (blocking: it runs in a child of the master, off
    its loop): the key every front reads when it connects, and the announcement every
    listening worker applies at once. ``until`` None lifts the ban. Raises when Redis does
    not answer within a second."""
    client = redis.Redis.from_url(store.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        if until is None:
            client.delete(BAN_PREFIX + addr)
            client.publish(BAN_CHANNEL, f"{addr}|0")
            return
        milliseconds = int((until - time.time()) * 1000)
        if milliseconds > 0:
            client.set(BAN_PREFIX + addr, f"{until}|{reason}", px=milliseconds)
            client.publish(BAN_CHANNEL, f"{addr}|{until}")
    finally:
        client.close()


def shared_bans(store: SharedStore, limit: int = 10000) -> list[tuple[str, float, str]]:
    """The bans Redis holds (address, until, reason), ``limit`` at most (blocking, for
    ``gantry ctl blocked``). Raises when Redis does not answer within a second."""
    client = redis.Redis.from_url(store.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    found: list[tuple[str, float, str]] = []
    try:
        for name in client.scan_iter(match=BAN_PREFIX + "*", count=1000):
            value = client.get(name)
            if value is None:
                continue  # expired meanwhile
            # bytes: the client is made without decode_responses
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            until, _, reason = text.partition("|")
            key = name.decode() if isinstance(name, bytes) else str(name)
            try:
                found.append((key[len(BAN_PREFIX) :], float(until), reason))
            except ValueError:
                continue  # not one of ours
            if len(found) >= limit:
                break
    finally:
        client.close()
    return found


class RedisShare:
    """One worker's link to the shared Redis: limit checks, ban publishing, ban intake."""

    def __init__(
        self,
        store: SharedStore,
        loop: asyncio.AbstractEventLoop,
        on_ban: Callable[[str, float], None],
    ) -> None:
        self.store = store
        self.loop = loop
        #: called with (address, until in Unix seconds) for each ban Redis announces
        self.on_ban = on_ban
        # A bounded pool that waits for a free connection: under load, requests share
        # POOL_SIZE connections instead of opening one each (the default pool is
        # unbounded, and a bounded non-blocking one fails a check when it is full).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            store.redis,
            max_connections=POOL_SIZE,
            timeout=CHECK_TIMEOUT,
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
        )
        self.client: Any = redis.asyncio.Redis(connection_pool=pool)
        self.script: Any = self.client.register_script(GCRA)
        #: whether Redis answered last time (else limits are local until it is back)
        self.up = True
        #: whether requests of limited locations are refused while Redis is down
        self.fail_closed = store.fail == "closed"
        self._retry: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Listen for bans (and read the current ones once connected)."""
        self._listener = self.loop.create_task(self._listen())

    async def check(self, keys: Sequence[bytes], limits: Sequence[tuple[int, int]]) -> list[int]:
        """Run the script: ``limits`` are (microseconds per request, burst) per key.
        [0, index, excess] or [1, excesses...]; raises when Redis cannot answer."""
        args: list[int] = []
        for interval, burst in limits:
            args += [interval, burst]
        names = [LIMIT_PREFIX.encode() + key.hex().encode() for key in keys]
        result = await asyncio.wait_for(self.script(keys=names, args=args), CHECK_TIMEOUT * 2)
        return [int(value) for value in result]

    def failed(self, exc: BaseException) -> None:
        """Redis did not answer: say so once, then retry in the background."""
        if self.up:
            self.up = False
            log.error(
                "shared Redis %s unreachable (%s): %s until it is back",
                self.store.redis, exc.__class__.__name__ or exc,
                "refusing limited requests" if self.fail_closed else "local limits",
            )  # fmt: skip
        if self._retry is None or self._retry.done():
            self._retry = self.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        pause = 0.1
        while True:
            await asyncio.sleep(pause)
            try:
                await asyncio.wait_for(self.client.ping(), CHECK_TIMEOUT * 2)
            except Exception:  # still down: wait longer
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            self.up = True
            log.warning("shared Redis %s is back", self.store.redis)
            await self._catch_up()
            return

    def publish_ban(self, addr: str, until: float, reason: str) -> None:
        """Share a ban made here (in the background; kept locally in any case)."""
        task = self.loop.create_task(self._publish(addr, until, reason))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _publish(self, addr: str, until: float, reason: str) -> None:
        milliseconds = int((until - time.time()) * 1000)
        if milliseconds <= 0:
            return
        try:
            await self.client.set(BAN_PREFIX + addr, f"{until}|{reason}", px=milliseconds)
            await self.client.publish(BAN_CHANNEL, f"{addr}|{until}")
        except Exception as exc:  # kept locally; shared once Redis is back (catch-up)
            self.failed(exc)

    async def _catch_up(self) -> None:
        """Every ban Redis holds, into this host's table."""
        try:
            async for name in self.client.scan_iter(match=BAN_PREFIX + "*", count=1000):
                value = await self.client.get(name)
                if value is None:
                    continue
                addr = name.decode()[len(BAN_PREFIX) :]
                until = float(value.decode().split("|", 1)[0])
                self.on_ban(addr, until)
        except Exception as exc:
            self.failed(exc)

    async def _listen(self) -> None:
        """Bans announced by any front, as they come; re-subscribed after an outage."""
        pause = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(BAN_CHANNEL)
                await self._catch_up()
                pause = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    addr, _, until = message["data"].decode().rpartition("|")
                    self.on_ban(addr, float(until))  # until 0: the ban is lifted
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # the connection is gone already
                    pass

    def close(self) -> None:
        """Stop listening and retrying."""
        for task in (self._listener, self._retry, *self.tasks):
            if task is not None:
                task.cancel()
