"""LLM token stream -> speakable text chunks for the TTS, cleaned of markdown and emoji.

Time to first audio is dominated by how soon the first chunk leaves, so the first chunk is
cut at the first clause boundary (, ; : dash) once it has ``first_min_words`` words; later
chunks are whole sentences of at least ``min_words`` words, which a TTS voices with better
prosody. ``max_chars`` bounds the latency of run-on text.

Decisions are made on the raw text and each chunk is cleaned on its own. That is only
correct if cleaning is *local* at a cut, so cuts are made only at whitespace and never
inside a fenced code block or a markdown link; a chunk keeps its leading whitespace so
line-start rules (bullets, headings, fences) still see whether it begins a line. The
result: the words spoken do not depend on how the model split its tokens.
"""

from __future__ import annotations

import re

_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:"
_DASHES = "—–-"  # em dash, en dash, hyphen (the latter two only when spaced)
# Characters that may follow a sentence's punctuation and belong to it: quotes, brackets,
# and closing markdown emphasis ("**Done.**").
_CLOSERS = "\"'”’)]*_`»"

# Never a sentence end: titles before a name, and the like.
_TITLES = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "fig", "approx", "dept", "est"}
    | {"gen", "col", "lt", "sgt", "capt", "rev", "hon", "ft"}
)
# May end a sentence; only a capital letter after them proves it.
_MAYBE_FINAL = frozenset({"etc", "inc", "ltd", "co", "corp", "al"})
# Single letters with dots: "U.S", "e.g", "i.e", "J" (initials).
_DOTTED = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_LIST_NUMBER = re.compile(r"[ \t]*\d+")
_WORDLIKE = re.compile(r"\w")

_FENCE_LINE = re.compile(r"(?m)^[ \t]{0,3}(?:```|~~~)")
_FENCE_BLOCK = re.compile(r"(?ms)^[ \t]{0,3}(```|~~~)[^\n]*(?:.*?^[ \t]{0,3}\1[^\n]*$|.*\Z)")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
# "$" as well as a space after the marker: a chunk may end right after it (a hard cut).
_HEADING = re.compile(r"(?m)^[ \t]*#{1,6}(?:[ \t]+|$)")
_BULLET = re.compile(r"(?m)^[ \t]*(?:[-*+•]|\d+[.)])(?:[ \t]+|$)")
_RULE = re.compile(r"(?m)^[ \t]*(?:[-*_][ \t]*){3,}$")
_QUOTE = re.compile(r"(?m)^[ \t]*>+[ \t]?")
# Emphasis markers at a word edge: "**bold**", "_it_"; "snake_case" and "2 * 3" are kept.
_EMPHASIS_OPEN = re.compile(r"(?<![\w*])(?:\*{1,3}|_{1,3})(?=[^\s*_])")
_EMPHASIS_CLOSE = re.compile(r"(?<=[^\s*_])(?:\*{1,3}|_{1,3})(?![\w*])")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U00002b00-\U00002bff\U0000fe0f\U0000200d"
    "\U000e0020-\U000e007f\U00002300-\U000023ff]"
)
_SPACE = re.compile(r"\s+")
# Placed before a chunk that does not begin a line, so "^" rules cannot fire at its start.
_NOT_LINE_START = "\x00"


def clean_for_speech(text: str) -> str:
    """Plain text a TTS can read: markdown, code blocks, emoji and extra whitespace removed."""
    return _clean(text)


def _clean(text: str, line_start: bool = True) -> str:
    if not line_start:
        text = _NOT_LINE_START + text
    text = _FENCE_BLOCK.sub("\n", text)
    text = _LINK.sub(r"\1", text)
    text = text.replace("`", "")
    text = _RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _EMPHASIS_OPEN.sub("", text)
    text = _EMPHASIS_CLOSE.sub("", text)
    text = _EMOJI.sub("", text)
    text = text.replace(_NOT_LINE_START, "")
    return _SPACE.sub(" ", text).strip()


def _count_words(text: str) -> int:
    return sum(1 for w in text.split() if _WORDLIKE.search(w))


class SpeechChunker:
    """Feed LLM text pieces with :meth:`push`; get cleaned chunks ready for the TTS."""

    def __init__(self, first_min_words: int = 3, min_words: int = 6, max_chars: int = 220,
                 first_max_words: int = 0) -> None:
        if first_min_words < 1 or min_words < 1 or max_chars < 20 or first_max_words < 0:
            raise ValueError("first_min_words and min_words must be >= 1, max_chars >= 20, first_max_words >= 0")
        self.first_min_words = first_min_words
        # 0 = off. Otherwise the first chunk leaves after this many words even without a comma:
        # on a CPU LLM (~10 tokens/s) every word waited for is ~0.1 s of silence for the caller.
        self.first_max_words = max(first_max_words, first_min_words) if first_max_words else 0
        self.min_words = min_words
        self.max_chars = max_chars
        self._buf = ""
        self._line_start = True  # does _buf begin a line?
        self._first = True  # no chunk emitted yet

    def push(self, piece: str) -> list[str]:
        """Add the next piece of the reply; return the chunks it completed."""
        self._buf += piece
        if "```" in piece or "~~~" in piece or "\n" in piece:
            self._drop_closed_fences()
        return self._drain(final=False)

    def hurry(self, min_words: int = 2) -> list[str]:
        """The listener is about to run out of audio: release the complete words held so far now
        (at the last clause boundary if there is one, else after the last complete word) rather
        than wait for the end of the sentence. Nothing if fewer than ``min_words`` are complete."""
        buf = self._buf
        fence = _open_fence(buf, self._line_start)
        limit = len(buf) if fence is None else fence
        window = min(limit, self.max_chars + _LOOKAHEAD)
        blocked = _link_spans(buf[:window])
        clauses = [c for c in self._boundaries(buf, window, False, blocked, clauses=True) if c <= self.max_chars]
        # A word is complete once the next one has started (tokens arrive in pieces).
        spaces = [m.start() for m in _ANY_SPACE.finditer(buf, 1, window)
                  if not _inside(m.start(), blocked) and buf[m.start():limit].strip() and m.start() <= self.max_chars]
        for cut in (clauses[-1:] or []) + spaces[::-1]:
            if _count_words(_clean(buf[:cut], self._line_start)) >= min_words:
                chunk = self._take(cut)
                return [chunk] if chunk else []
        return []

    def flush(self) -> list[str]:
        """End of the reply: return everything still held back."""
        chunks = self._drain(final=True)
        rest = self._take(len(self._buf))
        if rest:
            chunks.append(rest)
        self._buf, self._line_start, self._first = "", True, True
        return chunks

    # -- internals ------------------------------------------------------------------------

    def _drop_closed_fences(self) -> None:
        """Remove finished code blocks from the raw text now, as cleaning would later.

        A code block can be far longer than a chunk; keeping it would make every push rescan
        it and would hide the text after it from the bounded look-ahead window.
        """
        prefix = "" if self._line_start else _NOT_LINE_START
        text = _CLOSED_FENCE.sub("\n", prefix + self._buf)
        self._buf = text[len(prefix) :]

    def _drain(self, final: bool) -> list[str]:
        chunks: list[str] = []
        while (cut := self._find_cut(final)) is not None:
            chunk = self._take(cut)
            if chunk:
                chunks.append(chunk)
        return chunks

    def _take(self, cut: int) -> str | None:
        """Remove ``_buf[:cut]``; return it cleaned, or None if nothing speakable is left."""
        raw, self._buf = self._buf[:cut], self._buf[cut:]
        text = _clean(raw, self._line_start)
        self._line_start = raw.endswith("\n") if raw else self._line_start
        if not _WORDLIKE.search(text):
            return None
        self._first = False
        return text

    def _find_cut(self, final: bool) -> int | None:
        """Where to cut ``_buf`` now, or None to wait for more text."""
        buf = self._buf
        # Nothing after the opening of an unfinished code block may be cut (or spoken).
        fence = _open_fence(buf, self._line_start)
        limit = len(buf) if fence is None else fence
        # Decisions only look at a bounded window, so a push costs O(max_chars), not O(reply).
        window = min(limit, self.max_chars + _LOOKAHEAD)
        blocked = _link_spans(buf[:window])
        need = self.first_min_words if self._first else self.min_words
        for cut in self._boundaries(buf, window, final, blocked, clauses=self._first):
            if cut > self.max_chars:
                break
            if _count_words(_clean(buf[:cut], self._line_start)) >= need:
                return cut
        if self._first and self.first_max_words:
            spaces = [m.start() for m in _ANY_SPACE.finditer(buf, 1, window) if not _inside(m.start(), blocked)]
            for space in spaces:
                # A word is complete once the next one has started (tokens arrive in pieces).
                if buf[space:limit].strip() and _count_words(_clean(buf[:space], self._line_start)) >= \
                        self.first_max_words:
                    return space
        if len(buf) <= self.max_chars:
            return None
        # Run-on text: cut at the last sentence or clause boundary that fits, else the last space.
        fits = [c for c in self._boundaries(buf, window, final, blocked, clauses=True) if c <= self.max_chars]
        if fits:
            return fits[-1]
        spaces = [m.start() for m in _ANY_SPACE.finditer(buf, 1, window) if not _inside(m.start(), blocked)]
        fitting = [s for s in spaces if s <= self.max_chars]
        if fitting:
            return fitting[-1]
        return spaces[0] if spaces else None  # one giant "word": never cut inside it

    def _boundaries(
        self, buf: str, window: int, final: bool, blocked: list[tuple[int, int]], clauses: bool
    ) -> list[int]:
        """Confirmed cut positions before ``window``: each followed by whitespace, then text."""
        cuts: list[int] = []
        n = len(buf)
        pattern = _CLAUSE_CANDIDATE if clauses else _SENTENCE_CANDIDATE
        done = 0  # end of the last candidate examined: "?!" or "..." is one candidate
        for m in pattern.finditer(buf, 0, window):
            i = m.start()
            ch = buf[i]
            if i < done:
                continue
            if ch == "\n":
                end = i
            elif ch in _DASHES:
                if ch != "—" and (i == 0 or buf[i - 1] != " "):
                    continue  # "well-known", "10–20": a hyphen, not a pause
                end = i + 1
            else:
                end = i + 1
                while end < n and buf[end] in _SENTENCE_END:  # "?!", "!!"
                    end += 1
                while end < n and buf[end] in _CLOSERS:
                    end += 1
            done = end
            if end == 0 or (end < n and not buf[end].isspace()):
                continue  # "3.14", "e.g", "1,000", "word—word": no whitespace, no cut
            nxt = end
            while nxt < n and buf[nxt].isspace():
                nxt += 1
            if nxt == n and not final:
                break  # the next character decides ("Dr" + "." + " Smith"): wait for it
            if cuts and cuts[-1] == end:
                continue  # "end.\n": the period and the newline make one cut
            if not _inside(end, blocked) and self._is_real_end(buf, i, end, nxt):
                cuts.append(end)
        return cuts

    def _is_real_end(self, buf: str, i: int, end: int, nxt: int) -> bool:
        """Reject periods that do not end anything: abbreviations, ellipses, list numbers."""
        if ".." in buf[i:end]:
            return False  # an ellipsis trails off; the sentence usually goes on
        if buf[i] != ".":
            return True
        line_begin = buf.rfind("\n", 0, i) + 1
        if (line_begin > 0 or self._line_start) and _LIST_NUMBER.fullmatch(buf, line_begin, i):
            return False  # "1. " starting a list item
        start = i
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        word = buf[start:i].lstrip("\"'(*_[“‘").lower()
        if word in _TITLES or _DOTTED.fullmatch(word):
            return False
        if word in _MAYBE_FINAL:
            return nxt < len(buf) and buf[nxt].isupper()
        # Sentences start with a capital: "approx. five", "cf. the" are unknown abbreviations.
        return not (nxt < len(buf) and buf[nxt].islower())


_LOOKAHEAD = 64
_SENTENCE_CANDIDATE = re.compile(r"[.!?\n]")
_CLAUSE_CANDIDATE = re.compile(r"[.!?\n,;:—–-]")
_ANY_SPACE = re.compile(r"\s")
_CLOSED_FENCE = re.compile(r"(?ms)^[ \t]{0,3}(```|~~~)[^\n]*\n.*?^[ \t]{0,3}\1[^\n]*\n")
_LINK_OR_BRACKET = re.compile(r"!?\[[^\]\n]*\](?:\([^)\n]*\))?")
_OPEN_LINK = re.compile(r"!?\[[^\]\n]*(?:\]\([^)\n]*)?\Z")


def _open_fence(buf: str, line_start: bool) -> int | None:
    """Start of an unclosed code fence (closed ones were already dropped), if any."""
    for m in _FENCE_LINE.finditer(buf):
        if m.start() > 0 or line_start:
            return m.start()
    return None


def _link_spans(buf: str) -> list[tuple[int, int]]:
    """Ranges a cut must not split: ``[text](url)``, and a link still arriving at the end."""
    spans = [(m.start(), m.end()) for m in _LINK_OR_BRACKET.finditer(buf)]
    tail = _OPEN_LINK.search(buf)
    if tail is not None:
        spans.append((tail.start(), len(buf) + 1))
    return spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a < pos < b for a, b in spans)
