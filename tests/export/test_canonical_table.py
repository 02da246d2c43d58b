"""The canonical-embedding table (bundle schema 6, export/canonical_table.py): export embeds every
canonical caption with each variant's own text encoder; the robot reads the table once and draws
what it understood without a second text-encoder pass — the same pictures as encoding the
canonical caption's text — and refuses a table that is short, not finite or out of place."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import bundle as b
from edge_runtime import canonical, tokenizer
from edge_runtime.engine import Engine, EngineError, open_session, run_text_encoder
from export import canonical_table as ct
from export.pipeline import ExportOptions, export_bundle
from export.tiny import TINY_MIN_READBACK_AGREEMENT, tiny_checkpoint
from train import checkpoint as ck

CAPTIONS = (
    "survivor in an orange jacket lying on rubble, left side",  # full
    "someone in green",  # partial: four attributes chosen per image
    "draw a cat",  # off-domain: drawn from its words
)


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    root = tmp_path_factory.mktemp("table")
    checkpoint = ck.save_checkpoint(
        tiny_checkpoint(seed=3, data=tiny_data, readback=True), root / "checkpoint.pt"
    )
    out = root / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=checkpoint, out=out, quantize=True, latency_rounds=3,
            min_readback_agreement=TINY_MIN_READBACK_AGREEMENT,
        )
    )  # fmt: skip
    return out


def _without_tables(bundle: Path, out: Path) -> Path:
    """The same bundle as schema 5 wrote it: canonical caption, no table."""
    loaded = b.load_bundle(bundle)
    m = loaded.manifest
    graphs = {k: g for k, g in m.graphs.items() if g.role != b.CANONICAL_EMBEDDINGS}
    manifest = dataclasses.replace(
        m, graphs=graphs,
        variants={k: dataclasses.replace(v, canonical=None) for k, v in m.variants.items()},
    )  # fmt: skip
    files = {k: loaded.graph_path(k) for k in graphs}
    b.write_bundle(out, manifest, files)
    return out


def test_every_variant_names_a_table_of_its_own_text_encoders_embeddings(
    table_bundle: Path,
) -> None:
    bundle = b.load_bundle(table_bundle, open_session)
    m = bundle.manifest
    spec = m.readback
    assert spec is not None and spec.canonical is not None
    assert m.schema_version == b.CANONICAL_TABLE_SCHEMA_VERSION
    count = canonical.class_count(spec)
    assert count == 8 * 6 * 3 * 3 * 2
    rng = np.random.default_rng(0)
    for name, variant in m.variants.items():
        assert variant.canonical is not None
        assert m.graphs[variant.canonical].role == b.CANONICAL_EMBEDDINGS
        table_session = bundle.sessions[variant.canonical]
        text_session = bundle.sessions[variant.text_encoder]
        for k in rng.choice(count, 12, replace=False).tolist():
            chosen = list(canonical.combinations(spec))[k]
            assert canonical.class_index(spec, chosen) == k
            (row,) = table_session.run([b.TEXT_EMBEDDING], {b.CLASS_INDEX: np.array([k])})
            caption = tokenizer.encode(canonical.render(spec, chosen))
            want = run_text_encoder(text_session, m.model, [caption])
            np.testing.assert_allclose(row, want, rtol=0, atol=1e-6, err_msg=f"{name} row {k}")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_table_draws_the_pictures_the_canonical_captions_text_draws(
    table_bundle: Path, tmp_path: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _without_tables(table_bundle, tmp_path / "old")
    with_table = Engine(table_bundle, precision=precision, threads=1)
    without = Engine(old, precision=precision, threads=1)
    assert with_table._variant_in_use.canonical_table is not None
    assert without._variant_in_use.canonical_table is None
    items = [(caption, 5, k) for caption in CAPTIONS for k in range(3)]
    assert with_table.drawn_captions(items) == without.drawn_captions(items)
    images = with_table.generate_batch(items)
    expected = without.generate_batch(items)
    # The table's rows come from the same graph and feed, run by export: at most a rounding
    # step apart where a kernel sums in another order.
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    # The saving: one text-encoder pass per new caption (its words), not one per drawn caption.
    runs: list[int] = []
    real = with_table._run_text
    monkeypatch.setattr(with_table, "_run_text", lambda v, e: runs.append(len(e)) or real(v, e))
    with_table.clear_cache()
    with_table.generate("a rescuer in a blue jacket standing on grass", n=4, seed=9)
    assert runs == [1]


def _edited(bundle: Path, out: Path, edit) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / b.MANIFEST_NAME).read_text())
    edit(manifest, out)
    (out / b.MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def _replace_table(manifest: dict, root: Path, table: np.ndarray) -> None:
    for graph in manifest["graphs"].values():
        if graph["role"] == b.CANONICAL_EMBEDDINGS:
            path = root / graph["file"]
            ct.write_graph(table, path)
            graph["sha256"] = b.sha256_file(path)
            graph["size_bytes"] = path.stat().st_size


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("short", r"graphs\.canonical\.\w+: cannot read 864 rows"),
        ("nan", r"graphs\.canonical\.\w+: expected \(864, 32\) finite values"),
        ("wide", r"output 'text_embedding' has shape \['batch', 33\], manifest says"),
    ],
)
def test_the_engine_refuses_a_table_that_is_short_or_not_finite(
    table_bundle: Path, tmp_path: Path, how: str, message: str
) -> None:
    table = {
        "short": np.zeros((100, 32), np.float32),
        "nan": np.full((864, 32), np.nan, np.float32),
        "wide": np.zeros((864, 33), np.float32),
    }[how]

    def edit(manifest: dict, root: Path) -> None:
        _replace_table(manifest, root, table)

    bad = _edited(table_bundle, tmp_path / how, edit)
    refused = b.BundleError if how == "wide" else EngineError  # wide: load_bundle's I/O check
    with pytest.raises(refused, match=message) as caught:
        Engine(bad, precision="fp32", threads=1)
    assert "\n" not in str(caught.value)


def _drop_canonical_caption(manifest: dict, root: Path) -> None:
    del manifest["readback"]["canonical"]


def _one_variant_without(manifest: dict, root: Path) -> None:
    del manifest["variants"]["int8"]["canonical"]


def _schema_5(manifest: dict, root: Path) -> None:
    manifest["schema_version"] = b.CANONICAL_SCHEMA_VERSION


def _text_encoder_as_table(manifest: dict, root: Path) -> None:
    manifest["variants"]["fp32"]["canonical"] = manifest["variants"]["fp32"]["text_encoder"]


def _float_index(manifest: dict, root: Path) -> None:
    for graph in manifest["graphs"].values():
        if graph["role"] == b.CANONICAL_EMBEDDINGS:
            graph["inputs"][0]["dtype"] = "float32"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_canonical_caption, r"canonical table but the manifest has no 'readback\.canonical'"),
        (_one_variant_without, r"variant int8 has no 'canonical_embeddings' graph"),
        (_schema_5, r"a variant's 'canonical' table needs schema_version 6, the manifest says 5"),
        (_text_encoder_as_table, r"variant fp32 uses 'text_encoder\.fp32' \(a text_encoder\)"),
        (_float_index, r"tensor 'class_index' is float32, expected one of \['int64'\]"),
    ],
)
def test_a_table_out_of_place_is_refused_with_one_line(
    table_bundle: Path, tmp_path: Path, edit, message: str
) -> None:
    bad = _edited(table_bundle, tmp_path / edit.__name__, edit)
    with pytest.raises(b.BundleError, match=message) as caught:
        b.load_bundle(bad)
    assert "\n" not in str(caught.value)
