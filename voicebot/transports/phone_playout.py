"""The audio we owe a caller, and what the carrier says was played (sans-I/O).

Assistant audio arrives from the Session in 100 ms deltas; carriers want 20 ms frames, paced in
real time (a carrier buffers whatever it gets, and a burst of a whole reply means seconds of
audio nobody can take back). :class:`PhonePlayout` cuts the stream into frames, puts a mark
after every few frames and at the end of each reply, and keeps, per assistant item, the audio
covered by the last mark the carrier acknowledged: the caller's true playback clock.

On barge-in, :meth:`clear` drops everything not yet sent. Marks sent before the clear are still
echoed by the carrier (Twilio echoes every pending mark at once when it clears its buffer), so
they are remembered as flushed and their acknowledgements are ignored: they say "dropped", not
"played". That makes the estimate conservative by at most one mark interval.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from voicebot.core.audio import AudioFormat

FRAME_MS = 20
MARK_EVERY_FRAMES = 5  # a mark per 100 ms: the truncation is exact to that


@dataclass(frozen=True, slots=True)
class Frame:
    item_id: str
    audio: bytes


@dataclass(frozen=True, slots=True)
class Mark:
    name: str
    item_id: str
    end_ms: float  # audio of the item played once the carrier echoes this mark


Outgoing = Frame | Mark


def silence_byte(fmt: AudioFormat) -> int:
    """The byte value of silence: 0xFF in μ-law, 0xD5 in A-law, 0 in linear PCM."""
    return {"pcmu": 0xFF, "pcma": 0xD5}.get(fmt.encoding, 0)


class PhonePlayout:
    def __init__(self, fmt: AudioFormat, mark_every: int = MARK_EVERY_FRAMES) -> None:
        self.fmt = fmt
        self.frame_bytes = fmt.bytes_for_ms(FRAME_MS)
        self.mark_every = mark_every
        self._queue: deque[Outgoing] = deque()
        self._partial = b""
        self._item: str | None = None
        self._item_ms = 0.0  # audio of the current item queued so far
        self._frames_since_mark = 0
        self._marks = 0
        self._pending: dict[str, Mark] = {}  # sent, not yet echoed (insertion order = send order)
        self._flushed: set[str] = set()
        self.heard_ms: dict[str, float] = {}  # item id -> audio acknowledged as played
        self.sent_ms: dict[str, float] = {}  # item id -> audio sent to the carrier
        self.frames_dropped = 0

    # --- filling -----------------------------------------------------------------------------

    def push(self, item_id: str, audio: bytes) -> None:
        """Queue assistant audio of ``item_id`` (any length, in ``fmt``)."""
        if item_id != self._item:
            self.end_item()
            self._item, self._item_ms, self._frames_since_mark = item_id, 0.0, 0
        data = self._partial + audio
        whole = len(data) - len(data) % self.frame_bytes
        for start in range(0, whole, self.frame_bytes):
            self._add_frame(data[start : start + self.frame_bytes])
        self._partial = data[whole:]

    def end_item(self) -> None:
        """The item's audio is complete: pad the last frame with silence and mark the end."""
        if self._item is None:
            return
        if self._partial:
            self._add_frame(self._partial.ljust(self.frame_bytes, bytes([silence_byte(self.fmt)])))
            self._partial = b""
        if self._frames_since_mark:
            self._add_mark()
        self._item = None

    def _add_frame(self, audio: bytes) -> None:
        assert self._item is not None
        self._queue.append(Frame(self._item, audio))
        self._item_ms += FRAME_MS
        self._frames_since_mark += 1
        if self._frames_since_mark >= self.mark_every:
            self._add_mark()

    def _add_mark(self) -> None:
        assert self._item is not None
        self._marks += 1
        self._queue.append(Mark(f"m{self._marks}", self._item, self._item_ms))
        self._frames_since_mark = 0

    # --- draining ----------------------------------------------------------------------------

    def peek(self) -> Outgoing | None:
        return self._queue[0] if self._queue else None

    def pop(self) -> Outgoing | None:
        """The next message to send (the caller sends it right away), or None."""
        if not self._queue:
            return None
        out = self._queue.popleft()
        if isinstance(out, Mark):
            self._pending[out.name] = out
        else:
            self.sent_ms[out.item_id] = self.sent_ms.get(out.item_id, 0.0) + FRAME_MS
        return out

    def ack(self, name: str) -> Mark | None:
        """The carrier echoed mark ``name``; returns it if it stands for played audio."""
        if name in self._flushed:
            self._flushed.discard(name)
            return None
        mark = self._pending.pop(name, None)
        if mark is None:
            return None
        # Carriers play in order: every mark sent before this one has played too.
        for earlier in [n for n, m in self._pending.items() if self._number(n) < self._number(name)]:
            del self._pending[earlier]
        self.heard_ms[mark.item_id] = max(self.heard_ms.get(mark.item_id, 0.0), mark.end_ms)
        return mark

    @staticmethod
    def _number(name: str) -> int:
        return int(name[1:])

    # --- barge-in ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return sum(isinstance(o, Frame) for o in self._queue)

    @property
    def playing(self) -> bool:
        """Audio is queued here, or sent and not yet confirmed played by the carrier."""
        return bool(self._queue) or bool(self._pending) or bool(self._partial)

    def playing_item(self) -> str | None:
        """The assistant item the caller is hearing (or about to hear)."""
        for mark in self._pending.values():
            return mark.item_id
        for out in self._queue:
            return out.item_id
        return self._item

    def clear(self) -> None:
        """Drop everything not sent; sent marks now stand for dropped audio."""
        self.frames_dropped += self.queued
        self._queue.clear()
        self._partial = b""
        self._item = None
        if len(self._flushed) > 10_000:  # a carrier that never echoes flushed marks (bounded memory)
            self._flushed.clear()
        self._flushed.update(self._pending)
        self._pending.clear()
