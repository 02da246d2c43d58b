"""`export.search`: the frame scorer added to a bundle as fp32 + int8 graphs, gated and hashed,
and the runtime loads the result; a scorer trained against another text encoder is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime import bundle as b
from export import onnx_export as ox
from export.errors import ExportError
from export.search import add_search, main
from export.tiny_search import tiny_scorer_checkpoint
from train import checkpoint as ck

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_bundle"


@pytest.fixture(scope="module")
def scorer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ck.save_checkpoint(
        tiny_scorer_checkpoint(), tmp_path_factory.mktemp("scorer") / "scorer.pt"
    )


def test_add_search_writes_a_bundle_the_runtime_verifies(scorer_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    add_search(scorer_path, TINY, out, min_agreement=0.0, text_check=False, gate_frames=4)
    loaded = b.load_bundle(out, ox.session)
    manifest = loaded.manifest
    # The tiny bundle's read-back vocabulary (schema 4) travels on: the higher version wins.
    assert manifest.search is not None and manifest.schema_version == b.KNOWN_WORDS_SCHEMA_VERSION
    assert {v.frame_scorer for v in manifest.variants.values()} == {
        "frame_scorer.fp32",
        "frame_scorer.int8",
    }
    assert (
        manifest.graphs["frame_scorer.int8"].sha256 != manifest.graphs["frame_scorer.fp32"].sha256
    )
    record = manifest.quantization["frame_scorer"]
    assert record["op_types"] == ["Conv"] and record["gate"]["frames"] == 4
    # 7-bit weights: CPUs without VNNI saturate 8-bit u8s8 multiply-adds (docs/SEARCH.md).
    assert record["reduce_range"] is True
    assert all("frame_top1_agreement" in v.quality for v in manifest.variants.values())
    # The original bundle is untouched, and extending an extended bundle is refused.
    assert b.load_bundle(TINY).manifest.search is None
    with pytest.raises(ExportError, match="already has a frame scorer"):
        add_search(scorer_path, out, tmp_path / "again", min_agreement=0.0, text_check=False)


def test_add_search_refuses_a_scorer_of_another_text_encoder(
    scorer_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="another text encoder"):
        add_search(scorer_path, TINY, tmp_path / "bundle", gate_frames=2)
    assert not (tmp_path / "bundle").exists()


def test_export_search_cli_reports_one_line(scorer_path: Path, tmp_path: Path, capsys) -> None:
    code = main(["--scorer", str(scorer_path), "--bundle", str(TINY), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "another text encoder" in err and len(err.strip().splitlines()) == 1
    code = main(["--scorer", str(tmp_path / "none.pt"), "--bundle", str(TINY), "--out", "x"])
    assert code == 2
