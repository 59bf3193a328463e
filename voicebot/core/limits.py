"""A realtime session's time limits: its longest life and its longest idleness (sans-I/O).

The session reports activity (:meth:`SessionClock.touch`) and asks, whenever its watchdog wakes,
whether a limit has run out (:meth:`SessionClock.expired`) and how long it may sleep until the
next one could (:meth:`SessionClock.next_check`). Times are on the monotonic clock, in seconds;
a limit of 0 is no limit.

What counts as activity is the session's decision (session.py): a client event, speech heard by
turn detection, the assistant speaking or its audio still playing. Audio frames alone do not —
a microphone streaming silence for ten minutes is an idle session.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Expiry:
    """A limit ran out: the ``error`` event's code and message, and the close reason."""

    code: str  # "session_expired" | "idle_timeout"
    message: str

    @property
    def reason(self) -> str:
        """A WebSocket close reason (at most 123 bytes) / a hangup reason."""
        return f"{self.code}: {self.message}"[:120]


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


class SessionClock:
    def __init__(self, started: float, max_session_s: float, idle_timeout_s: float) -> None:
        self.started = started
        self.max_session_s = max(0.0, max_session_s)
        self.idle_timeout_s = max(0.0, idle_timeout_s)
        self.last_activity = started

    def restart(self, at: float) -> None:
        """The session starts now (it was built a moment earlier): both limits count from ``at``."""
        self.started = self.last_activity = at

    def touch(self, at: float) -> None:
        """Something happened at ``at`` (may lie in the future: audio that is still to play)."""
        if at > self.last_activity:
            self.last_activity = at

    def _deadlines(self) -> list[tuple[float, Expiry]]:
        deadlines = []
        if self.max_session_s:
            deadlines.append((self.started + self.max_session_s, Expiry(
                "session_expired", f"Your session hit the maximum duration of {_duration(self.max_session_s)}.")))
        if self.idle_timeout_s:
            deadlines.append((self.last_activity + self.idle_timeout_s, Expiry(
                "idle_timeout", f"The session was idle for {_duration(self.idle_timeout_s)} (no client event, "
                "no speech) and was closed.")))
        return deadlines

    def expired(self, now: float) -> Expiry | None:
        """The limit that has run out at ``now`` (the session's length first), or None."""
        for deadline, expiry in self._deadlines():
            if now >= deadline:
                return expiry
        return None

    def next_check(self, now: float) -> float | None:
        """Seconds until a limit could run out (activity only moves it later); None = no limits."""
        deadlines = [deadline for deadline, _ in self._deadlines()]
        return max(0.0, min(deadlines) - now) if deadlines else None
