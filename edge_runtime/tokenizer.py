"""Caption text → character ids: the one implementation shared by training and the robot.

Standard library only. Training imports this module, so a model and the robot that runs it encode
text identically by construction; the bundle manifest records `SPEC` and the runtime refuses a
bundle whose tokenizer differs.

Normalisation policy (changing any step changes what every trained model sees: bump `VERSION`):

1. Unicode NFKC (full-width letters, ligatures, superscripts → plain forms).
2. Typographic punctuation folded to ASCII: curly quotes → ' and ", dashes and minus signs → -,
   ellipsis → ..., non-breaking and other Unicode spaces → space.
3. Accents removed (NFKD, combining marks dropped): "café" → "cafe".
4. Lower-cased.
5. Characters outside the 70-symbol alphabet: whitespace and control characters (tab, newline,
   NUL, ...) become a space, so words never run together; every other unknown character (emoji,
   CJK, symbols) is dropped. Reed's Lua code mapped unknowns to an all-zero one-hot vector, which
   is our padding id; dropping them instead keeps the receptive field of the convolutions on real
   characters.
6. Runs of spaces collapse to one; leading and trailing spaces are stripped. Only the first
   `MAX_INPUT_CHARS` input characters are read, which bounds the work on hostile input.
7. Truncated to `MAX_LENGTH` (201) characters, Reed's length.

The one documented error: `CaptionError` (a `ValueError`) when nothing is left after
normalisation (empty input, only spaces, only emoji), or when the input is not text at all
(`encode_bytes` on bytes that are not UTF-8: the message names the byte offset). Anything else
whatsoever — 1 MB strings, lone surrogates, control bytes — yields valid ids.

Ids: 0 is padding; alphabet symbol i has id i + 1, so `VOCAB_SIZE` = 71 and a one-hot encoding
over the 70 symbols is `one_hot(ids)[..., 1:]`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VERSION = 1
"""Tokenizer contract version; recorded in checkpoints and bundle manifests."""

# Reed et al. 2016 (icml2016/char-CNN-RNN) reuse Zhang et al.'s character-CNN alphabet plus space:
# 70 one-hot positions. Their string lists '-' twice; like their Lua lookup table (the later entry
# wins) we map '-' to the second position, so position 37 is never produced. Keeping the exact
# layout keeps one-hot positions compatible with Reed's released encoder.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "
MAX_LENGTH = 201
MAX_INPUT_CHARS = 65_536
"""Only this many input characters are read; the rest cannot survive truncation anyway."""
PAD_ID = 0
VOCAB_SIZE = len(ALPHABET) + 1

assert len(ALPHABET) == 70 and len(set(ALPHABET)) == 69

_CHAR_TO_ID = {ch: i + 1 for i, ch in enumerate(ALPHABET)}  # later duplicate wins, as in Lua
SPACE_ID = _CHAR_TO_ID[" "]

# Folded before the alphabet check. NFKC already maps many compatibility forms (e.g. '…' → '...',
# full-width '！' → '!'); these are the typographic characters it leaves alone.
_FOLD = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
        "\u02bc": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
        "\u2212": "-", "\u2043": "-", "\ufe58": "-", "\ufe63": "-", "\uff0d": "-",
        "\u2026": "...", "\u00d7": "x", "\u2044": "/", "\u2022": "*", "\u00b7": ".",
    }
)  # fmt: skip


class CaptionError(ValueError):
    """A caption that leaves no characters after normalisation, or bytes that are not UTF-8."""


@dataclass(frozen=True)
class Encoded:
    """One caption's ids (unpadded), their count and the normalised text they spell."""

    ids: tuple[int, ...]
    """Ids in 1..70 (37 unused, see `ALPHABET`), 1 to `MAX_LENGTH` of them."""
    text: str
    """The normalised, truncated caption the ids spell (what the model actually reads)."""

    @property
    def length(self) -> int:
        """Number of real (non-padding) characters."""
        return len(self.ids)

    def padded(self, length: int = MAX_LENGTH) -> list[int]:
        """The ids followed by `PAD_ID` up to `length` (which must be ≥ `self.length`)."""
        if length < len(self.ids):
            raise ValueError(f"cannot pad {len(self.ids)} ids to length {length}")
        return [*self.ids, *([PAD_ID] * (length - len(self.ids)))]


SPEC: dict[str, object] = {
    "version": VERSION,
    "alphabet": ALPHABET,
    "max_length": MAX_LENGTH,
    "pad_id": PAD_ID,
    "normalization": "nfkc+fold-typographic+strip-accents+lower+unknown-space-or-drop+squeeze",
}
"""What a checkpoint and a bundle manifest record; compare with `check_spec`."""


def _fold_char(ch: str) -> str:
    """One character of NFKC text → its alphabet form ('' when dropped, ' ' for separators)."""
    if ch in _CHAR_TO_ID:
        return ch
    if ch.isspace() or unicodedata.category(ch) in ("Cc", "Zs", "Zl", "Zp"):
        return " "
    # Case-fold then decompose: "É" → "e" + U+0301 (mark dropped), "ß" → "ss", "ﬁ" → "fi".
    return "".join(
        c for c in unicodedata.normalize("NFKD", ch.casefold()) if c in _CHAR_TO_ID and c != " "
    )


def normalize(text: str) -> str:
    """Apply the normalisation policy and truncate; may return '' (see `encode`)."""
    if not isinstance(text, str):
        raise CaptionError(f"caption must be text, got {type(text).__name__}")
    # Bounded work for hostile input: a caption longer than this is garbage whatever it holds.
    text = text[:MAX_INPUT_CHARS]
    # Lone surrogates (from surrogateescape decoding) are unknown characters: dropped.
    text = text.encode("utf-8", "ignore").decode("utf-8")
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    out: list[str] = []
    last_space = True  # strips leading spaces
    for ch in text:
        folded = _fold_char(ch)
        for c in folded:
            if c == " ":
                if last_space:
                    continue
                last_space = True
            else:
                last_space = False
            out.append(c)
        # Stop early on huge inputs: one extra character tells us truncation happened.
        if len(out) > MAX_LENGTH:
            break
    return "".join(out[:MAX_LENGTH]).rstrip(" ")


def encode(text: str) -> Encoded:
    """Normalise `text` and map it to ids; raises `CaptionError` when nothing is left."""
    normalised = normalize(text)
    if not normalised:
        raise CaptionError(
            "caption is empty after normalisation (no letters, digits or punctuation)"
        )
    return Encoded(ids=tuple(_CHAR_TO_ID[c] for c in normalised), text=normalised)


def encode_bytes(data: bytes) -> Encoded:
    """Decode UTF-8 bytes (naming the first bad byte's offset on failure) and `encode` them."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CaptionError(
            f"caption is not valid UTF-8: byte 0x{data[err.start]:02x} at offset {err.start}"
        ) from None
    return encode(text)


def encode_batch(
    texts: Iterable[str], length: int = MAX_LENGTH
) -> tuple[list[list[int]], list[int]]:
    """Encode and pad several captions to `length`: (ids rows, lengths). Raises `CaptionError`."""
    rows: list[list[int]] = []
    lengths: list[int] = []
    for i, text in enumerate(texts):
        try:
            encoded = encode(text)
        except CaptionError as err:
            raise CaptionError(f"caption {i}: {err}") from None
        ids = encoded.ids[:length]
        rows.append([*ids, *([PAD_ID] * (length - len(ids)))])
        lengths.append(len(ids))
    return rows, lengths


def decode(ids: Sequence[int]) -> str:
    """Ids back to the normalised text they spell; padding is skipped."""
    return "".join(ALPHABET[i - 1] for i in ids if 0 < i <= len(ALPHABET))


def check_spec(spec: object, where: str) -> None:
    """Raise `ValueError` naming `where` and the first field where `spec` differs from ours."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: tokenizer spec must be an object, got {type(spec).__name__}")
    for key, ours in SPEC.items():
        theirs = spec.get(key)
        if theirs != ours:
            raise ValueError(
                f"{where}: tokenizer {key} is {theirs!r:.60}, this code uses {ours!r:.60}"
            )
