"""JSON from strangers: bounded nesting, valid UTF-8, and strings that can be sent back.

Every inbound parser (Realtime events, HTTP bodies, carrier frames) decodes through
:func:`loads`. The standard library's decoder recurses once per nesting level, so a few KB of
``[[[[…`` raise RecursionError deep inside it (and whatever walks the value next recurses too);
``"\\ud800"`` decodes to a lone surrogate that cannot be encoded again, so echoing it back (an
``event_id`` in an error) would fail on the way out. Both are refused here, before anything else
sees the value. No real client nests deeper than a JSON schema of a tool's parameters does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

#: Deeper than any event, body or tool schema a client sends; far below the recursion limit.
MAX_DEPTH = 64

# A JSON string literal (escapes included): brackets inside strings are not structure.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class JsonError(ValueError):
    """Not acceptable JSON; the message says why (for an error event or a 400)."""


def nesting_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (0 for a scalar), without parsing it."""
    structure = np.frombuffer(_STRING.sub("", text).encode("utf-8", "replace"), np.uint8)
    steps = np.isin(structure, _OPEN).astype(np.int32) - np.isin(structure, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def loads(raw: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON document; raise :class:`JsonError` for anything a peer should be told about."""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError(f"not valid UTF-8 (byte {exc.start})") from None
    if nesting_depth(raw) > max_depth:
        raise JsonError(f"nested deeper than {max_depth} levels")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JsonError(str(exc)) from None
    _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    """Every string (and key) must be encodable: a lone surrogate escape is refused."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise JsonError("a string contains a lone surrogate (\\ud800-\\udfff escape)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
