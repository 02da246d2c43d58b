"""Export of the read-back heads: graph, parity with torch, int8 by measurement, the decision-
agreement gate, the manifest's labels; and checkpoints without heads export as before."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime import bundle as b
from edge_runtime.engine import Engine, open_session
from edge_runtime.readback import decision_indices
from export import onnx_export as ox
from export import readback as rb
from export.pipeline import ExportOptions, export_bundle
from export.quantize import QualityGateError
from export.tiny import TINY_MIN_READBACK_AGREEMENT, tiny_checkpoint
from train import checkpoint as ck
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES
from train.models import ReadBack, ReadBackConfig


@pytest.fixture(scope="module")
def readback_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    path = tmp_path_factory.mktemp("rb") / "checkpoint.pt"
    return ck.save_checkpoint(tiny_checkpoint(seed=3, data=tiny_data, readback=True), path)


@pytest.fixture(scope="module")
def readback_bundle(tmp_path_factory: pytest.TempPathFactory, readback_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "rb"
    export_bundle(
        ExportOptions(
            checkpoint=readback_checkpoint,
            out=out,
            quantize=True,
            latency_rounds=3,
            min_readback_agreement=TINY_MIN_READBACK_AGREEMENT,
        )
    )
    return out


def test_readback_graph_is_hashed_labelled_and_in_every_variant(
    readback_bundle: Path, readback_checkpoint: Path
) -> None:
    bundle = b.load_bundle(readback_bundle, open_session)  # hashes and graph I/O verified
    m = bundle.manifest
    # The heads record the words they were fitted on (schema 4), and the read-back carries the
    # canonical caption the robot draws what it understood with (schema 5).
    heads = ck.build_model(ck.load_checkpoint(readback_checkpoint), "readback", "checkpoint")
    assert isinstance(heads, ReadBack) and "red" in heads.config.known_words
    assert m.schema_version == b.CANONICAL_TABLE_SCHEMA_VERSION  # and each variant's table (6)
    assert m.readback == b.ReadBackSpec(
        attributes=tuple((n, ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES),
        off_domain_threshold=rb.DEFAULT_OFF_DOMAIN_THRESHOLD,
        known_words=heads.config.known_words,
        canonical=rb.readback_spec().canonical,
    )
    assert m.graphs["readback.fp32"].role == b.READBACK
    assert m.variants["fp32"].readback == "readback.fp32"
    record = m.quantization["readback"]
    # int8 by measurement: the int8 variant names the int8 graph only when it was chosen.
    chosen = "readback.int8" if record["chosen"] == "int8" else "readback.fp32"
    assert m.variants["int8"].readback == chosen and (chosen in m.graphs)
    assert record["int8_candidate"]["speedup_vs_fp32"] > 0
    assert (record["chosen"] == "int8") == (
        record["int8_candidate"]["speedup_vs_fp32"] >= rb.INT8_MIN_SPEEDUP
        and min(
            record["int8_candidate"]["readback_attribute_agreement"],
            record["int8_candidate"]["readback_off_domain_agreement"],
        )
        >= TINY_MIN_READBACK_AGREEMENT
    )
    quality = m.variants["int8"].quality
    assert quality["readback_attribute_agreement"] >= TINY_MIN_READBACK_AGREEMENT
    assert quality["readback_off_domain_agreement"] >= TINY_MIN_READBACK_AGREEMENT
    assert record["gate"]["passed"] and m.variants["int8"].gate_passed
    assert all("readback_b1_t1" in v.latency_ms for v in m.variants.values())
    assert m.provenance["readback_parity_max_abs_diff"] <= ox.PARITY_TOLERANCE


def test_readback_graph_is_readback_probabilities(
    readback_bundle: Path, readback_checkpoint: Path
) -> None:
    checkpoint = ck.load_checkpoint(readback_checkpoint, kind="gan")
    heads = ck.build_model(checkpoint, "readback").eval()
    session = open_session((readback_bundle / "readback.onnx").read_bytes())
    embeddings = np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)
    probs, off = rb.run(session, embeddings)
    with torch.no_grad():
        want_probs, want_off = heads.probabilities(torch.from_numpy(embeddings))
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(off, want_off.numpy(), atol=1e-5)


def test_exported_readback_runs_in_the_robots_engine(readback_bundle: Path) -> None:
    for precision in ("fp32", "int8"):
        engine = Engine(readback_bundle, precision=precision)
        understood = engine.understand("survivor in a red jacket on snow")
        assert understood is not None
        assert [a.name for a in understood.attributes] == list(ATTRIBUTE_NAMES)


def _build(tmp_path: Path) -> tuple[rb.ReadBackBuild, np.ndarray]:
    torch.manual_seed(0)
    counts = tuple(len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES)
    heads = ReadBack(ReadBackConfig(embedding_dim=16, value_counts=counts, hidden=8)).eval()
    model = b.ModelSpec(noise_dim=4, embedding_dim=16, image_size=8)
    build = rb.ReadBackBuild(heads, rb.readback_spec(), model, tmp_path)
    table = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    build.build_fp32(table[:5])
    return build, table


def _embedder(table: np.ndarray, noise: float = 0.0):
    """A stand-in text encoder: a caption's row of `table` (by its CRC), plus `noise`."""
    rng = np.random.default_rng(2)

    def embed(captions):
        rows = [table[zlib.crc32(c.encode()) % len(table)] for c in captions]
        return np.stack([r + noise * rng.standard_normal(16).astype(np.float32) for r in rows])

    return embed


def test_readback_gate_refuses_an_int8_variant_that_changes_decisions(tmp_path: Path) -> None:
    build, table = _build(tmp_path)
    captions = [f"caption {i}" for i in range(60)]
    fp32 = _embedder(table)
    # The int8 variant's text encoder, standing in: embeddings far enough off to flip decisions.
    far = _embedder(table, noise=3.0)
    with pytest.raises(QualityGateError, match="read-back gate: decision agreement with fp32"):
        build.build_int8(captions, fp32, far, min_agreement=0.98, rounds=3)
    _, agreement, record, passed = build.build_int8(
        captions, _embedder(table), _embedder(table, noise=3.0),
        min_agreement=0.98, rounds=3, allow_lossy=True,
    )  # fmt: skip
    assert not passed and record["gate"]["passed"] is False
    assert min(agreement.values()) < 0.98


def test_readback_gate_agreement_is_measured_on_the_decisions(tmp_path: Path) -> None:
    build, table = _build(tmp_path)
    captions = [f"caption {i}" for i in range(60)]
    path, agreement, record, passed = build.build_int8(
        captions, _embedder(table), _embedder(table), min_agreement=0.98, rounds=3
    )
    assert passed
    if path is None:
        # Same embeddings, same fp32 graph: every decision agrees.
        assert agreement == {
            "readback_attribute_agreement": 1.0,
            "readback_off_domain_agreement": 1.0,
        }
    gate_captions = len(captions) + len(rb.GATE_OFF_DOMAIN_CAPTIONS)
    assert record["gate"]["captions"] == gate_captions
    # The agreement is what decision_indices sees, recomputed here from the graphs.
    embeddings = _embedder(table)([*captions, *rb.GATE_OFF_DOMAIN_CAPTIONS])
    reference = decision_indices(*rb.run(build.fp32_session, embeddings), build.spec)
    assert reference.shape == (gate_captions, len(ATTRIBUTE_NAMES) + 1)


def test_checkpoint_without_readback_exports_the_old_bundle(quantized_bundle: Path) -> None:
    data = json.loads((quantized_bundle / b.MANIFEST_NAME).read_text())
    assert data["schema_version"] == 1 and "readback" not in data
    assert all("readback" not in v for v in data["variants"].values())
    assert all(g["role"] != b.READBACK for g in data["graphs"].values())


def test_readback_that_does_not_fit_the_encoder_is_refused(
    readback_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = ck.load_checkpoint(readback_checkpoint, kind="gan")
    config = ReadBackConfig(**checkpoint["model_configs"]["readback"])
    wrong = ReadBack(dataclasses.replace(config, embedding_dim=16))
    checkpoint["models"]["readback"] = wrong.state_dict()
    checkpoint["model_configs"]["readback"] = dataclasses.asdict(wrong.config)
    path = ck.save_checkpoint(checkpoint, tmp_path / "wrong.pt")
    with pytest.raises(ck.CheckpointError, match="read-back reads 16-d embeddings"):
        export_bundle(ExportOptions(checkpoint=path, out=tmp_path / "b"))
    assert not (tmp_path / "b").exists()


class _FirstChoice:
    """An rng whose every draw is 0: the grammar's first template, first synonym of every slot,
    no prefix or suffix."""

    def integers(self, n: int) -> int:
        return 0


def test_every_canonical_caption_is_one_the_training_grammar_renders() -> None:
    """The robot draws what it understood through the canonical caption (edge_runtime.canonical):
    for all 864 classes it is the grammar's own caption, so the text encoder and the GAN read it
    as the training captions they learnt from; the held-out colour × terrain pairs are excluded
    from the open values' choice."""
    from edge_runtime import canonical
    from train.data.attributes import UNSEEN_PAIRS, Attributes, all_attributes
    from train.data.captions import caption_for

    spec = rb.readback_spec()
    assert spec.canonical is not None
    for attributes in all_attributes():
        values = [getattr(attributes, name) for name in ATTRIBUTE_NAMES]
        chosen = [
            ATTRIBUTE_VALUES[name].index(v) for name, v in zip(ATTRIBUTE_NAMES, values, strict=True)
        ]
        expected = caption_for(Attributes(*values), _FirstChoice())  # type: ignore[arg-type]
        assert canonical.render(spec, chosen) == expected
    excluded = {
        tuple(spec.attributes[a][1][v] for a, v in combination)
        for combination in spec.canonical.excluded
    }
    assert excluded == set(UNSEEN_PAIRS)
    assert b.ReadBackSpec.from_dict(spec.to_dict(), "manifest") == spec
