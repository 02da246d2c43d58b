from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import bundle as b
from edge_runtime import tokenizer

EMBED, NOISE_DIM, SIZE = 8, 4, 8  # the stand-in graphs of tests/fixtures/make_graphs.py


def _manifest() -> b.Manifest:
    text = b.GraphSpec(
        file="text_encoder.onnx",
        role=b.TEXT_ENCODER,
        precision="fp32",
        inputs=(
            b.TensorSpec(b.CHAR_IDS, "int64", (b.BATCH_DIM, b.TIME_DIM)),
            b.TensorSpec(b.LENGTHS, "int64", (b.BATCH_DIM,)),
        ),
        outputs=(b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, EMBED)),),
        opset=17,
    )
    gen = b.GraphSpec(
        file="generator.onnx",
        role=b.GENERATOR,
        precision="fp32",
        inputs=(
            b.TensorSpec(b.NOISE, "float32", (b.BATCH_DIM, NOISE_DIM)),
            b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, EMBED)),
        ),
        outputs=(b.TensorSpec(b.IMAGE, "float32", (b.BATCH_DIM, 3, SIZE, SIZE)),),
        opset=17,
    )
    return b.Manifest(
        name="stand-in",
        model=b.ModelSpec(noise_dim=NOISE_DIM, embedding_dim=EMBED, image_size=SIZE),
        graphs={"text_encoder.fp32": text, "generator.fp32": gen},
        variants={
            "fp32": b.Variant(
                "text_encoder.fp32", "generator.fp32", True, {"psnr_db": 99.0}, {"g": 1.5}
            )
        },
        quantization={"method": "none"},
        provenance={"checkpoint_sha256": "0" * 64},
    )


def _open(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture
def written(tmp_path: Path, fixtures_dir: Path) -> Path:
    graphs = fixtures_dir / "graphs"
    out = tmp_path / "bundle"
    b.write_bundle(
        out,
        _manifest(),
        {
            "text_encoder.fp32": graphs / "text_encoder.onnx",
            "generator.fp32": graphs / "generator.onnx",
        },
    )
    return out


def _edit_manifest(path: Path, edit) -> None:
    manifest_path = path / b.MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    edit(data)
    manifest_path.write_text(json.dumps(data))


def test_bundle_roundtrip_and_sessions(written: Path) -> None:
    loaded = b.load_bundle(written, _open)
    assert (
        loaded.manifest.to_dict() == b.Manifest.from_dict(loaded.manifest.to_dict(), "x").to_dict()
    )
    expected = dataclasses.replace(_manifest(), graphs=loaded.manifest.graphs)
    assert loaded.manifest == expected
    assert set(loaded.sessions) == {"text_encoder.fp32", "generator.fp32"}
    assert loaded.manifest.graphs["generator.fp32"].sha256 == b.sha256_file(
        written / "generator.onnx"
    )
    assert loaded.manifest.tokenizer == tokenizer.SPEC


def test_bundle_write_refuses_overwrite_without_force(written: Path, fixtures_dir: Path) -> None:
    files = {
        "text_encoder.fp32": fixtures_dir / "graphs" / "text_encoder.onnx",
        "generator.fp32": fixtures_dir / "graphs" / "generator.onnx",
    }
    with pytest.raises(b.BundleError, match="already exists"):
        b.write_bundle(written, _manifest(), files)
    b.write_bundle(written, dataclasses.replace(_manifest(), name="v2"), files, force=True)
    assert b.load_bundle(written).manifest.name == "v2"
    assert [p.name for p in written.parent.iterdir()] == ["bundle"]  # no temp or old dirs left


def test_bundle_write_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        b.write_bundle(
            tmp_path / "out",
            _manifest(),
            {"text_encoder.fp32": tmp_path / "nope.onnx", "generator.fp32": tmp_path / "nope.onnx"},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema="something-else"), "unknown schema 'something-else'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is newer"),
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d["tokenizer"].update(max_length=150), "tokenizer max_length"),
        (lambda d: d["graphs"]["generator.fp32"].update(file="../x.onnx"), "plain file name"),
        (lambda d: d["variants"]["fp32"].update(generator="nope"), "unknown graph 'nope'"),
        (lambda d: d["variants"]["fp32"].update(generator="text_encoder.fp32"), "as its generator"),
        (lambda d: d["model"].update(noise_dim=True), "should be int"),
    ],
)
def test_bundle_refuses_bad_manifest(written: Path, edit, message: str) -> None:
    _edit_manifest(written, edit)
    with pytest.raises(b.BundleError, match=message) as info:
        b.load_bundle(written)
    assert "manifest.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_bundle_refuses_malformed_json(written: Path) -> None:
    (written / b.MANIFEST_NAME).write_text('{"schema": "rescue-t2i-bundle",\n  oops}')
    with pytest.raises(b.BundleError, match=r"manifest.json: malformed JSON at line 2 column 3"):
        b.load_bundle(written)


def test_bundle_refuses_missing_manifest_and_missing_file(written: Path, tmp_path: Path) -> None:
    with pytest.raises(b.BundleError, match="bundle directory not found"):
        b.load_bundle(tmp_path / "nowhere")
    (written / "generator.onnx").unlink()
    with pytest.raises(b.BundleError, match=r"generator.onnx: missing"):
        b.load_bundle(written)
    (written / b.MANIFEST_NAME).unlink()
    with pytest.raises(b.BundleError, match=r"manifest.json: missing"):
        b.load_bundle(written)


def test_bundle_refuses_sha256_mismatch(written: Path) -> None:
    data = bytearray((written / "text_encoder.onnx").read_bytes())
    data[-1] ^= 1  # same size, one bit changed
    (written / "text_encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(b.BundleError, match=r"text_encoder.onnx: sha256 mismatch"):
        b.load_bundle(written)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda g: g["inputs"].reverse(),
            r"graph inputs are \['char_ids', 'lengths'\]",
        ),
        (
            lambda g: g["inputs"][0].update(dtype="int32"),
            "input 'char_ids' is int64, manifest says int32",
        ),
        (
            lambda g: g["inputs"][0].update(shape=["batch", 201]),
            "input 'char_ids' has shape",
        ),
        (lambda g: g["inputs"][1].update(dtype="int32"), "input 'lengths' is int64"),
    ],
)
def test_bundle_refuses_graph_io_differing_from_manifest(written: Path, edit, message: str) -> None:
    _edit_manifest(written, lambda d: edit(d["graphs"]["text_encoder.fp32"]))
    b.load_bundle(written)  # without sessions only hashes are checked
    with pytest.raises(b.BundleError, match=message) as info:
        b.load_bundle(written, _open)
    assert "text_encoder.onnx" in str(info.value)


def test_bundle_refuses_unloadable_graph(tmp_path: Path, written: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(written, broken)
    (broken / "generator.onnx").write_bytes(b"not onnx")
    _edit_manifest(
        broken,
        lambda d: d["graphs"]["generator.fp32"].update(
            sha256=b.sha256_file(broken / "generator.onnx"), size_bytes=8
        ),
    )
    with pytest.raises(b.BundleError, match=r"generator.onnx: cannot be loaded"):
        b.load_bundle(broken, _open)


def test_model_spec_min_input_length() -> None:
    fixed = b.ModelSpec(noise_dim=1, embedding_dim=1, image_size=1)
    assert fixed.min_input_length(10) == 201
    trimmed = dataclasses.replace(fixed, length_stride=9, length_extra=39)
    assert trimmed.min_input_length(1) == 48
    assert trimmed.min_input_length(55) == 102
    assert trimmed.min_input_length(201) == 201


def test_bundle_directory_mode_follows_umask(tmp_path: Path, fixtures_dir: Path) -> None:
    # A bundle is copied to robots and read by the service's own user, not only by its writer
    # (mkdtemp alone would leave it 0700).
    graphs = fixtures_dir / "graphs"
    files = {
        "text_encoder.fp32": graphs / "text_encoder.onnx",
        "generator.fp32": graphs / "generator.onnx",
    }
    old = os.umask(0o022)
    try:
        b.write_bundle(tmp_path / "bundle", _manifest(), files)
    finally:
        os.umask(old)
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.lists(st.sampled_from(["model", "graphs", "variants", "tokenizer", "generator.fp32",
                                   "fp32", "inputs", 0, "shape", "value_range"]), max_size=4),
    value=JSON,
)  # fmt: skip
def test_manifest_reader_raises_only_bundle_error_on_any_json(path, value) -> None:
    """Any JSON value put anywhere in a valid manifest: the reader either accepts it or raises a
    one-line BundleError — never another exception (a traceback on the robot)."""
    data = json.loads(json.dumps(_manifest().to_dict()))
    target = data
    for key in path[:-1]:
        try:
            target = target[key]
        except (KeyError, IndexError, TypeError):
            break
    try:
        target[path[-1] if path else "model"] = value
    except (IndexError, TypeError):
        return
    raw = json.dumps(data, allow_nan=True).encode()
    try:
        b.Manifest.from_dict(b.parse_json(raw, "manifest.json"), "manifest.json")
    except b.BundleError as err:
        assert "\n" not in str(err)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(alphabet='[]{}"\\:,0123456789.eE-', max_size=300))
def test_json_parser_raises_only_bundle_error_on_any_bytes(raw) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        b.parse_json(data, "manifest.json")
    except b.BundleError as err:
        assert "\n" not in str(err)
