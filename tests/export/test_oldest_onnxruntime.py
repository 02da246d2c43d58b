"""The oldest onnxruntime we claim (`export.onnx_export.OLDEST_ONNXRUNTIME`) loads and runs a
freshly exported bundle, fp32 and int8, through the runtime's own loader.

It installs that release from the package index into a venv kept in pytest's cache directory, so
only the first run pays for the download (~30 s); CI has index access, like this machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import bundle as b
from export import onnx_export as ox
from export.quantize import image_quality

REPO = Path(__file__).resolve().parents[2]

RUN_BUNDLE = """
import json, sys
import numpy as np
import onnxruntime as ort
sys.path.insert(0, sys.argv[1])
from edge_runtime import bundle as b
cpu = ["CPUExecutionProvider"]
bundle = b.load_bundle(sys.argv[2], lambda m: ort.InferenceSession(m, providers=cpu))
feeds = np.load(sys.argv[3])
out = {}
for name, variant in bundle.manifest.variants.items():
    text = bundle.sessions[variant.text_encoder]
    gen = bundle.sessions[variant.generator]
    emb = text.run(None, {b.CHAR_IDS: feeds["ids"], b.LENGTHS: feeds["lengths"]})[0]
    out[name] = gen.run(None, {b.NOISE: feeds["noise"], b.TEXT_EMBEDDING: emb})[0]
np.savez(sys.argv[4], **out)
print(json.dumps({"onnxruntime": ort.__version__}))
"""


@pytest.fixture(scope="session")
def oldest_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    name = f"onnxruntime-{ox.OLDEST_ONNXRUNTIME}-py{sys.version_info.major}{sys.version_info.minor}"
    root = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    python = root / "bin" / "python"
    check = [
        str(python),
        "-c",
        f"import onnxruntime as o; assert o.__version__ == {ox.OLDEST_ONNXRUNTIME!r}",
    ]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    shutil.rmtree(root, ignore_errors=True)
    venv.create(root, with_pip=True, clear=True)
    # numpy < 2: onnxruntime releases before 1.19 were built against numpy 1.x.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"onnxruntime=={ox.OLDEST_ONNXRUNTIME}", "numpy<2"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if install.returncode != 0:
        last = (install.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail(f"cannot install onnxruntime=={ox.OLDEST_ONNXRUNTIME} from the index: {last}")
    return python


def test_oldest_claimed_onnxruntime_loads_and_runs_the_bundle(
    oldest_python: Path, quantized_bundle: Path, tmp_path: Path
) -> None:
    manifest = b.load_bundle(quantized_bundle).manifest
    captions = list(ox.PARITY_CAPTIONS)
    ids, lengths = ox.example_char_ids(captions)
    noise = ox.parity_inputs(manifest.model.noise_dim, batch=len(captions))
    np.savez(tmp_path / "feeds.npz", ids=ids, lengths=lengths, noise=noise)
    result = subprocess.run(
        [str(oldest_python), "-c", RUN_BUNDLE, str(REPO), str(quantized_bundle),
         str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["onnxruntime"] == ox.OLDEST_ONNXRUNTIME
    old = np.load(tmp_path / "out.npz")

    # The same variants with this environment's onnxruntime.
    loaded = b.load_bundle(quantized_bundle, ox.session)
    for name, variant in manifest.variants.items():
        emb = loaded.sessions[variant.text_encoder].run(None, {b.CHAR_IDS: ids, b.LENGTHS: lengths})
        new = loaded.sessions[variant.generator].run(
            None, {b.NOISE: noise, b.TEXT_EMBEDDING: emb[0]}
        )
        if name == "fp32":
            assert np.abs(old[name] - new[0]).max() <= ox.PARITY_TOLERANCE
            reference = new[0]
    # int8 on the oldest runtime still passes the quality gate against fp32.
    assert image_quality(reference, old["int8"])["psnr_db"] >= 30.0


RUN_READBACK = """
import sys
import numpy as np
import onnxruntime as ort
sys.path.insert(0, sys.argv[1])
from edge_runtime import bundle as b
cpu = ["CPUExecutionProvider"]
bundle = b.load_bundle(sys.argv[2], lambda m: ort.InferenceSession(m, providers=cpu))
embeddings = np.load(sys.argv[3])["embeddings"]
out = {}
for name, variant in bundle.manifest.variants.items():
    probs, off = bundle.sessions[variant.readback].run(
        [b.ATTRIBUTE_PROBS, b.OFF_DOMAIN], {b.TEXT_EMBEDDING: embeddings}
    )
    out[name + "_probs"], out[name + "_off"] = probs, off
np.savez(sys.argv[4], **out)
"""


def test_oldest_claimed_onnxruntime_runs_the_readback(oldest_python: Path, tmp_path: Path) -> None:
    """The committed tiny bundle's read-back graphs (fp32, and int8 when export chose it) load
    through the runtime's loader on the oldest onnxruntime and give this one's outputs."""
    tiny = REPO / "tests" / "fixtures" / "tiny_bundle"
    loaded = b.load_bundle(tiny, ox.session)
    assert loaded.manifest.readback is not None
    dim = loaded.manifest.model.embedding_dim
    embeddings = np.random.default_rng(0).standard_normal((6, dim)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", embeddings=embeddings)
    result = subprocess.run(
        [str(oldest_python), "-c", RUN_READBACK, str(REPO), str(tiny),
         str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    old = np.load(tmp_path / "out.npz")
    for name, variant in loaded.manifest.variants.items():
        assert variant.readback is not None
        probs, off = loaded.sessions[variant.readback].run(
            [b.ATTRIBUTE_PROBS, b.OFF_DOMAIN], {b.TEXT_EMBEDDING: embeddings}
        )
        assert np.abs(old[name + "_probs"] - probs).max() <= ox.PARITY_TOLERANCE
        assert np.abs(old[name + "_off"] - off).max() <= ox.PARITY_TOLERANCE
