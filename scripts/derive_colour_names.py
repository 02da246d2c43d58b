"""Print train.data.colour_names.LEXICON_COLOURS afresh from the xkcd colour survey that
matplotlib ships (`pip install -e ".[lexicon]"`). A script rather than `python -m` of the
module: the excluded words come from train.data.phrasing and train.text.off_domain, and
train.data may import neither upward nor in a circle (tests/test_import_graph.py)."""

from __future__ import annotations

from train.data import colour_names, phrasing
from train.text import off_domain

if __name__ == "__main__":
    excluded = phrasing.lexicon_excluded_words(off_domain.vocabulary())
    for value, names in colour_names.derive_from_xkcd(excluded).items():
        print(f"    {value!r}: {names!r},")
