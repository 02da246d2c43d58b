"""Which words of a caption the robot's text encoder never learnt from (issue 17: the operator
sees a misunderstanding before fetching a picture).

The read-back says what the robot understood ("colour=?"); this says why: "not in the robot's
vocabulary: tangerine". The bundle's read-back section carries the words of the captions the
encoder and its read-back heads were trained on (`ReadBackSpec.known_words`, written by export
from the checkpoint); a caption word that is none of them, nor one typing slip away from one,
is reported, so the operator can say "orange" instead of "tangerine".

A typing slip is what the training's own augmentation produces and the encoder reads through:
one letter dropped, added, changed or two swapped (words of at least `MIN_FUZZY_LENGTH`
letters), letters doubled ("reeed"), or two known words run together ("redjacket"). Matching
uses the single-deletion neighbourhoods of SymSpell (Garbe 2012), hand-written because it is a
dozen lines over a set of a few hundred words and the robot installs nothing it does not need;
its approximation (a substitution is found through a shared deletion, which also admits a few
two-edit pairs such as a swap of non-adjacent letters) errs towards "known", i.e. towards
saying nothing.

Stdlib only: it runs on the robot. Bounded work for any caption: the tokenizer has already cut
it to `tokenizer.MAX_LENGTH` characters, and each word costs O(length) set lookups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from edge_runtime import tokenizer

WORD = re.compile(r"[a-z]+")
"""A word: a run of letters of the normalised caption (digits and punctuation separate words)."""
MAX_KNOWN_WORDS = 8192
"""A bundle's limit: the rescue grammar and its training lexicon have a few hundred."""
MAX_WORD_LENGTH = 32
MIN_FUZZY_LENGTH = 4
"""Shorter words must match exactly: one edit turns "red" into "bed" and "tan" into "ton"."""
MAX_REPORTED = 6
"""At most this many unknown words in a reply (in caption order): enough to rephrase, and the
reply stays short."""


def words_of(text: str) -> list[str]:
    """The words of `text` as the robot reads it (the tokenizer's normalisation, then letter
    runs), in order, repeats kept."""
    return WORD.findall(tokenizer.normalize(text))


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def _squeeze(word: str) -> str:
    """Runs of one letter → one letter: "reeed" and "red" → "red"."""
    return re.sub(r"(.)\1+", r"\1", word)


class KnownWords:
    """A vocabulary and its typo neighbourhoods, built once per bundle."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = frozenset(words)
        fuzzy = [w for w in self.words if len(w) >= MIN_FUZZY_LENGTH]
        self._deleted = {d for w in fuzzy for d in _deletions(w)}  # known words less a letter
        self._fuzzy = frozenset(fuzzy)
        self._squeezed = {_squeeze(w) for w in self.words}

    def knows(self, word: str) -> bool:
        """Whether `word` is a known word or one typing slip from one (module docstring)."""
        if word in self.words or _squeeze(word) in self._squeezed:
            return True
        if len(word) >= MIN_FUZZY_LENGTH:
            if word in self._deleted:  # a letter dropped
                return True
            for shorter in _deletions(word):
                if shorter in self._fuzzy or shorter in self._deleted:  # added / changed, swapped
                    return True
        # Two known words run together ("redjacket"), each at least two letters.
        return any(
            word[:i] in self.words and word[i:] in self.words for i in range(2, len(word) - 1)
        )

    def unknown(self, text: str) -> tuple[str, ...]:
        """The words of `text` this vocabulary does not know, each once, in caption order, at
        most `MAX_REPORTED`; () for an empty vocabulary (a bundle without one reports nothing)."""
        if not self.words:
            return ()
        found: list[str] = []
        for word in words_of(text):
            if not self.knows(word):
                shown = word[:MAX_WORD_LENGTH]  # a 200-letter "word" is reported by its start
                if shown in found:
                    continue
                found.append(shown)
                if len(found) == MAX_REPORTED:
                    break
        return tuple(found)
