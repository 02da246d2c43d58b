from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import tokenizer as tok


def test_tokenizer_alphabet_matches_reed_layout() -> None:
    assert len(tok.ALPHABET) == 70
    assert tok.ALPHABET.startswith("abcdefghijklmnopqrstuvwxyz0123456789")
    assert tok.ALPHABET.endswith(" ")
    assert tok.VOCAB_SIZE == 71
    # '-' is listed twice (as in Reed's string); the later position wins.
    assert tok.encode("-").ids == (tok.ALPHABET.rindex("-") + 1,)


def test_tokenizer_normalises_typography_case_and_accents() -> None:
    text = "Survivor in an “Orange” Jacket — lying on RUBBLE…  Café"
    assert tok.encode(text).text == 'survivor in an "orange" jacket - lying on rubble... cafe'


def test_tokenizer_unknown_characters_policy() -> None:
    # Controls and other whitespace separate words; emoji and CJK are dropped; ß folds to ss.
    assert tok.encode("orange\x00jacket\tleft\nside").text == "orange jacket left side"
    assert tok.encode("red 😀 coat 救").text == "red coat"
    assert tok.encode("straße").text == "strasse"
    assert tok.encode("ＲＥＤ ｃｏａｔ").text == "red coat"  # full width via NFKC


def test_tokenizer_truncates_at_201() -> None:
    encoded = tok.encode("a" * 500)
    assert encoded.length == tok.MAX_LENGTH == 201
    assert len(encoded.padded()) == 201


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01\x02", "😀😀", "\u200b\ufeff", "\t\n"])
def test_tokenizer_empty_after_normalisation_is_documented_error(text: str) -> None:
    with pytest.raises(tok.CaptionError, match="empty"):
        tok.encode(text)


def test_tokenizer_bytes_name_the_bad_offset() -> None:
    with pytest.raises(tok.CaptionError, match=r"byte 0xff at offset 3"):
        tok.encode_bytes(b"red\xffcoat")
    assert tok.encode_bytes("café".encode()).text == "cafe"


def test_tokenizer_one_megabyte_is_bounded() -> None:
    assert tok.encode("x" * 1_000_000).length == 201
    with pytest.raises(tok.CaptionError):
        tok.encode("😀" * 1_000_000)


def test_tokenizer_batch_pads_and_names_bad_row() -> None:
    rows, lengths = tok.encode_batch(["red coat", "a"], length=10)
    assert lengths == [8, 1]
    assert rows[1] == [tok.encode("a").ids[0]] + [tok.PAD_ID] * 9
    with pytest.raises(tok.CaptionError, match="caption 1"):
        tok.encode_batch(["ok", "   "])


def test_tokenizer_check_spec_names_the_field() -> None:
    tok.check_spec(dict(tok.SPEC), "here")
    bad = dict(tok.SPEC, max_length=100)
    with pytest.raises(ValueError, match="here: tokenizer max_length"):
        tok.check_spec(bad, "here")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400))
def test_tokenizer_any_text_gives_valid_ids_or_documented_error(text: str) -> None:
    try:
        encoded = tok.encode(text)
    except tok.CaptionError:
        return
    assert 1 <= encoded.length <= tok.MAX_LENGTH
    assert all(1 <= i < tok.VOCAB_SIZE for i in encoded.ids)
    assert tok.decode(encoded.ids) == encoded.text
    # Normalisation is idempotent: the robot re-encoding normalised text sees the same ids.
    assert tok.encode(encoded.text).ids == encoded.ids


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_tokenizer_any_bytes_give_valid_ids_or_documented_error(data: bytes) -> None:
    try:
        encoded = tok.encode_bytes(data)
    except tok.CaptionError:
        return
    assert all(1 <= i < tok.VOCAB_SIZE for i in encoded.ids)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=50))
def test_tokenizer_alphabet_text_roundtrips(text: str) -> None:
    # Text already in normal form (alphabet only, single spaces, no edge spaces) is unchanged.
    clean = " ".join("".join(c for c in text.lower() if c in tok.ALPHABET).split())
    if clean:
        assert tok.encode(clean).text == clean
