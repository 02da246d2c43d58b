"""The engine on the committed tiny bundle: determinism, padding, cache, precision, providers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_runtime import tokenizer
from edge_runtime.bundle import CHAR_IDS, IMAGE, LENGTHS, NOISE, TEXT_EMBEDDING, load_bundle
from edge_runtime.engine import (
    SPIN_CONFIG_KEY,
    Engine,
    EngineError,
    choose_precision,
    to_uint8_rgb,
)

CAPTION = "survivor in an orange jacket lying on rubble, left side"


def test_engine_same_seed_gives_same_pixels_and_another_seed_does_not(engine: Engine) -> None:
    a = engine.generate(CAPTION, n=2, seed=7)
    engine.clear_cache()
    b = engine.generate(CAPTION, n=2, seed=7)
    c = engine.generate(CAPTION, n=2, seed=8)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # each image of a request has its own noise


PROMISE_ITEMS = [(CAPTION, 3, 0), ("red helmet on snow", 3, 1), ("Survivor ON RUBBLE!", 9, 5)]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("threads", [1, 2])
def test_engine_determinism_promise_identical_pixels_when_every_input_matches(
    tiny_bundle: Path, precision: str, threads: int
) -> None:
    """docs/PROTOCOL.md § Determinism: same bundle, caption (after normalisation), seed, image
    index, precision, thread count and batch composition, on the same onnxruntime build and CPU,
    give identical pixels, also from a freshly started engine (a robot restart)."""
    first = Engine(tiny_bundle, precision=precision, threads=threads, cache_size=0)
    restarted = Engine(tiny_bundle, precision=precision, threads=threads, cache_size=4)
    a = first.generate_batch(PROMISE_ITEMS)
    np.testing.assert_array_equal(a, restarted.generate_batch(PROMISE_ITEMS))
    np.testing.assert_array_equal(a, restarted.generate_batch(PROMISE_ITEMS))  # cached text
    np.testing.assert_array_equal(a, first.generate_batch(PROMISE_ITEMS))


def test_engine_caption_embedding_does_not_depend_on_its_batch_or_history(
    tiny_bundle: Path,
) -> None:
    """Found by the shuffled suite: an embedding cached from a batch with a 250-character caption
    differed in the last bits from the same caption encoded alone, so a `gen` gave other pixels
    depending on what had been asked before."""
    fresh = Engine(tiny_bundle, precision="fp32", threads=1, cache_size=0)
    alone = fresh.embed([CAPTION])
    used = Engine(tiny_bundle, precision="fp32", threads=1, cache_size=8)
    used.embed(["x" * 250, CAPTION, "HELMET " * 20])
    np.testing.assert_array_equal(used.embed([CAPTION]), alone)  # from the cache
    np.testing.assert_array_equal(fresh.embed(["x" * 250, CAPTION])[1], alone[0])
    np.testing.assert_array_equal(
        used.generate(CAPTION, n=2, seed=7), fresh.generate(CAPTION, n=2, seed=7)
    )


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_engine_determinism_promise_is_a_tolerance_across_threads_and_batches(
    tiny_bundle: Path, precision: str
) -> None:
    """Another thread count or batch composition may pick other kernels: fp32 stays within one
    uint8 level; int8 may flip a quantisation step where a value sits on its boundary, so only
    the mean difference is bounded (docs/PROTOCOL.md § Determinism)."""
    one = Engine(tiny_bundle, precision=precision, threads=1, cache_size=0)
    two = Engine(tiny_bundle, precision=precision, threads=2, cache_size=0)
    reference = one.generate_batch(PROMISE_ITEMS).astype(int)
    others = [
        two.generate_batch(PROMISE_ITEMS).astype(int),
        np.concatenate([one.generate_batch([item]) for item in PROMISE_ITEMS]).astype(int),
    ]
    for other in others:
        diff = np.abs(reference - other)
        if precision == "fp32":
            assert diff.max() <= 1
        else:
            assert diff.mean() <= 0.5


def test_engine_image_k_of_a_request_can_be_made_alone(engine: Engine) -> None:
    batch = engine.generate(CAPTION, n=4, seed=3)
    for k in range(4):
        alone = engine.generate(CAPTION, n=1, seed=3, first_index=k)[0]
        # One batch or another may round a pixel differently; never by more than one level.
        assert np.abs(batch[k].astype(int) - alone.astype(int)).max() <= 1


def test_engine_matches_the_graphs_run_by_hand_with_full_padding(
    engine: Engine, tiny_bundle: Path
) -> None:
    """The documented recipe, done independently: ids padded to max_length, noise row k from
    numpy.random.default_rng([seed, k]).standard_normal(noise_dim, dtype=float32), output
    mapped from value_range to 0..255."""
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    variant = m.variants["fp32"]
    text = ort.InferenceSession(str(bundle.graph_path(variant.text_encoder)))
    gen = ort.InferenceSession(str(bundle.graph_path(variant.generator)))
    captions = [CAPTION, "a", "x" * 300]
    rows, lengths = tokenizer.encode_batch(captions, m.model.max_length)
    (emb,) = text.run(
        [TEXT_EMBEDDING],
        {CHAR_IDS: np.array(rows, np.int64), LENGTHS: np.array(lengths, np.int64)},
    )
    noise = np.stack(
        [
            np.random.default_rng([5, k]).standard_normal(m.model.noise_dim, dtype=np.float32)
            for k in range(3)
        ]
    )
    (images,) = gen.run([IMAGE], {NOISE: noise, TEXT_EMBEDDING: emb})
    low, high = m.model.value_range
    expected = np.clip(np.rint((images - low) * 255 / (high - low)), 0, 255).astype(np.uint8)
    expected = expected.transpose(0, 2, 3, 1)
    got = engine.generate_batch([(c, 5, k) for k, c in enumerate(captions)])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # The engine pads short captions only as far as the model needs, with the same embedding.
    short = tokenizer.encode("a")
    assert m.model.min_input_length(short.length) < m.model.max_length
    np.testing.assert_allclose(engine.embed(["a"])[0], emb[1], rtol=1e-5, atol=1e-6)


def test_engine_caches_embeddings_by_normalised_text(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, precision="fp32", cache_size=2)
    first = engine.generate("Survivor  ON Rubble ", seed=1)
    again = engine.generate("survivor on rubble", seed=1)
    np.testing.assert_array_equal(first, again)
    stats = engine.cache_stats()
    assert (stats.misses, stats.hits, stats.size) == (1, 1, 1)
    engine.generate("second caption", seed=1)
    engine.generate("third caption", seed=1)  # evicts the least recently used: rubble
    assert engine.cache_stats().size == 2
    engine.generate("survivor on rubble", seed=1)
    assert engine.cache_stats().misses == 4
    engine.generate_batch([("third caption", 1, 0), ("third caption", 1, 1)])
    assert engine.cache_stats().hits == 2  # one look-up per distinct caption


def test_engine_batch_of_different_captions_matches_one_by_one(engine: Engine) -> None:
    captions = ["a", CAPTION, "firefighter in a yellow helmet", "x" * 250]
    batch = engine.generate_batch([(c, 9, k) for k, c in enumerate(captions)])
    for k, caption in enumerate(captions):
        alone = engine.generate(caption, n=1, seed=9, first_index=k)[0]
        assert np.abs(batch[k].astype(int) - alone.astype(int)).max() <= 1


def test_engine_refuses_a_caption_that_normalises_to_nothing(engine: Engine) -> None:
    with pytest.raises(tokenizer.CaptionError, match="empty after normalisation"):
        engine.generate("🚑 🔥")
    with pytest.raises(tokenizer.CaptionError, match="caption 1:"):
        engine.generate_batch([("fine", 0, 0), ("   ", 0, 1)])


def test_engine_auto_precision_measures_the_variants_that_passed_the_gate(
    tiny_bundle: Path,
) -> None:
    engine = Engine(tiny_bundle, precision="auto")
    measured = engine.info.selection_ms
    assert set(measured) == {"fp32", "int8"}
    int8_pays = measured["int8"] <= 0.9 * measured["fp32"]
    assert engine.info.precision == ("int8" if int8_pays else "fp32")
    assert engine.generate(CAPTION, seed=1).shape == (1, 64, 64, 3)
    # Only the chosen variant's sessions stay open.
    chosen = engine.manifest.variants[engine.info.precision]
    assert set(engine.bundle.sessions) == {chosen.text_encoder, chosen.generator, chosen.readback}


@pytest.fixture
def gate_failed_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["int8"]["gate_passed"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_engine_auto_never_picks_a_variant_that_failed_the_gate(
    gate_failed_bundle: Path, caplog
) -> None:
    engine = Engine(gate_failed_bundle, precision="auto")
    assert engine.info.precision == "fp32" and engine.info.selection_ms == {}
    with caplog.at_level(logging.WARNING, logger="edge_runtime.engine"):
        forced = Engine(gate_failed_bundle, precision="int8")
    assert forced.info.precision == "int8"
    assert "failed export's quality gate" in caplog.text


def test_engine_names_what_is_wrong_with_its_configuration(tiny_bundle: Path) -> None:
    with pytest.raises(EngineError, match=r"--precision fp16: bundle .* has variants fp32, int8"):
        Engine(tiny_bundle, precision="fp16")
    missing = "cuda" if "CUDAExecutionProvider" not in ort.get_available_providers() else "nosuch"
    with pytest.raises(EngineError, match=rf"--provider {missing}: not available .*cpu"):
        Engine(tiny_bundle, provider=missing)
    with pytest.raises(EngineError, match="--threads must be at least 1"):
        Engine(tiny_bundle, threads=0)


def test_engine_uses_the_provider_asked_for(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, precision="fp32", provider="cpu", threads=2, warmup=False)
    assert engine.info.provider == "cpu" and engine.info.threads == 2
    assert engine.info.bundle_id.startswith("tiny@")


def test_to_uint8_rgb_maps_the_value_range_and_moves_channels_last() -> None:
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0] = [[-1.0, 1.0], [0.0, 5.0]]  # red channel: min, max, middle, out of range
    x[0, 1] = np.nan
    out = to_uint8_rgb(x, (-1.0, 1.0))
    assert out.shape == (1, 2, 2, 3)
    assert out[0, :, :, 0].tolist() == [[0, 255], [128, 255]]
    assert (out[0, :, :, 1] == 0).all() and (out[0, :, :, 2] == 128).all()
    np.testing.assert_array_equal(to_uint8_rgb(np.full((1, 3, 1, 1), 0.5), (0.0, 1.0)), 128)


def test_choose_precision_takes_a_lossy_variant_only_when_it_clearly_pays() -> None:
    assert choose_precision({"fp32": 4.0, "int8": 2.0}) == "int8"
    assert choose_precision({"fp32": 4.0, "int8": 3.8}) == "fp32"  # 5 %: noise, not a win
    assert choose_precision({"fp32": 3.0, "int8": 4.0}) == "fp32"
    assert choose_precision({"int8": 2.0, "fp16": 1.0}) == "fp16"  # no reference measured


@pytest.mark.parametrize("threads, spinning", [(1, None), (2, "0")])
def test_engine_thread_pools_do_not_spin_against_each_other(
    tiny_bundle: Path, threads: int, spinning: str | None
) -> None:
    # Two sessions (text encoder, generator) each own a pool; spinning workers of one would take
    # the cores the other needs next. One thread has no workers, so the default stays.
    engine = Engine(tiny_bundle, precision="fp32", threads=threads, warmup=False)
    sessions = [engine._variant_in_use.text_encoder, engine._variant_in_use.generator]
    for session in sessions:
        options = session.get_session_options()
        assert options.intra_op_num_threads == threads
        try:
            entry = options.get_session_config_entry(SPIN_CONFIG_KEY)
        except RuntimeError:  # onnxruntime: "does not have configuration with key"
            entry = None
        assert entry == spinning
