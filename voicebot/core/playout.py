"""The one model of a listener's playback clock: for pacing output and for knowing what was heard.

Sans-I/O: callers pass ``now`` (seconds, any monotonic clock). Audio is assumed to start playing
the moment it reaches the listener and to play back to back; when we fall behind (an underrun),
playback simply waits for the next chunk. So after sending, ``busy_until`` is when the listener
will have played everything sent, and what it has heard at ``now`` is everything sent minus what
is still queued.

Every output uses this one clock:

* a Session keeps one for its output stream; the reply pipeline sends a chunk only when no more
  than ``lead_ms`` sits queued at the listener (``delay_before_send``), and a reply's heard audio
  is the clock's ``played_ms`` minus where its audio began (``sent_ms`` at its first chunk);
* the WebRTC track paces its 20 ms RTP frames on one with ``lead_ms=0`` (frame n leaves when
  frame n-1 has "played");
* on barge-in, :meth:`flush` says the listener's queue was dropped (a Twilio ``clear``, a WebRTC
  track cleared), so nothing stays queued and what was dropped no longer counts as sent.

The estimate is an upper bound (the network adds delay). Transports that know better say so
through their sink's ``playback_position`` (WebRTC: frames that left the track; telephony: the
carrier's mark echoes), and a client can refine it with ``conversation.item.truncate``.
"""

from __future__ import annotations


class PlayoutClock:
    def __init__(self, lead_ms: float) -> None:
        self.lead_ms = lead_ms
        self.sent_ms = 0.0  # the output stream's timeline: all audio sent (and not flushed) so far
        self._busy_until: float | None = None  # seconds on the caller's clock

    def queued_ms(self, now: float) -> float:
        """Audio sent but not yet played at ``now``."""
        if self._busy_until is None:
            return 0.0
        return max(0.0, (self._busy_until - now) * 1000.0)

    def delay_before_send(self, now: float) -> float:
        """Seconds to wait so that no more than ``lead_ms`` of audio sits queued at the listener."""
        return max(0.0, (self.queued_ms(now) - self.lead_ms) / 1000.0)

    def sent(self, duration_ms: float, now: float) -> float:
        """Audio of ``duration_ms`` went out at ``now``; returns when the listener starts playing it."""
        start = now if self._busy_until is None else max(self._busy_until, now)
        self._busy_until = start + duration_ms / 1000.0
        self.sent_ms += duration_ms
        return start

    def played_ms(self, now: float) -> float:
        """Position of the listener on the timeline at ``now`` (what it has heard, at most)."""
        return max(0.0, self.sent_ms - self.queued_ms(now))

    def flush(self, now: float) -> float:
        """The listener dropped everything queued (barge-in); returns how many ms were dropped."""
        dropped = self.queued_ms(now)
        self.sent_ms -= dropped
        self._busy_until = now
        return dropped
