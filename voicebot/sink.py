"""The output sink: what a Session needs from a transport to reach the listener.

A Session never writes to a socket. Each transport implements :class:`OutputSink` once and the
Session drives every transport the same way: server events out, assistant audio out (in the
format the sink asked for, cut into ``chunk_ms`` pieces and already paced on the session's
playout clock), ``end_audio`` when a reply's audio is complete, ``clear()`` on barge-in, and
``playback_position()`` when the transport knows what the listener has actually played.

So barge-in is one path for every transport: the Session carries out the turn tracker's actions
(cancel the reply, ``clear()`` the sink, cut the history to ``playback_position()`` or the
playout clock's estimate), and no transport has to recognise a cut in the event stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from voicebot.core.audio import AudioFormat, encode
from voicebot.core.events import ServerEvent
from voicebot.core.types import Int16Array


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of one reply's audio: samples at ``fmt.rate``, in the format they were produced in."""

    response_id: str
    item_id: str
    samples: Int16Array
    fmt: AudioFormat

    @property
    def duration_ms(self) -> float:
        return self.samples.size * 1000 / self.fmt.rate

    def encoded(self) -> bytes:
        """The bytes of ``fmt`` (pcm16 little-endian, μ-law or A-law)."""
        return encode(self.fmt, self.samples)


class OutputSink(Protocol):
    """One transport's way to the listener. Every method is called on the event loop and must not block."""

    @property
    def audio_format(self) -> AudioFormat | None:
        """The fixed media format of this transport (a WebRTC track, a carrier stream), or None to
        use the session's configured ``audio.output.format``."""
        ...

    @property
    def chunk_ms(self) -> float:
        """How long each audio chunk should be (telephony wants 20 ms frames)."""
        ...

    @property
    def kind(self) -> str:
        """The transport, for metrics: realtime_ws, webrtc, telephony (or headless)."""
        ...

    @property
    def holds_output(self) -> bool:
        """The server keeps the listener's output audio buffer (WebRTC, a phone call), so
        ``output_audio_buffer.clear`` applies; a WebSocket client keeps its own and clears it itself."""
        ...

    def send_event(self, event: ServerEvent) -> None:
        """A Realtime server event (never audio: that goes to :meth:`send_audio`)."""
        ...

    def send_audio(self, chunk: AudioChunk) -> None:
        """The next piece of a reply's audio; the session has paced it already."""
        ...

    def end_audio(self, response_id: str, item_id: str) -> None:
        """Every chunk of this reply's audio has been sent (not called for a cut reply)."""
        ...

    def clear(self) -> None:
        """Barge-in: drop whatever is buffered toward the listener, here and at the peer."""
        ...

    def playback_position(self, item_id: str) -> float | None:
        """Ms of this item's audio the listener has played, or None when the transport cannot
        know (the session then uses its playout clock's estimate)."""
        ...

    def end(self, reason: str) -> None:
        """The session ended itself (a time limit ran out) after its last event: close the
        connection with ``reason`` — WebSocket close 1008, a WebRTC hangup, a phone hangup. The
        transport then closes the session as it always does."""
        ...


class NullSink:
    """A sink for a headless session (text replies of a shared conversation): drops everything."""

    audio_format: AudioFormat | None = None
    chunk_ms: float = 100.0
    holds_output: bool = False
    kind: str = "headless"

    def send_event(self, event: ServerEvent) -> None:
        pass

    def send_audio(self, chunk: AudioChunk) -> None:
        pass

    def end_audio(self, response_id: str, item_id: str) -> None:
        pass

    def clear(self) -> None:
        pass

    def playback_position(self, item_id: str) -> float | None:
        return None

    def end(self, reason: str) -> None:
        pass
