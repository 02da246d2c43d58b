from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge_runtime import bundle as b
from export import calibration, int8, pipeline
from export import onnx_export as ox
from export.quantize import QualityGateError
from train import checkpoint as ck


def _open(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_export_bundle_validates_with_the_runtime_loader(
    quantized_bundle: Path, tiny_checkpoint_path: Path
) -> None:
    loaded = b.load_bundle(quantized_bundle, _open)
    manifest = loaded.manifest
    assert set(loaded.sessions) == set(manifest.graphs)
    assert {"fp32", "int8"} <= set(manifest.variants)
    assert manifest.variants["fp32"].generator == "generator.fp32"
    assert manifest.variants["int8"].generator == "generator.int8"
    assert manifest.model.length_stride == 9 and manifest.model.length_extra == 39
    provenance = manifest.provenance
    assert provenance["checkpoint_sha256"] == b.sha256_file(tiny_checkpoint_path)
    assert provenance["opset"] == ox.OPSET and provenance["created_utc"].endswith("Z")
    assert {"torch", "onnx", "onnxruntime"} <= set(provenance["libraries"])
    for key, spec in manifest.graphs.items():
        model = onnx.load(str(quantized_bundle / spec.file))
        assert model.ir_version == ox.IR_VERSION, key
        onnx.checker.check_model(model, full_check=True)


def test_export_bundle_records_quality_latency_and_quantization(quantized_bundle: Path) -> None:
    manifest = b.load_bundle(quantized_bundle).manifest
    int8 = manifest.variants["int8"]
    assert int8.gate_passed and int8.quality["psnr_db"] >= 30.0
    assert 0.9 < int8.quality["ssim"] <= 1.0
    for variant in manifest.variants.values():
        assert set(variant.latency_ms) == {
            "text_encoder_b1_t1",
            "generator_b1_t1",
            "generator_b16_t1",
        }
        assert all(ms > 0 for ms in variant.latency_ms.values())
    quantization = manifest.quantization
    assert quantization["calibration"]["captions"] >= calibration.MIN_CALIBRATION
    assert quantization["generator"]["per_channel"] and quantization["generator"]["format"] == "QDQ"
    assert any(n.endswith("Tanh") for n in quantization["generator"]["excluded_nodes"])
    assert any(n.endswith("Clip") for n in quantization["generator"]["excluded_nodes"])
    text = quantization["text_encoder"]
    assert text["chosen"] in {"fp32", *text["candidates"]} and text["reason"]
    expected_key = "text_encoder.fp32" if text["chosen"] == "fp32" else "text_encoder.int8"
    assert int8.text_encoder == expected_key


def test_int8_generator_as_onnxruntime_optimises_it_has_integer_convs_and_no_conv_transpose(
    quantized_bundle: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(dump)
    ort.InferenceSession(
        str(quantized_bundle / "generator.int8.onnx"), options, providers=["CPUExecutionProvider"]
    )
    ops = [node.op_type for node in onnx.load(str(dump)).graph.node]
    assert "ConvTranspose" not in ops
    assert ops.count("QLinearConv") + ops.count("ConvInteger") >= 4  # every stride-2 layer
    assert ops[-2:] == ["Tanh", "Clip"]  # the image comes out of a float tanh


def test_int8_generator_file_is_much_smaller_than_fp32(quantized_bundle: Path) -> None:
    graphs = b.load_bundle(quantized_bundle).manifest.graphs
    # 4 bytes → 1 per weight; the tiny model's graph overhead keeps it above the 26 % of the
    # paper-sized one (make bench).
    assert graphs["generator.int8"].size_bytes < 0.4 * graphs["generator.fp32"].size_bytes


def test_fp32_bundle_reproduces_torch_from_caption_to_image(
    quantized_bundle: Path, tiny_checkpoint_path: Path
) -> None:
    _, encoder, generator = pipeline.load_models(tiny_checkpoint_path)
    loaded = b.load_bundle(quantized_bundle, _open, graphs=["text_encoder.fp32", "generator.fp32"])
    captions = ["a survivor in an orange jacket lying on rubble, left side", "x"]
    spec = loaded.manifest.model
    longest = max(len(c) for c in captions)
    ids, lengths = ox.example_char_ids(captions, spec.min_input_length(longest))
    noise = ox.parity_inputs(spec.noise_dim, batch=2)
    emb = loaded.sessions["text_encoder.fp32"].run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0]
    image = loaded.sessions["generator.fp32"].run(None, {b.NOISE: noise, b.TEXT_EMBEDDING: emb})[0]
    full_ids, full_lengths = ox.example_char_ids(captions)  # torch sees full padding to 201
    with torch.no_grad():
        expected = generator(
            torch.from_numpy(noise),
            encoder(torch.from_numpy(full_ids), torch.from_numpy(full_lengths)),
        ).numpy()
    assert np.abs(image - expected).max() <= ox.PARITY_TOLERANCE


def test_quality_gate_refuses_a_broken_calibration(
    tiny_checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = calibration.calibration_feeds

    def broken(noise: np.ndarray, embeddings: np.ndarray) -> list:
        # Activation ranges from near-silent inputs: real activations clip at every layer.
        return real(noise * 1e-3, embeddings * 1e-3)

    monkeypatch.setattr(calibration, "calibration_feeds", broken)
    out = tmp_path / "bundle"
    options = pipeline.ExportOptions(
        checkpoint=tiny_checkpoint_path,
        out=out,
        quantize=True,
        calibration_size=calibration.MIN_CALIBRATION,
        latency_rounds=3,
    )
    with pytest.raises(QualityGateError, match=r"PSNR \d+\.\d\d dB < 30 dB \(SSIM") as info:
        pipeline.export_bundle(options)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written

    lossy = pipeline.export_bundle(dataclasses.replace(options, allow_lossy=True))
    assert not lossy.variants["int8"].gate_passed
    assert lossy.variants["int8"].quality["psnr_db"] < 30.0
    saved = json.loads((out / b.MANIFEST_NAME).read_text())
    assert saved["quantization"]["quality_gate"]["passed"] is False
    assert saved["quantization"]["quality_gate"]["allow_lossy"] is True


def test_export_fails_naming_the_graph_when_onnx_parity_breaks(
    tiny_checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ox.export_generator

    def tampered(generator, noise_dim, embedding_dim, path):
        model = real(generator, noise_dim, embedding_dim, path)
        weight = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 2)
        array = onnx.numpy_helper.to_array(weight) * 1.01  # a subtle mis-export
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(model, str(path))
        return model

    monkeypatch.setattr(ox, "export_generator", tampered)
    out = tmp_path / "bundle"
    with pytest.raises(
        ox.ExportError, match=r"generator\.onnx \(batch \d+\): onnxruntime fp32 differs"
    ):
        pipeline.export_bundle(pipeline.ExportOptions(checkpoint=tiny_checkpoint_path, out=out))
    assert not out.exists()


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_export_bundle_without_quantize_ships_fp32_only(rnn: str, tmp_path: Path) -> None:
    from export.tiny import tiny_checkpoint

    path = ck.save_checkpoint(tiny_checkpoint(rnn=rnn, residual=True), tmp_path / "c.pt")
    manifest = pipeline.export_bundle(
        pipeline.ExportOptions(checkpoint=path, out=tmp_path / "b", latency_rounds=3)
    )
    assert set(manifest.variants) == {"fp32"} and manifest.quantization == {"method": "none"}
    b.load_bundle(tmp_path / "b", _open)


def test_quantize_without_any_dataset_names_the_flag(tmp_path: Path) -> None:
    from export.tiny import tiny_checkpoint

    path = ck.save_checkpoint(tiny_checkpoint(), tmp_path / "c.pt")  # config["data"] is None
    with pytest.raises(ox.ExportError, match="--data"):
        pipeline.export_bundle(
            pipeline.ExportOptions(checkpoint=path, out=tmp_path / "b", quantize=True)
        )


def test_oracle_accuracy_scores_each_precision_on_the_whole_captions() -> None:
    from train.quality.oracle import AttributeOracle, OracleConfig

    torch.manual_seed(0)
    oracle = AttributeOracle(OracleConfig()).eval()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (12, 3, 64, 64)).astype(np.float32)
    attributes = rng.integers(0, 2, (8, 5)).astype(np.int16)  # first 8 images have attributes
    scores = int8.oracle_accuracy(oracle, {"fp32": images, "int8": images}, attributes)
    assert scores["oracle_accuracy_fp32"] == scores["oracle_accuracy_int8"]
    assert 0.0 <= scores["oracle_accuracy_fp32"] <= 1.0
    assert {f"oracle_{n}_int8" for n in OracleConfig().attribute_names} <= set(scores)


def test_export_refuses_an_oracle_that_fails_its_honesty_checks_unless_forced(
    tiny_checkpoint_path: Path, tmp_path: Path
) -> None:
    from train.quality.oracle import AttributeOracle, OracleConfig

    # An untrained oracle cannot read the real test images: export must not trust it.
    path = ck.save_checkpoint(
        ck.new_checkpoint(
            "oracle",
            models={"oracle": AttributeOracle(OracleConfig()).state_dict()},
            model_configs={"oracle": dataclasses.asdict(OracleConfig())},
            attribute_values=json.loads(json.dumps(_attribute_values())),
        ),
        tmp_path / "oracle.pt",
    )
    out = tmp_path / "bundle"
    options = pipeline.ExportOptions(
        checkpoint=tiny_checkpoint_path, out=out, quantize=True, oracle=path
    )
    with pytest.raises(ox.ExportError, match=r"honesty.*--force-oracle") as info:
        pipeline.export_bundle(options)
    assert "\n" not in str(info.value) and not out.exists()

    # Forced, its (chance-level) accuracies are recorded and flagged as untrusted.
    manifest = pipeline.export_bundle(dataclasses.replace(options, force_oracle=True))
    quality = manifest.variants["int8"].quality
    assert 0.0 <= quality["oracle_accuracy_int8"] <= 1.0 and "oracle_colour_fp32" in quality
    assert manifest.quantization["oracle"]["passed_honesty_checks"] is False


def _attribute_values() -> dict[str, list[str]]:
    from train.data.attributes import ATTRIBUTE_VALUES

    return {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}


def test_quantize_names_a_training_dataset_that_is_not_here(tmp_path: Path) -> None:
    from export.tiny import tiny_checkpoint

    checkpoint = tiny_checkpoint(data=tmp_path / "elsewhere" / "captions.h5")
    path = ck.save_checkpoint(checkpoint, tmp_path / "c.pt")
    options = pipeline.ExportOptions(checkpoint=path, out=tmp_path / "b", quantize=True)
    with pytest.raises(
        ox.ExportError, match=r"elsewhere/captions\.h5, which is not here; pass --data"
    ):
        pipeline.export_bundle(options)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_int8_text_encoder_candidates_keep_padding_exactness_and_use_integer_kernels(
    rnn: str, tmp_path: Path
) -> None:
    from export.tiny import tiny_checkpoint

    checkpoint = tiny_checkpoint(rnn=rnn)
    encoder = ck.build_model(checkpoint, "text_encoder")
    fp32 = tmp_path / "text_encoder.onnx"
    ox.export_text_encoder(encoder, fp32)
    captions = [c for c in ox.PARITY_CAPTIONS for _ in range(64)]
    candidates = int8._text_encoder_candidates(fp32, tmp_path, encoder, captions)
    static_ops = q_op_counts(candidates["static-conv"][0])
    assert static_ops.get("QLinearConv", 0) == 2  # conv2, conv3 (conv1 is a gather)
    both_ops = q_op_counts(candidates["static-conv+dynamic"][0])
    assert both_ops.get("QLinearConv", 0) == 2
    for name in ("dynamic", "static-conv+dynamic"):
        ops = q_op_counts(candidates[name][0])
        assert "ConvInteger" not in ops
        assert ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) >= 1
        if rnn == "lstm":  # onnxruntime quantizes LSTM (not GRU) dynamically
            assert "DynamicQuantizeLSTM" in ops
    spec = encoder.config
    short = ["person in red", "x"]
    for path, _ in candidates.values():
        session = ox.session(path)
        outs = []
        for length in (spec.min_input_length(13), spec.max_length):
            ids, lengths = ox.example_char_ids(short, length)
            outs.append(session.run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0])
        assert np.abs(outs[0] - outs[1]).max() <= 1e-5


def q_op_counts(path: Path) -> dict[str, int]:
    from export.quantize import op_counts

    return op_counts(path)
