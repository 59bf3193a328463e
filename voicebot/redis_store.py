"""Shared state in Redis (``--store redis://host:port/db``): what lets many instances act as one.

What lives here is exactly what a client may bring to *another* instance: the conversations of
the HTTP/SSE API (their instructions, their items, their numbered event logs) and the client
tokens (``ek_…``) minted on any of them. What does not: live audio sessions, which stay on the
instance their socket or call reached.

Keys, per conversation ``C`` (all expire ``--conversation-idle-ttl-s`` after the last activity)::

    voicebot:conv:C        hash    instructions, created_at
    voicebot:conv:C:seq    string  the last event id issued (INCR)
    voicebot:conv:C:log    stream  the events, entry id ``<n>-0`` for event ``n``
    voicebot:conv:C:items  hash    item id -> its snapshot (JSON)
    voicebot:conv:C:order  zset    item id, scored by the event that added it

An event is numbered and appended by one Lua script (INCR + XADD + the item, atomically), so
ids stay contiguous per conversation whichever instance appends: a reader resuming anywhere
with ``Last-Event-ID: n`` gets ``XRANGE (n+1)-0 +``, nothing lost or twice. Tokens are
``voicebot:token:<token>`` with the token's own expiry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from voicebot.auth import TokenRecord

log = logging.getLogger(__name__)

PREFIX = "voicebot:"
#: How long a follower's XREAD blocks (it loops); below the socket timeout, so a block is no timeout.
BLOCK_MS = 2000
SOCKET_TIMEOUT_S = 5.0

_APPEND = """
local n = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], n .. '-0',
           'event', ARGV[2], 'data', ARGV[3], 'origin', ARGV[4], 'item', ARGV[5])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[5])
  redis.call('ZADD', KEYS[4], 'NX', n, ARGV[6])
  local cap = tonumber(ARGV[8])
  if cap > 0 then
    local extra = redis.call('ZCARD', KEYS[4]) - cap
    if extra > 0 then
      local old = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
      redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
      redis.call('HDEL', KEYS[3], unpack(old))
    end
  end
end
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return n
"""


class StoreUnavailable(Exception):
    """Redis cannot be reached (or answered with an error): the request cannot be served now."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    event: str
    data: dict[str, Any]
    origin: str  # the instance that appended it
    item: dict[str, Any] | None  # the snapshot of the item the event adds or finishes, if any


@dataclass(frozen=True, slots=True)
class StoredConversation:
    id: str
    instructions: str | None
    created_at: int
    items: list[dict[str, Any]]  # snapshots, oldest first
    last_event_id: int


def _conv(conversation_id: str, part: str = "") -> str:
    return f"{PREFIX}conv:{conversation_id}{':' + part if part else ''}"


def _keys(conversation_id: str) -> list[str]:
    return [_conv(conversation_id, "seq"), _conv(conversation_id, "log"), _conv(conversation_id, "items"),
            _conv(conversation_id, "order"), _conv(conversation_id)]


def _entry_id(raw: bytes | str) -> int:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text.split("-", 1)[0])


def _event(raw_id: bytes | str, fields: dict[bytes, bytes]) -> StoredEvent:
    item = fields.get(b"item", b"")
    return StoredEvent(_entry_id(raw_id), fields[b"event"].decode(), json.loads(fields[b"data"]),
                       fields.get(b"origin", b"").decode(), json.loads(item) if item else None)


class RedisStore:
    """The shared state of every instance pointed at one Redis database."""

    def __init__(self, client: aioredis.Redis, url: str, *, instance_id: str, ttl_s: float,
                 log_events: int, max_items: int) -> None:
        self.client = client
        self.url = url
        self.instance_id = instance_id
        self.ttl_s = max(0, int(ttl_s))
        self.log_events = max(1, log_events)
        self.max_items = max(0, max_items)
        self._append = client.register_script(_APPEND)

    @classmethod
    async def connect(cls, url: str, *, instance_id: str, ttl_s: float, log_events: int,
                      max_items: int = 0) -> RedisStore:
        """Connect and check that Redis answers: StoreUnavailable with a message naming it if not."""
        client = aioredis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=2.0, health_check_interval=15,
            # Lost connections are retried with backoff before a request gives up (redis-py's own).
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[ConnectionError, TimeoutError])
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(f"cannot reach Redis at {redact(url)}: {exc}") from None
        return cls(client, url, instance_id=instance_id, ttl_s=ttl_s, log_events=log_events, max_items=max_items)

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- tokens --------------------------------------------------------------------------------

    async def put_token(self, token: str, record: TokenRecord) -> None:
        value = json.dumps({"expires_at": record.expires_at, "scope": record.scope, "owner": record.owner})
        async with _errors():
            await self.client.set(f"{PREFIX}token:{token}", value, pxat=max(1, int(record.expires_at * 1000)))

    async def get_token(self, token: str) -> TokenRecord | None:
        async with _errors():
            raw = await self.client.get(f"{PREFIX}token:{token}")
        if raw is None:
            return None
        data = json.loads(raw)
        return TokenRecord(float(data["expires_at"]), data.get("scope"), data.get("owner"))

    # --- conversations -------------------------------------------------------------------------

    async def create_conversation(self, conversation_id: str, instructions: str | None, created_at: int) -> None:
        meta: dict[Any, Any] = {"created_at": str(created_at),
                                                "instructions": json.dumps(instructions)}
        async with _errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.hset(_conv(conversation_id), mapping=meta)
            pipe.set(_conv(conversation_id, "seq"), 0)
            if self.ttl_s:
                pipe.expire(_conv(conversation_id), self.ttl_s)
                pipe.expire(_conv(conversation_id, "seq"), self.ttl_s)
            await pipe.execute()

    async def load_conversation(self, conversation_id: str) -> StoredConversation | None:
        """The conversation as it is now (one transaction: the items and the last event id agree)."""
        async with _errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(_conv(conversation_id))
            pipe.get(_conv(conversation_id, "seq"))
            pipe.zrange(_conv(conversation_id, "order"), 0, -1)
            pipe.hgetall(_conv(conversation_id, "items"))
            meta, seq, order, items = await pipe.execute()
        if not meta:
            return None
        snapshots = [json.loads(items[item_id]) for item_id in order if item_id in items]
        return StoredConversation(conversation_id, json.loads(meta.get(b"instructions", b"null")),
                                  int(meta.get(b"created_at", b"0")), snapshots, int(seq or 0))

    async def touch(self, conversation_id: str) -> None:
        if not self.ttl_s:
            return
        async with _errors(), self.client.pipeline(transaction=False) as pipe:
            for key in _keys(conversation_id):
                pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def append(self, conversation_id: str, event: str, data: dict[str, Any],
                     item: dict[str, Any] | None = None) -> int:
        """Number and append one event (and the item it carries); returns its id."""
        item_json = json.dumps(item, separators=(",", ":")) if item is not None else ""
        args = [self.log_events, event, json.dumps(data, separators=(",", ":")), self.instance_id, item_json,
                item["item_id"] if item is not None else "", self.ttl_s, self.max_items]
        async with _errors():
            return int(await self._append(keys=_keys(conversation_id), args=args))

    async def since(self, conversation_id: str, last_id: int) -> list[StoredEvent] | None:
        """Events after ``last_id``; None when they cannot all be given (too old, or an id never issued)."""
        async with _errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.get(_conv(conversation_id, "seq"))
            pipe.xrange(_conv(conversation_id, "log"), f"{last_id + 1}-0", "+")
            seq, entries = await pipe.execute()
        newest = int(seq or 0)
        if last_id < 0 or last_id > newest:
            return None
        events = [_event(raw_id, fields) for raw_id, fields in entries]
        if last_id < newest and (not events or events[0].id != last_id + 1):
            return None  # trimmed away
        return events

    async def read_after(self, conversation_id: str, last_id: int, block_ms: int = BLOCK_MS) -> list[StoredEvent]:
        """The events after ``last_id``, waiting up to ``block_ms`` for one (a follower's loop)."""
        async with _errors():
            reply: Any = await self.client.xread({_conv(conversation_id, "log"): f"{last_id}-0"}, block=block_ms,
                                            count=256)
        return [_event(raw_id, fields) for _stream, entries in reply or [] for raw_id, fields in entries]


class _errors:
    """Any Redis or socket failure becomes StoreUnavailable (a 503 for a request, a retry for a loop)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, (RedisError, OSError)):
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc


def unreachable(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used right now (None: it answers). Checked before any model
    loads, so a server that would start without its shared state refuses at once."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        return f"--store {redact(url)}: Redis does not answer ({exc}). Start it, or fix the URL."
    finally:
        client.close()
    return None


def redact(url: str) -> str:
    """A Redis URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
