"""Drawing what the robot understood (edge_runtime.canonical, issue 17): the manifest's canonical
caption refused when hostile, the open values' choice (deterministic, varied, never an excluded
combination the operator did not ask for), and the engine drawing through it — or not, with
`--draw caption`, an off-domain caption or a bundle without one."""

from __future__ import annotations

import collections
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import bundle as b
from edge_runtime import canonical
from edge_runtime.cli import main
from edge_runtime.engine import Engine, EngineError

VALUES = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "white", "black"),
    "terrain": ("rubble", "grass", "sand", "snow", "water", "mud"),
    "pose": ("standing", "sitting", "lying"),
    "position": ("left", "center", "right"),
    "helmet": ("no", "yes"),
}
ATTRIBUTES = tuple(VALUES.items())
CANONICAL: dict[str, Any] = {
    "template": "a person {colour} {pose} {terrain} {position}, {helmet}",
    "phrases": {
        "colour": [f"in {'an' if c[0] in 'aeiou' else 'a'} {c} jacket" for c in VALUES["colour"]],
        "pose": list(VALUES["pose"]),
        "terrain": ["on rubble", "on grass", "on sand", "in the snow", "in flood water", "in mud"],
        "position": ["on the left", "in the center", "on the right"],
        "helmet": ["without a helmet", "wearing a helmet"],
    },
    "excluded": [{"colour": "red", "terrain": "snow"}, {"colour": "green", "terrain": "sand"}],
}
OPEN = b.NOT_STATED


def spec_with(canonical_dict: dict[str, Any] | None = None) -> b.ReadBackSpec:
    d = {
        "attributes": [{"name": n, "values": list(v)} for n, v in ATTRIBUTES],
        "off_domain_threshold": 0.5,
        "canonical": CANONICAL if canonical_dict is None else canonical_dict,
    }
    return b.ReadBackSpec.from_dict(d, "manifest.json readback")


SPEC = spec_with()


# -- the manifest section ----------------------------------------------------------------------


def test_canonical_round_trips_through_the_manifest_dict() -> None:
    assert SPEC.canonical is not None
    assert b.ReadBackSpec.from_dict(SPEC.to_dict(), "x") == SPEC
    assert SPEC.to_dict()["canonical"] == CANONICAL
    # (attribute index, value index) pairs, sorted: red (0) × snow (3), green (3) × sand (2).
    assert SPEC.canonical.excluded == (((0, 0), (1, 3)), ((0, 3), (1, 2)))


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(CANONICAL)
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("template",), "a person {colour} {pose} {terrain} {position}", "once"),
        (("template",), "a person {colour} {colour} {pose} {terrain} {position} {helmet}", "once"),
        (("template",), "a {person} {colour} {pose} {terrain} {position} {helmet}", "once"),
        (("template",), "a person {colour} {pose} {terrain} {position} {helmet} }", "braces"),
        (("template",), "A PERSON {colour} {pose} {terrain} {position} {helmet}", "tokenizer"),
        (("template",), "x" * 121, "characters"),
        (("template",), 7, "template"),
        (("phrases", "pose"), ["standing", "sitting"], "3 phrases"),
        (("phrases", "pose"), KeyError, "lacks attribute 'pose'"),
        (("phrases", "wings"), ["a", "b"], "unknown field 'wings'"),
        (("phrases", "pose", 0), "standing {helmet}", "pose[0]"),
        (("phrases", "pose", 1), "Sitting", "pose[1]"),
        (("phrases", "pose", 1), "s" * 49, "pose[1]"),
        (("phrases", "pose", 2), 3, "pose[2]"),
        (("phrases", "pose", 2), "sitting", "repeats a phrase"),
        (("phrases", "colour", 0), "in a red jacket" + " very" * 8, "colour[0]"),
        (("excluded", 0), {"colour": "red"}, "2..5 attributes"),
        (("excluded", 0), {"colour": "red", "wings": "two"}, "unknown attribute 'wings'"),
        (("excluded", 0), {"colour": "red", "terrain": "lava"}, "'lava' is not a value"),
        (("excluded", 0), ["red", "snow"], "should be an object"),
        (("excluded",), [{"colour": "red", "terrain": "snow"}] * 257, "at most 256"),
        (("surprise",), 1, "unknown field 'surprise'"),
    ],
)
def test_a_hostile_canonical_section_is_refused_with_one_line_naming_it(
    path: tuple[str, ...], value: Any, says: str
) -> None:
    with pytest.raises(b.BundleError) as caught:
        spec_with(_broken(path, value))
    message = str(caught.value)
    assert "\n" not in message and "manifest.json readback canonical" in message
    assert says in message


def test_a_canonical_caption_longer_than_the_tokenizer_reads_is_refused() -> None:
    long = {
        name: ["w" * 40 + " " + chr(97 + i) * 7 for i in range(len(v))]
        for name, v in VALUES.items()
    }
    with pytest.raises(b.BundleError, match=r"longest caption has .* tokenizer's 201"):
        spec_with({**CANONICAL, "phrases": long})


def test_canonical_needs_schema_version_5() -> None:
    manifest = json.loads(
        (Path(__file__).parents[1] / "fixtures/tiny_bundle/manifest.json").read_text()
    )
    manifest["readback"]["canonical"] = CANONICAL
    assert manifest["schema_version"] == b.KNOWN_WORDS_SCHEMA_VERSION
    with pytest.raises(
        b.BundleError, match="'canonical' needs schema_version 5, the manifest says 4"
    ):
        b.Manifest.from_dict(manifest, "manifest.json")
    manifest["schema_version"] = b.CANONICAL_SCHEMA_VERSION
    parsed = b.Manifest.from_dict(manifest, "manifest.json")
    assert parsed.readback is not None and parsed.readback.canonical is not None
    assert parsed.to_dict()["schema_version"] == b.CANONICAL_SCHEMA_VERSION


# -- choosing the open values -----------------------------------------------------------------


def test_stated_values_are_kept_and_open_ones_vary_over_images() -> None:
    understood = ["green", OPEN, OPEN, "left", OPEN]
    chosen = [canonical.choose(SPEC, understood, "green jacket left", 0, k) for k in range(200)]
    assert {c[0] for c in chosen} == {3} and {c[3] for c in chosen} == {0}
    # Each open attribute takes every value it may take (sand never: green × sand is excluded).
    assert {c[1] for c in chosen} == {0, 1, 3, 4, 5}
    assert {c[2] for c in chosen} == {0, 1, 2} and {c[4] for c in chosen} == {0, 1}


def test_the_choice_is_uniform_over_the_allowed_combinations() -> None:
    counts = collections.Counter(
        canonical.choose(SPEC, ["red", OPEN, "lying", "left", "no"], "red", 0, k)[1]
        for k in range(6000)
    )
    assert 3 not in counts  # red × snow: excluded
    assert set(counts) == {0, 1, 2, 4, 5}
    for value in counts.values():  # 1,200 expected each; binomial sd ≈ 31
        assert abs(value - 1200) < 160


def test_the_choice_is_a_function_of_caption_seed_and_index_alone() -> None:
    understood = [OPEN] * 5
    first = [canonical.choose(SPEC, understood, "anyone", 7, k) for k in range(50)]
    assert first == [canonical.choose(SPEC, understood, "anyone", 7, k) for k in range(50)]
    assert first != [canonical.choose(SPEC, understood, "anyone", 8, k) for k in range(50)]
    assert first != [canonical.choose(SPEC, understood, "anyone?", 7, k) for k in range(50)]


def test_an_excluded_combination_the_operator_asked_for_is_drawn_as_asked() -> None:
    for k in range(20):
        chosen = canonical.choose(SPEC, ["red", "snow", OPEN, OPEN, OPEN], "red in snow", 0, k)
        assert chosen[:2] == (0, 3)
    assert canonical.render(SPEC, (0, 3, 2, 0, 1)) == (
        "a person in a red jacket lying in the snow on the left, wearing a helmet"
    )


# -- the engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canonical_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """The tiny bundle as export now writes it: its read-back carries a canonical caption."""
    root = tmp_path_factory.mktemp("canonical") / "bundle"
    shutil.copytree(tiny_bundle, root)
    data = json.loads((root / b.MANIFEST_NAME).read_text())
    data["readback"]["canonical"] = CANONICAL
    data["schema_version"] = b.CANONICAL_SCHEMA_VERSION
    (root / b.MANIFEST_NAME).write_text(json.dumps(data))
    return root


CAPTION = "survivor in an orange jacket lying on rubble, left side"


def test_engine_draws_the_canonical_caption_of_what_it_understood(canonical_bundle: Path) -> None:
    engine = Engine(canonical_bundle, precision="fp32", threads=1)
    words = Engine(canonical_bundle, precision="fp32", threads=1, draw="caption")
    assert engine.draws_understood and not words.draws_understood
    understood = engine.understand(CAPTION)
    assert understood is not None and not understood.is_off_domain
    drawn = [engine.drawn_caption(CAPTION, 3, k) for k in range(4)]
    assert all(d.startswith("a person in ") and d != CAPTION for d in drawn)
    for d in drawn:  # every stated value is in the drawn caption
        for reading in understood.attributes:
            if reading.stated:
                spec = engine.manifest.readback
                assert spec is not None and spec.canonical is not None
                a = [name for name, _ in spec.attributes].index(reading.name)
                phrase = spec.canonical.phrases[a][spec.attributes[a][1].index(reading.value)]
                assert phrase in d
    images = engine.generate(CAPTION, n=4, seed=3)
    expected = np.concatenate(
        [words.generate(d, seed=3, first_index=k) for k, d in enumerate(drawn)]
    )
    np.testing.assert_array_equal(images, expected)
    # One image alone is the same image as in a batch (the choice depends on its index only).
    np.testing.assert_array_equal(engine.generate(CAPTION, seed=3, first_index=2), images[2:3])
    assert words.drawn_caption(CAPTION, 3, 0) == CAPTION
    np.testing.assert_array_equal(
        words.generate(CAPTION, n=2, seed=3),
        Engine(canonical_bundle, precision="fp32", draw="caption").generate(CAPTION, n=2, seed=3),
    )


def test_engine_reads_each_caption_back_once_however_many_images(
    canonical_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(canonical_bundle, precision="fp32", threads=1, cache_size=0)  # no cache
    calls: list[str] = []
    understand = engine.understand

    def counted(caption: str) -> Any:
        calls.append(caption)
        return understand(caption)

    monkeypatch.setattr(engine, "understand", counted)
    engine.generate_batch([(CAPTION, 1, k) for k in range(4)] + [("draw a cat", 1, 0)] * 2)
    assert calls == [CAPTION, "draw a cat"]


def test_engine_draws_an_off_domain_caption_and_an_old_bundle_from_the_words(
    canonical_bundle: Path, tiny_bundle: Path
) -> None:
    engine = Engine(canonical_bundle, precision="fp32", threads=1)
    understood = engine.understand("draw a cat")
    assert understood is not None and understood.is_off_domain
    assert engine.drawn_caption("draw a cat", 0, 0) == "draw a cat"
    old = Engine(tiny_bundle, precision="fp32", threads=1)  # schema 4: no canonical caption
    assert old.has_readback and not old.draws_understood
    assert old.drawn_caption(CAPTION, 0, 0) == CAPTION


def test_engine_refuses_an_unknown_draw_mode(tiny_bundle: Path) -> None:
    with pytest.raises(EngineError, match="--draw must be one of understood, caption"):
        Engine(tiny_bundle, precision="fp32", draw="whatever")


def test_cli_generate_says_what_each_image_was_drawn_as(
    canonical_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", CAPTION, "--bundle", str(canonical_bundle), "--out", str(tmp_path)]
    assert main([*argv, "--precision", "fp32", "--seed", "3", "-n", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    engine = Engine(canonical_bundle, precision="fp32", threads=1)
    lines = err.splitlines()
    assert f"#0 drawn as: {engine.drawn_caption(CAPTION, 3, 0)}" in lines
    assert f"#1 drawn as: {engine.drawn_caption(CAPTION, 3, 1)}" in lines
    assert main([*argv, "--precision", "fp32", "--seed", "3", "--draw", "caption"]) == 0
    assert "drawn as" not in capsys.readouterr().err
