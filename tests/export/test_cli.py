from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from edge_runtime import bundle as b
from export.cli import main
from export.tiny import tiny_checkpoint
from train import checkpoint as ck


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return ck.save_checkpoint(tiny_checkpoint(), path).read_bytes()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("rescue-export: error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return errors[0]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda data: data[: len(data) // 2], "truncated or corrupted"),
        (lambda data: data[:100], "truncated or corrupted"),
        (lambda data: b"", "truncated or corrupted"),
        (lambda data: b"not a checkpoint at all\n" * 40, "truncated or corrupted"),
    ],
)
def test_cli_corrupted_or_truncated_checkpoint_is_one_clear_line(
    corrupt, expected: str, checkpoint_bytes: bytes, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(corrupt(checkpoint_bytes))
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 1
    line = _one_error_line(capsys)
    assert str(path) in line and expected in line
    assert not (tmp_path / "bundle").exists()


def test_cli_checkpoint_with_damaged_member_is_one_clear_line(
    checkpoint_bytes: bytes, tmp_path: Path, capsys
) -> None:
    # A valid zip directory whose tensor data is garbage: torch.load itself fails.
    source = tmp_path / "good.pt"
    source.write_bytes(checkpoint_bytes)
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, b"\x00" * len(data) if item.filename.endswith("data.pkl") else data)
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 1
    assert str(path) in _one_error_line(capsys)


def test_cli_wrong_kind_of_checkpoint_is_one_clear_line(tmp_path: Path, capsys) -> None:
    path = ck.save_checkpoint(
        ck.new_checkpoint("oracle", models={}, model_configs={}), tmp_path / "o.pt"
    )
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 1
    assert "is a 'oracle' checkpoint, expected 'gan'" in _one_error_line(capsys)


def test_cli_refuses_to_overwrite_without_force_and_replaces_with_it(
    checkpoint_bytes: bytes, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(checkpoint_bytes)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    args = ["--checkpoint", str(path), "--out", str(out)]
    assert main(args) == 2
    assert "--out" in _one_error_line(capsys) and (out / "old.txt").read_text() == "keep me"
    assert main([*args, "--force"]) == 0
    assert capsys.readouterr().out.strip() == str(out)  # stdout: the bundle path, nothing else
    assert not (out / "old.txt").exists()
    b.load_bundle(out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp or old directories left beside it


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--data", "missing.h5", "--quantize"], "--data"),
        (["--data", "{ckpt}"], "--data is only used with --quantize"),
        (["--allow-lossy"], "--allow-lossy"),
        (["--quantize", "--calibration-size", "100"], "--calibration-size"),
        (["--quantize", "--oracle", "missing.pt"], "--oracle"),
        (["--quantize", "--min-psnr", "0"], "--min-psnr"),
        (["--quantize", "--min-readback-agreement", "1.5"], "--min-readback-agreement"),
        (["--quantize", "--min-readback-agreement", "0"], "--min-readback-agreement"),
    ],
)
def test_cli_validates_flags_before_any_work(
    extra: list[str], flag: str, checkpoint_bytes: bytes, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(checkpoint_bytes)
    extra = [e.replace("{ckpt}", str(path)) for e in extra]
    assert main(["--checkpoint", str(path), "--out", str(tmp_path / "b"), *extra]) == 2
    assert flag in _one_error_line(capsys)


def test_cli_missing_checkpoint_names_the_flag(tmp_path: Path, capsys) -> None:
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")]) == 2
    assert "--checkpoint" in _one_error_line(capsys)


def test_cli_quantize_with_default_data_from_the_checkpoint(
    tiny_checkpoint_path: Path, tmp_path: Path, capsys
) -> None:
    # tiny_checkpoint_path's config["data"] names the caption set: no --data needed.
    out = tmp_path / "bundle"
    assert main(["--checkpoint", str(tiny_checkpoint_path), "--out", str(out), "--quantize"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "int8" in b.load_bundle(out).manifest.variants


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--out", "b"], "--checkpoint"),
        (["--checkpoint", "a", "--out", "b", "--subpixel", "5x5"], "--subpixel"),
        (["--checkpoint", "a", "--out", "b", "--min-psnr", "lots"], "--min-psnr"),
    ],
)
def test_cli_argparse_errors_are_one_line_and_return_2(argv: list[str], flag: str, capsys) -> None:
    assert main(argv) == 2
    assert flag in _one_error_line(capsys)


def test_cli_exports_a_checkpoint_written_by_the_first_release(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    # Written before train/ moved into rooms: checkpoints carry no module paths, so it must load.
    path = fixtures_dir / "checkpoint_v1" / "gan.pt"
    loaded = ck.load_checkpoint(path)
    assert loaded["kind"] == "gan" and loaded["format_version"] == 1
    out = tmp_path / "bundle"
    assert main(["--checkpoint", str(path), "--out", str(out)]) == 0
    bundle = b.load_bundle(out)
    assert bundle.manifest.provenance["checkpoint_sha256"] == b.sha256_file(path)
