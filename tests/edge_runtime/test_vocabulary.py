"""The read-back's vocabulary check (edge_runtime.vocabulary): which words of a caption the
robot never learnt, tolerant of the typing slips its encoder reads through; and the bundle's
`known_words` field, validated like every manifest field."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import bundle as b
from edge_runtime import protocol, readback, vocabulary
from edge_runtime.client import BadReplyError, parse_readback

KNOWN = vocabulary.KnownWords(
    ["a", "in", "on", "the", "red", "orange", "jacket", "person", "lying", "rubble", "left"]
)


def test_words_are_the_normalised_letter_runs() -> None:
    assert vocabulary.words_of("  RED-Jacket, 2 persons!! Müd ") == [
        "red", "jacket", "persons", "mud",
    ]  # fmt: skip
    assert vocabulary.words_of("123 ...") == []


@pytest.mark.parametrize(
    "word",
    [
        "jacket",  # exact
        "jaket",  # a letter dropped
        "jacckets"[:-1],  # a letter added ("jaccket")
        "jecket",  # a letter changed
        "jakcet",  # two letters swapped
        "reeeed",  # letters doubled, also in short words
        "redjacket",  # two known words run together
        "orangejacket",
    ],
)
def test_typing_slips_of_known_words_are_known(word: str) -> None:
    assert KNOWN.knows(word)


@pytest.mark.parametrize("word", ["tangerine", "crimson", "bed", "rod", "cat", "jxxket", "xx"])
def test_other_words_are_unknown_and_short_words_must_match_exactly(word: str) -> None:
    assert not KNOWN.knows(word)


def test_unknown_lists_each_word_once_in_caption_order_and_is_bounded() -> None:
    assert KNOWN.unknown("a person in tangerine lying in the drifts, tangerine!") == (
        "tangerine",
        "drifts",
    )
    assert KNOWN.unknown("red jacket on the left") == ()
    many = " ".join(f"word{c}" for c in "bcdfghjk").replace("word", "zz")
    assert len(KNOWN.unknown(many)) == vocabulary.MAX_REPORTED
    long = KNOWN.unknown("q" * 150 + "w")  # one 151-letter word: reported by its start
    assert long == ("q" * vocabulary.MAX_WORD_LENGTH,)
    assert vocabulary.KnownWords([]).unknown("anything at all") == ()  # no vocabulary: silent


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_unknown_never_fails_and_stays_within_the_reply_budget(text: str) -> None:
    words = KNOWN.unknown(text)
    assert len(words) <= vocabulary.MAX_REPORTED and len(set(words)) == len(words)
    for word in words:
        assert vocabulary.WORD.fullmatch(word) and len(word) <= vocabulary.MAX_WORD_LENGTH
    # The reply field they make parses back (the client checks every word).
    understood = readback.Understood(
        (readback.AttributeReading("colour", "red", 0.9),), 0.1, 0.5, words
    )
    body = protocol.reply_body(
        "done", "v1", [("cmd", "understand"), *readback.reply_fields(understood)]
    )
    parsed = parse_readback(protocol.parse_reply(protocol.frame(body)))
    assert parsed is not None and parsed.unknown_words == words


def test_client_refuses_a_reply_with_bad_unknown_words() -> None:
    fields = [("cmd", "understand"), ("understood", ["colour:red:0.90"]), ("off_domain", "0.10")]
    for bad, why in (
        (["Red"], "is not 1..32 letters"),
        (["a" * 33], "is not 1..32 letters"),
        ([f"w{c}" for c in "abcdefg"], "at most 6"),
    ):
        body = protocol.reply_body("done", "v1", [*fields, ("unknown", bad)])
        with pytest.raises(BadReplyError, match=why):
            parse_readback(protocol.parse_reply(protocol.frame(body)))
    body = protocol.reply_body("done", "v1", [("cmd", "understand"), ("unknown", ["cat"])])
    with pytest.raises(BadReplyError, match="without understood"):
        parse_readback(protocol.parse_reply(protocol.frame(body)))


# -- the bundle field ---------------------------------------------------------------------------


TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_bundle"


def _with_manifest(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "bundle"
    shutil.copytree(TINY, out)
    manifest = json.loads((out / b.MANIFEST_NAME).read_text())
    change(manifest)
    (out / b.MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def test_known_words_round_trip_and_an_old_bundle_has_none(tmp_path: Path) -> None:
    manifest = b.load_bundle(TINY).manifest
    assert manifest.readback is not None and "jacket" in manifest.readback.known_words
    again = b.Manifest.from_dict(copy.deepcopy(manifest.to_dict()), "x")
    assert again.readback == manifest.readback

    def drop(m):  # type: ignore[no-untyped-def]
        del m["readback"]["known_words"]
        m["schema_version"] = 2

    old = b.load_bundle(_with_manifest(tmp_path, drop)).manifest
    assert old.readback is not None and old.readback.known_words == ()


@pytest.mark.parametrize(
    ("words", "version", "message"),
    [
        (["red", "Red"], 4, "known_words[1] is 'Red', expected 1...32 letters a-z"),
        (["red", "red"], 4, "field 'known_words' repeats a word"),
        (["a" * 33], 4, "known_words[0]"),
        ([1], 4, "known_words[0] is 1"),
        ("red", 4, "field 'known_words' should be list, got str"),
        (["red"] + [f"w{i}" for i in range(8192)], 4, "8193 entries, at most 8192"),
        (["red"], 3, "field 'known_words' needs schema_version 4, the manifest says 3"),
    ],
)
def test_bad_known_words_are_refused_in_one_line(
    tmp_path: Path, words: object, version: int, message: str
) -> None:
    def change(m):  # type: ignore[no-untyped-def]
        m["readback"]["known_words"] = words
        m["schema_version"] = version

    with pytest.raises(b.BundleError) as refused:
        b.load_bundle(_with_manifest(tmp_path, change))
    assert message in str(refused.value) and "\n" not in str(refused.value)
