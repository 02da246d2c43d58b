from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_runtime import bundle as b
from export import onnx_export as ox
from export.prepare import prepare_generator
from export.tiny import GAN_CONFIG, TEXT_CONFIG, randomize_batch_norm
from train import models


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_text_encoder_export_matches_torch_at_any_batch_and_length(
    rnn: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    encoder = models.CharCnnRnn(models.TextEncoderConfig(**{**TEXT_CONFIG.__dict__, "rnn": rnn}))
    encoder.eval()
    path = tmp_path / "text_encoder.onnx"
    model = ox.export_text_encoder(encoder, path)
    assert model.opset_import[0].version == ox.OPSET and model.ir_version == ox.IR_VERSION
    assert rnn.upper() in ox.op_types(model)  # the RNN is one ONNX GRU/LSTM op, not unrolled
    assert "BatchNormalization" not in ox.op_types(model)  # folded into the convolutions
    inputs = {i.name: _dims(i) for i in model.graph.input}
    assert inputs == {b.CHAR_IDS: [b.BATCH_DIM, b.TIME_DIM], b.LENGTHS: [b.BATCH_DIM]}
    assert _dims(model.graph.output[0]) == [b.BATCH_DIM, TEXT_CONFIG.embedding_dim]
    assert ox.text_encoder_parity(encoder, path) <= ox.PARITY_TOLERANCE
    # Batch sizes and lengths the export never saw, including the shortest the runtime may use.
    session = ox.session(path)
    for batch, length in ((3, 48), (7, 100), (1, 201)):
        captions = [ox.PARITY_CAPTIONS[i % len(ox.PARITY_CAPTIONS)] for i in range(batch)]
        ids, lengths = ox.example_char_ids(captions, 201)
        lengths = np.minimum(lengths, length - TEXT_CONFIG.length_extra)
        ids = ids[:, :length]
        with torch.no_grad():
            expected = encoder(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
        got = session.run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})[0]
        assert np.abs(got - expected).max() <= ox.PARITY_TOLERANCE


@pytest.mark.parametrize("form", ["convtranspose", "2x2"])
@pytest.mark.parametrize(
    ("residual", "upsample"), [(False, "deconv"), (True, "deconv"), (False, "resize")]
)
def test_generator_export_matches_the_trained_generator(
    form: str, residual: bool, upsample: str, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    config = {**GAN_CONFIG.__dict__, "residual": residual, "upsample": upsample}
    generator = models.Generator(models.GANConfig(**config))
    randomize_batch_norm(generator, torch.Generator().manual_seed(1))
    generator.eval()
    path = tmp_path / "generator.onnx"
    model = ox.export_generator(prepare_generator(generator, form), 100, 32, path)
    ops = ox.op_types(model)
    assert "BatchNormalization" not in ops
    assert ("ConvTranspose" in ops) == (form == "convtranspose")
    assert _dims(model.graph.output[0]) == [b.BATCH_DIM, 3, 64, 64]
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((5, 32)).astype(np.float32)
    noise = ox.parity_inputs(100)
    assert ox.generator_parity(generator, path, embeddings, noise) <= ox.PARITY_TOLERANCE


def test_parity_failure_names_the_graph_and_the_difference() -> None:
    expected = np.zeros((2, 3), np.float32)
    got = expected.copy()
    got[1, 2] = 3e-3
    with pytest.raises(
        ox.ExportError, match=r"generator\.onnx: onnxruntime fp32 differs .* 0\.003"
    ):
        ox.check_parity("generator.onnx", expected, got)
    got[1, 2] = np.nan
    with pytest.raises(ox.ExportError, match="differs"):
        ox.check_parity("generator.onnx", expected, got)
