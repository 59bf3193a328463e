"""A model of the listener's playback clock, for pacing output and for knowing what was heard.

Sans-I/O: callers pass ``now`` (seconds, any monotonic clock). Audio is assumed to start playing
the moment it reaches the listener and to play back to back; when we fall behind (an underrun),
playback simply waits for the next chunk. So after sending, ``busy_until`` is when the listener
will have played everything sent, and what it has heard at ``now`` is everything sent minus what
is still queued. That estimate is an upper bound (the network adds delay), which a client can
refine with ``conversation.item.truncate`` and telephony with ``mark`` acknowledgements.
"""

from __future__ import annotations


class PlayoutClock:
    def __init__(self, lead_ms: float) -> None:
        self.lead_ms = lead_ms
        self.sent_ms = 0.0
        self._busy_until: float | None = None  # seconds on the caller's clock

    def queued_ms(self, now: float) -> float:
        """Audio sent but not yet played at ``now``."""
        if self._busy_until is None:
            return 0.0
        return max(0.0, (self._busy_until - now) * 1000.0)

    def delay_before_send(self, now: float) -> float:
        """Seconds to wait so that no more than ``lead_ms`` of audio sits queued at the listener."""
        return max(0.0, (self.queued_ms(now) - self.lead_ms) / 1000.0)

    def sent(self, duration_ms: float, now: float) -> None:
        start = now if self._busy_until is None else max(self._busy_until, now)
        self._busy_until = start + duration_ms / 1000.0
        self.sent_ms += duration_ms

    def played_ms(self, now: float) -> float:
        return max(0.0, self.sent_ms - self.queued_ms(now))
