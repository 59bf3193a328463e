"""``--rate-limit-per-minute``: a token bucket per client, in memory bounded by the clients active
within the last minute.

Sans-I/O: the caller passes the time. Each client (an API key, or an IP address) has a bucket of
``per_minute`` requests that refills continuously at ``per_minute / 60`` a second, so a client
may burst up to a minute's worth and then goes at the average rate — the hosted API's "requests
per minute" with no cliff at a window's edge. A bucket that has been left alone for a minute is
full again, which is exactly the state of a client never seen, so it is forgotten: memory holds
only the clients of the last minute (and never more than ``max_clients``, the least recently seen
leaving first, so a flood of spoofed sources cannot grow it without bound).
"""

from __future__ import annotations

import itertools
import math

WINDOW_S = 60.0
MAX_CLIENTS = 100_000


class RateLimiter:
    def __init__(self, per_minute: int, *, max_clients: int = MAX_CLIENTS) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1 (no limiter at all means no limit)")
        self.capacity = float(per_minute)
        self.rate = per_minute / WINDOW_S  # tokens per second
        self.max_clients = max_clients
        # client -> (tokens, last seen); dict order = least recently seen first (re-inserted on each hit).
        self._buckets: dict[str, tuple[float, float]] = {}

    def hit(self, client: str, now: float) -> float:
        """Count one request of ``client``: 0.0 if it may go ahead, else the seconds until it may."""
        entry = self._buckets.pop(client, None)
        tokens = self.capacity if entry is None else min(self.capacity, entry[0] + (now - entry[1]) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate  # a refused request costs nothing: retrying then succeeds
        self._buckets[client] = (tokens, now)
        self._forget_idle(now)
        return wait

    def retry_after(self, client: str, now: float) -> int:
        """``hit`` as a ``Retry-After`` value: 0 to go ahead, else whole seconds (at least 1)."""
        wait = self.hit(client, now)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        # The oldest entries come first, so this stops at the first client seen within the window:
        # amortised O(1) per hit.
        for client, (_, seen) in list(itertools.islice(buckets.items(), 8)):
            if now - seen < WINDOW_S and len(buckets) <= self.max_clients:
                break
            del buckets[client]

    def __len__(self) -> int:
        return len(self._buckets)

