"""The JSON boundary every inbound parser goes through."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.core.safe_json import MAX_DEPTH, JsonError, loads, nesting_depth

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(JSON_VALUES)
def test_depth_is_counted_without_parsing_and_ignores_brackets_in_strings(value: object) -> None:
    text = json.dumps(value)
    assert nesting_depth(text) == depth_of(value)
    assert loads(text) == value


def test_deep_nesting_is_refused_before_the_decoder_recurses() -> None:
    for deep in ("[" * 100_000, "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000):
        with pytest.raises(JsonError, match="nested deeper"):
            loads(deep)
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert loads(json.dumps({"s": "[[[[" * 1000})) == {"s": "[[[[" * 1000}, "brackets in a string are text"


def test_undecodable_text_is_refused_with_a_reason() -> None:
    with pytest.raises(JsonError, match="UTF-8"):
        loads(b'{"a": "\xff\xfe"}')
    with pytest.raises(JsonError, match="surrogate"):
        loads('{"event_id": "\\ud800"}')
    with pytest.raises(JsonError, match="surrogate"):
        loads('{"\\udfff": 1}')
    assert loads('{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\U0001f600"}, "a surrogate pair is fine"
    with pytest.raises(JsonError):
        loads('{"a": ')

