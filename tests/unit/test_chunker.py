"""voicebot.core.chunker: early first clause, sentence chunks, markdown-free, split-invariant."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.core.chunker import SpeechChunker, clean_for_speech

REPLIES = [
    "Sure, I can help with that. The meeting is at 3.30 pm on Tuesday, and Dr. Smith will join. "
    "Bring about 1,000 copies, e.g. the long version... Anything else?",
    "Well — it depends. Mr. and Mrs. Jones moved to the U.S. in 1998! They bought apples, pears, etc. "
    "for the party. Pi is roughly 3.14159; that's close enough for most uses.",
    "Here are the steps:\n\n1. Open the **settings** page.\n2. Click _Save_.\n- Then check `config.yaml`.\n"
    "# Done\nSee [the docs](https://example.com/a.b?c=d) for more. 😀 Have fun!",
    "Here is some code:\n```python\nx = 1. y = 2\nprint('hi. there')\n```\nThat prints a greeting. "
    "It is short, simple and sweet. Okay? Okay!",
    "A very long run on sentence without any proper punctuation that just keeps going and going "
    "because the model forgot to stop and it really should have stopped a long time ago but it did "
    "not and so we must cut it somewhere sensible before it grows beyond the limit of the chunker",
    "No. I don't think so! Really? Yes... maybe. The temperature is 21.5 degrees at 10:30 today.",
    'He said "stop." Then he left. She replied (quietly.) And that was that, I think.',
]


def chunk_all(pieces: list[str], **kwargs: int) -> list[str]:
    chunker = SpeechChunker(**kwargs)
    out: list[str] = []
    for piece in pieces:
        out += chunker.push(piece)
    return out + chunker.flush()


def words(text: str) -> list[str]:
    """The words a listener hears; a lone "—" or "..." is not one (such chunks are dropped)."""
    return [w for w in text.split() if re.search(r"\w", w)]


def random_split(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.choice([1, 1, 2, 3, 4, 5, 8, 13])
        pieces.append(text[i : i + n])
        i += n
    return pieces


# --- cleaning --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**bold** and __strong__", "bold and strong"),
        ("*it* and _it_", "it and it"),
        ("use `pip install`", "use pip install"),
        ("# Heading\n## Sub", "Heading Sub"),
        ("- one\n* two\n+ three\n1. four\n2) five", "one two three four five"),
        ("see [the docs](https://x.org/a.b) now", "see the docs now"),
        ("![a cat](cat.png)", "a cat"),
        ("before\n```python\nx = 1\n```\nafter", "before after"),
        ("before\n```\nunclosed code", "before"),
        ("great 🎉 job 👍🏽 ok ❤️", "great job ok"),
        ("  lots\n\n of   \t space ", "lots of space"),
        ("snake_case and 2 * 3 and a - b", "snake_case and 2 * 3 and a - b"),
        ("> quoted text", "quoted text"),
        ("one\n---\ntwo", "one two"),
        ("**Note.** Done", "Note. Done"),
    ],
)
def test_clean_for_speech(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


# --- cutting ---------------------------------------------------------------------------------


def test_first_chunk_leaves_at_first_clause() -> None:
    chunker = SpeechChunker()
    assert chunker.push("Well, let me think about it, ") == []  # "Well," is too short
    # The comma after "it" is confirmed by the next non-space character only.
    assert chunker.push("s") == ["Well, let me think about it,"]


def test_later_chunks_wait_for_sentences_and_merge_short_ones() -> None:
    text = "Yes, of course I can. Go on. It is a fine day today. Sure. Bye."
    chunks = chunk_all(list(text))
    assert chunks == ["Yes, of course I can.", "Go on. It is a fine day today.", "Sure. Bye."]


def test_boundary_needs_the_next_character() -> None:
    chunker = SpeechChunker(first_min_words=1)
    assert chunker.push("I met Dr") == []
    assert chunker.push(".") == []
    assert chunker.push(" ") == []
    assert chunker.push("Smith today. ") == []
    assert chunker.push("He") == ["I met Dr. Smith today."]
    assert chunker.flush() == ["He"]


@pytest.mark.parametrize(
    "text",
    [
        "The value of pi is 3.14 and that is all there is to it",
        "We sold 1,000 units and then 2,500 more units last year",
        "Ask Mr. Brown or Mrs. Green or Dr. Who about it later on today",
        "Bring fruit, e.g. apples, and nuts, i.e. almonds to the party tonight",
        "Apples, pears, etc. are all good fruit to eat every day",
        "He lives in the U.S. and works for a company in town",
        "Well... I am not really sure about that one at all",
        "It is about approx. five miles from here to the town",
    ],
)
def test_no_cut_inside_numbers_abbreviations_ellipses(text: str) -> None:
    # After the first chunk only sentence ends cut, and min_words=1 would take any of them.
    chunks = chunk_all(list("Okay. " + text), first_min_words=1, min_words=1)
    assert chunks == ["Okay.", text]


def test_etc_can_end_a_sentence() -> None:
    text = "Okay. I like apples, pears, etc. Then I eat them all."
    chunks = chunk_all(list(text), first_min_words=1, min_words=1)
    assert chunks == ["Okay.", "I like apples, pears, etc.", "Then I eat them all."]


def test_newlines_and_closing_quotes_end_sentences() -> None:
    chunks = chunk_all(list('He said "stop the car now." Then he left the room quickly\nAnd then more text'))
    assert chunks == ['He said "stop the car now."', "Then he left the room quickly", "And then more text"]


def test_hard_cut_at_max_chars_on_a_space() -> None:
    text = " ".join(["word"] * 100)
    chunks = chunk_all([text], max_chars=50)
    assert all(len(c) <= 50 for c in chunks)
    assert words(" ".join(chunks)) == words(text)
    assert len(chunks) > 1


def test_hard_cut_prefers_a_clause_boundary() -> None:
    text = "This first part has enough words to go. " + "Then a long clause, " + "and more " * 30
    chunks = chunk_all([text], max_chars=80)
    assert chunks[1] == "Then a long clause,"


def test_code_block_is_never_spoken_or_split() -> None:
    text = "Here it is:\n```\nfor i in range(3). Do this. Then that.\n```\nThat loop runs three times, ok?"
    chunks = chunk_all(list(text))
    assert chunks == ["Here it is:", "That loop runs three times, ok?"]


def test_no_empty_or_punctuation_only_chunks() -> None:
    chunks = chunk_all(list("... 🎉!\n\n- \n```\ncode\n```\n. Hi there, friend. ?! —"))
    assert chunks
    assert all(re.search(r"\w", c) for c in chunks)
    assert "Hi there, friend." in " ".join(chunks)


def test_flush_resets_for_the_next_reply() -> None:
    chunker = SpeechChunker()
    chunker.push("Some text without an end")
    assert chunker.flush() == ["Some text without an end"]
    assert chunker.flush() == []
    assert chunker.push("Again, and now the first chunk is early. ") == []
    assert chunker.push("X") == ["Again, and now the first chunk is early."]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SpeechChunker(min_words=0)


# --- split invariance --------------------------------------------------------------------------


@pytest.mark.parametrize("reply", REPLIES)
def test_words_do_not_depend_on_token_split(reply: str) -> None:
    expected = words(clean_for_speech(reply))
    assert words(" ".join(chunk_all([reply]))) == expected
    rng = random.Random(reply)
    for _ in range(200):
        assert words(" ".join(chunk_all(random_split(reply, rng)))) == expected


@settings(max_examples=300, deadline=None)
@given(
    reply=st.sampled_from(REPLIES),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=60),
    first=st.integers(1, 5),
    later=st.integers(1, 10),
    first_max=st.sampled_from([0, 1, 4, 6]),
)
def test_words_invariant_property(reply: str, cuts: list[int], first: int, later: int, first_max: int) -> None:
    points = sorted({0, len(reply), *(c for c in cuts if c < len(reply))})
    pieces = [reply[a:b] for a, b in itertools.pairwise(points)]
    chunks = chunk_all(pieces, first_min_words=first, min_words=later, first_max_words=first_max)
    assert words(" ".join(chunks)) == words(clean_for_speech(reply))
    assert all(c.strip() and re.search(r"\w", c) for c in chunks)


_TOKENS = "the Dr. 3.14 1,000 e.g. U.S. etc. end. Yes! why? wait... **bold** _it_ `code` 🎉 — - a, b; c: (x)"
_WORD = st.sampled_from([*_TOKENS.split(" "), '"quote."', "\n", "\n- ", "\n1. ", "\n# "])


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(_WORD, max_size=80), seed=st.integers(0, 2**32 - 1))
def test_words_invariant_on_generated_text(tokens: list[str], seed: int) -> None:
    text = " ".join(tokens)
    pieces = random_split(text, random.Random(seed))
    chunks = chunk_all(pieces, max_chars=60)
    assert words(" ".join(chunks)) == words(clean_for_speech(text))
    assert all(re.search(r"\w", c) for c in chunks)


def test_first_chunk_leaves_after_max_words_without_a_comma() -> None:
    chunker = SpeechChunker(first_max_words=5)
    out: list[str] = []
    reply = "The capital of France is Paris and it is lovely in spring. More text follows here"
    for word in reply.split():
        out += chunker.push(word + " ")
    assert out[0] == "The capital of France is"
    assert out[1] == "Paris and it is lovely in spring."
    # A word is only complete once the next one starts: "is" alone must not be cut yet.
    early = SpeechChunker(first_max_words=5)
    assert early.push("The capital of France is") == []
    assert early.push(" P") == ["The capital of France is"]
    # A clause boundary reached before the limit still wins; without the option nothing is cut.
    assert SpeechChunker(first_max_words=5).push("Yes, of course, I can help you today x")[0] == "Yes, of course,"
    assert SpeechChunker().push("The capital of France is Paris and it is lovely x") == []


def test_long_code_block_is_skipped_while_streaming() -> None:
    code = "".join(f"    x{i} = compute({i}). Then more; code here\n" for i in range(100))
    text = "Here is the script:\n```python\n" + code + "```\nIt counts to a hundred and then stops. Next part"
    chunker = SpeechChunker()
    out: list[str] = []
    for i in range(0, len(text), 3):
        out += chunker.push(text[i : i + 3])
    # Text after the block is chunked as it streams, not held until flush.
    assert out == ["Here is the script:", "It counts to a hundred and then stops."]
    assert chunker.flush() == ["Next part"]



def test_hurry_releases_complete_words_when_the_listener_is_about_to_run_dry() -> None:
    c = SpeechChunker(first_min_words=1, min_words=6)
    assert c.push("Sure. ") == [] and c.push("The") == ["Sure."]  # later chunks: whole sentences
    assert c.push(" knight rode to the") == []
    assert c.hurry() == ["The knight rode to"], "only complete words: 'the' may still become 'there'"
    assert c.push(" castle, and the dragon wa") == []
    assert c.hurry() == ["the castle,"], "at a clause boundary when there is one"
    assert c.hurry() == ["and the dragon"]
    assert c.hurry() == [], "'wa' is not a word yet"
    assert c.push("ited.") == [] and c.flush() == ["waited."]
