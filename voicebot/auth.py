"""Who may connect: API keys (header or browser subprotocol), short-lived client tokens, Origins.

Browsers cannot set an Authorization header on a WebSocket, so like the hosted API we accept
the key in the ``openai-insecure-api-key.<key>`` subprotocol, and short-lived tokens minted by
an authenticated request (so a web page never holds the long-lived key).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
TOKEN_PREFIX = "ek_"


def key_fingerprint(key: str) -> str:
    """Who an API key is, for counting its sessions, without keeping or logging the key itself."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    expires_at: float
    scope: str | None
    owner: str | None  # whose sessions it counts as: the minting key's fingerprint (never the key)


@dataclass
class ClientTokens:
    """Ephemeral tokens (``ek_…``): random, stored with an expiry, valid until then.

    A token may carry a ``scope`` (e.g. ``conversation:<id>`` for an EventSource URL): a scoped
    token is accepted only where that scope is asked for, so a token that leaks from a URL into a
    proxy log can read one conversation's events and nothing else. Unscoped tokens work anywhere.

    Expired tokens are purged whenever a token is minted or checked (a heap of expiries: each
    call pops only what has expired), so memory holds only the live ones whatever the traffic.

    A token also records its ``owner``: the sessions opened with it count against the key that
    minted it (--max-sessions-per-key), and so do its requests (--rate-limit-per-minute), so
    minting tokens does not multiply a key's allowance.
    """

    ttl_s: float = 600.0
    _tokens: dict[str, TokenRecord] = field(default_factory=dict)
    _expiries: list[tuple[float, str]] = field(default_factory=list)  # a heap, soonest first

    def mint(self, ttl_s: float | None = None, now: float | None = None,
             scope: str | None = None, owner: str | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        self.purge(now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        expires_at = now + (self.ttl_s if ttl_s is None else ttl_s)
        self._tokens[token] = TokenRecord(expires_at, scope, owner)
        heapq.heappush(self._expiries, (expires_at, token))
        return token, expires_at

    def remember(self, token: str, record: TokenRecord) -> None:
        """A token minted elsewhere (another instance, through the shared store)."""
        if token not in self._tokens:
            self._tokens[token] = record
            heapq.heappush(self._expiries, (record.expires_at, token))

    def record(self, token: str) -> TokenRecord | None:
        return self._live(token, None)

    def _live(self, token: str, now: float | None) -> TokenRecord | None:
        now = time.time() if now is None else now
        self.purge(now)
        entry = self._tokens.get(token)
        return entry if entry is not None and entry.expires_at > now else None

    def valid(self, token: str, now: float | None = None, scope: str | None = None) -> bool:
        entry = self._live(token, now)
        return entry is not None and (entry.scope is None or entry.scope == scope)

    def owner(self, token: str, now: float | None = None) -> str | None:
        """Who minted a live token (None for an unknown or expired one, or one minted without a key)."""
        entry = self._live(token, now)
        return None if entry is None else entry.owner

    def purge(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, token = heapq.heappop(expiries)
            self._tokens.pop(token, None)

    def __len__(self) -> int:
        return len(self._tokens)


class TokenStore(Protocol):
    """Where tokens are shared between instances (``voicebot.redis_store.RedisStore``)."""

    async def put_token(self, token: str, record: TokenRecord) -> None: ...

    async def get_token(self, token: str) -> TokenRecord | None: ...


@dataclass
class Authenticator:
    api_keys: Sequence[str]
    tokens: ClientTokens = field(default_factory=ClientTokens)
    #: With --store redis://…: tokens minted here are written there, and a token this process
    #: has not seen is looked up there (then remembered until it expires).
    store: TokenStore | None = None

    async def mint(self, ttl_s: float | None = None, scope: str | None = None,
                   owner: str | None = None) -> tuple[str, float]:
        """A new client token, valid on every instance sharing the store."""
        token, expires_at = self.tokens.mint(ttl_s, scope=scope, owner=owner)
        if self.store is not None:
            record = self.tokens.record(token)
            if record is not None:
                await self.store.put_token(token, record)
        return token, expires_at

    async def recall(self, credential: str | None) -> None:
        """Before a credential is checked: fetch a token minted on another instance."""
        if (self.store is None or not credential or not credential.startswith(TOKEN_PREFIX)
                or self.tokens.record(credential) is not None):
            return
        record = await self.store.get_token(credential)
        if record is not None and record.expires_at > time.time():
            self.tokens.remember(credential, record)

    @property
    def required(self) -> bool:
        return bool(self.api_keys)

    def is_api_key(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        # Constant-time comparison against every key: no timing hints about which prefix matched.
        return any(hmac.compare_digest(candidate.encode(), key.encode()) for key in self.api_keys)

    def accepts(self, candidate: str | None) -> bool:
        """A long-lived API key or a live client token."""
        if not self.required:
            return True
        if candidate is None:
            return False
        return self.is_api_key(candidate) or self.tokens.valid(candidate)

    def owner(self, credential: str | None) -> str | None:
        """Whose requests and sessions a credential's are: an API key's fingerprint, or for a client
        token the fingerprint of the key that minted it (None: no credential, a wrong one, or a
        token minted without a key)."""
        if not credential:
            return None
        return key_fingerprint(credential) if self.is_api_key(credential) else self.tokens.owner(credential)


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def subprotocol_key(subprotocols: Sequence[str]) -> str | None:
    for proto in subprotocols:
        if proto.startswith(KEY_SUBPROTOCOL_PREFIX):
            return proto[len(KEY_SUBPROTOCOL_PREFIX):]
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Non-browser clients send no Origin; browsers must be same-origin or on the allowlist."""
    if origin is None or "*" in allowed:
        return True
    if origin in allowed:
        return True
    # Same origin: the Origin's host:port equals the Host header.
    return host is not None and origin.split("://", 1)[-1] == host
