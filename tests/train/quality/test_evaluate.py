"""`python -m train evaluate` end to end on a tiny checkpoint and on the tiny bundle (random
weights: the numbers are low, the mechanics and the report are what is tested), the captions
file, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoints import tiny_text_encoder_checkpoint

from edge_runtime.engine import noise_for
from export.tiny import tiny_checkpoint
from train import checkpoint as ck
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, Attributes
from train.data.captions import caption_for
from train.data.synth import SynthConfig, synthesize
from train.quality import evaluate as ev
from train.quality import oracle as om
from train.quality import report

REPO = Path(__file__).resolve().parents[3]
TINY_BUNDLE = REPO / "tests" / "fixtures" / "tiny_bundle"
QUICK = ["--limit", "24", "--seeds", "2", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real renders, a tiny random GAN checkpoint, a tiny image-text encoder, an (untrained,
    hence dishonest) oracle."""
    tmp = tmp_path_factory.mktemp("eval")
    data = tmp / "scenes.h5"
    synthesize(SynthConfig(out=data, train=16, test=48, test_unseen=48, workers=1))
    trained = tiny_checkpoint(data=data)
    # As the trainer saves it after 40 steps, D saturated on 3 of them.
    trained |= {"step": 40, "counters": {"d_saturated_steps": 3}}
    gan = ck.save_checkpoint(trained, tmp / "gan.pt")
    retrieval = tiny_text_encoder_checkpoint(tmp / "retrieval.pt", embedding_dim=16)
    # A narrow oracle: its honesty check runs at every evaluation, keep it cheap.
    oracle = om.AttributeOracle(om.OracleConfig(channels=(8, 16, 16, 16), feature_dim=16)).eval()
    oracle_path = ck.save_checkpoint(
        om.oracle_checkpoint(
            oracle,
            om.OracleTrainConfig(oracle=oracle.config),
            dict(ATTRIBUTE_VALUES),
            om.HonestyReport({}, {}),
            {},
        ),
        tmp / "oracle.pt",
    )
    judge = om.build_network(
        om.OracleConfig(design="judge", channels=(8, 16, 16), feature_dim=16)
    ).eval()
    judge_path = ck.save_checkpoint(
        om.oracle_checkpoint(
            judge,
            om.OracleTrainConfig(oracle=judge.config),
            dict(ATTRIBUTE_VALUES),
            om.HonestyReport({}, {}),
            {},
        ),
        tmp / "judge.pt",
    )
    return {
        "data": data,
        "gan": gan,
        "retrieval": retrieval,
        "oracle": oracle_path,
        "judge": judge_path,
    }


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ev.RESULTS_FILE).read_text().splitlines()]


def _check_report(out: Path, records: list[dict]) -> None:
    for name in ("report.md", "samples.png", "attributes.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
    report = (out / "report.md").read_text()
    assert "Attribute accuracy" in report and "FID in the oracle's feature space" in report
    assert "FAILED" in report  # the forced, untrained oracle is flagged in the report
    by = {(r["metric"], r.get("split")): r for r in records}
    for split in ("test", "test_unseen"):
        attrs = by[("attributes", split)]
        assert set(attrs["accuracy"]) == set(ATTRIBUTE_NAMES)
        assert attrs["images"] == 2 * 24 and 0.0 <= attrs["all_correct"] <= 1.0
        assert attrs["oracle_honest"] is False
        fid = by[("fid", split)]
        assert fid["value"] > 0 and fid["baseline"] > 0 and fid["images_per_set"] == 12
        assert by[("kid", split)]["evaluations"] == 2 * 2  # both folds × 2 seeds
        assert by[("diversity", split)]["pixel_l1"] >= 0


def test_evaluate_tiny_checkpoint_writes_metrics_and_report(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--oracle",
            str(files["oracle"]),
            "--force-oracle",
            "--judge",
            str(files["judge"]),
            "--force-judge",
            "--retrieval",
            str(files["retrieval"]),
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"test", "test_unseen"}
    records = _records(out)
    _check_report(out, records)
    # The second judge beside the oracle: its own records, named, in the summary and the report.
    by = {(r["metric"], r.get("split")): r for r in records}
    for split in ("test", "test_unseen"):
        judged = by[("attributes_judge", split)]
        assert judged["design"] == "judge" and str(files["judge"]) in judged["judged_by"]
        assert judged["judge"] == str(files["judge"])  # the run header's field, intact
        assert by[("attributes", split)]["design"] == "cnn"
        assert set(judged["accuracy"]) == set(ATTRIBUTE_NAMES) and judged["images"] == 2 * 24
        assert 0 <= summary[split]["judge_all_correct"] <= 1
        hf = by[("hf_energy", split)]
        assert hf["real"] > 0 and hf["ratio"] == pytest.approx(hf["value"] / hf["real"])
        assert summary[split]["hf_ratio"] == pytest.approx(hf["ratio"], abs=1e-4)
        assert by[("diversity", split)]["seeds"] == 2
    assert all(r["judge_honest"] is False for r in records)
    report = (out / "report.md").read_text()
    assert f"Attribute accuracy (second judge: design judge, `{files['judge']}`" in report
    assert "The two judges side by side" in report and "High-frequency energy" in report
    # A separately trained encoder (not the GAN's own image encoder) is marked independent.
    assert by[("r_precision", "test")]["independent"] is True
    assert "R-precision (independent image-text encoder" in report
    rp = next(r for r in records if r["metric"] == "r_precision" and r["split"] == "test")
    assert rp["candidates"] == 24 and 0 <= rp["value"] <= 1 and "real_value" in rp
    assert all(r["kind"] == "checkpoint" and r["seeds"] == 2 for r in records)
    # The checkpoint's training history in every record and in the report (issue 16's target).
    assert {(r["training_steps"], r["d_saturated_steps"]) for r in records} == {(40, 3)}
    assert "D saturated (adversarial loss < 0.01) in training: 3 of 40 steps (7.5 %) ✗" in report


def test_saturation_text_counts_against_the_five_percent_target() -> None:
    assert report.saturation_text(5, 100) == "5 of 100 steps (5.0 %) ✓"  # the target's edge
    assert report.saturation_text(1984, 8000) == "1,984 of 8,000 steps (24.8 %) ✗"
    assert report.saturation_text(0, 1000) == "0 of 1,000 steps (0.0 %) ✓"
    # A checkpoint from before the trainer counted, or one that never stepped.
    assert report.saturation_text(None, 8000) == report.saturation_text(3, 0) == "not recorded"


def test_evaluate_tiny_bundle_fp32_and_int8(files: dict[str, Path], tmp_path: Path) -> None:
    images = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        code = ev.main(
            [
                "--bundle",
                str(TINY_BUNDLE),
                "--precision",
                precision,
                "--data",
                str(files["data"]),
                "--oracle",
                str(files["oracle"]),
                "--force-oracle",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        assert code == 0
        records = _records(out)
        _check_report(out, records)
        assert {r["precision"] for r in records} == {precision}
        # A bundle carries no training history: no saturation line, no invented counts.
        assert "D saturated" not in (out / "report.md").read_text()
        assert not any("d_saturated_steps" in r for r in records)
        # No image encoder in a bundle: R-precision says how to get it.
        skipped = next(r for r in records if r["metric"] == "r_precision")
        assert "--retrieval" in skipped["skipped"]
        source = ev.BundleSource(TINY_BUNDLE, precision)
        images[precision] = source.generate(["a survivor in red lying on rubble, left"], 0)
    # Same captions and noise through both variants: close, not identical (quantised).
    diff = np.abs(images["fp32"].astype(int) - images["int8"].astype(int))
    assert diff.mean() < 8


def test_evaluate_checkpoint_noise_rule_is_the_robots(files: dict[str, Path]) -> None:
    source = ev.CheckpointSource(files["gan"])
    generator = source.generator
    noise_seen: list[np.ndarray] = []

    def recording_generator(noise, embedding):  # type: ignore[no-untyped-def]
        noise_seen.append(noise.numpy().copy())
        return generator(noise, embedding)

    source.generator = recording_generator
    captions = ["a worker in blue sitting on sand, right, helmet on"] * 3
    batch = source.generate(captions, seed=5)
    alone = source.generate(captions[:1], seed=5, first_index=2)
    # The rule itself: image i of a call uses noise_for(seed, first_index + i), the robot's rows.
    batch_noise, alone_noise = noise_seen
    for i in range(3):
        assert np.array_equal(batch_noise[i], noise_for(5, i, generator.config.noise_dim))
    assert np.array_equal(alone_noise[0], batch_noise[2])
    # The pixels: the same noise and text, but a batch of 3 vs 1 may pick another convolution
    # kernel (batch size, threads, CPU family), which rounds the last bit differently; mapped to
    # uint8 that is at most one level (docs/PROTOCOL.md § Determinism).
    assert np.abs(batch[2].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])


def _captions_file(path: Path, count: int = 30) -> Path:
    rng = np.random.default_rng(0)
    lines = ["# a comment line, then a blank line", ""]
    for i in range(count):
        a = Attributes.from_class_id(int(rng.integers(864)))
        values = {n: getattr(a, n) for n in ATTRIBUTE_NAMES}
        if i % 2:
            values["helmet"] = 1 if a.helmet == "yes" else 0  # indices are accepted too
        if i % 3 == 0:
            del values["helmet"]  # a label may leave out what its caption does not state
        lines.append(json.dumps({"caption": caption_for(a, rng), "attributes": values}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_captions_file(files: dict[str, Path], tmp_path: Path) -> None:
    captions = _captions_file(tmp_path / "mine.jsonl")
    out = tmp_path / "eval"
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--captions",
            str(captions),
            "--oracle",
            str(files["oracle"]),
            "--force-oracle",
            "--seeds",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = _records(out)
    attrs = next(r for r in records if r["metric"] == "attributes")
    assert attrs["split"] == "mine" and attrs["images"] == 2 * 30
    # Unstated attributes are not scored: 10 of the 30 captions say nothing about a helmet.
    assert attrs["stated"] == {
        "colour": 30,
        "terrain": 30,
        "pose": 30,
        "position": 30,
        "helmet": 20,
    }
    # No real images for free-form captions: FID is skipped with the reason.
    fid = next(r for r in records if r["metric"] == "fid")
    assert "real images" in fid["skipped"]
    assert (out / "report.md").is_file()


def test_evaluate_captions_file_reports_every_bad_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    good = {
        "caption": "a man in red on snow, left, standing, no helmet",
        "attributes": {
            "colour": "red",
            "terrain": "snow",
            "pose": "standing",
            "position": "left",
            "helmet": "no",
        },
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"caption": "x"}),
        json.dumps({**good, "attributes": {**good["attributes"], "colour": "teal"}}),
        json.dumps({**good, "attributes": {"pose": None}}),
        json.dumps({**good, "caption": "   "}),
        json.dumps({**good, "attributes": {**good["attributes"], "mood": "calm"}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--captions",
            str(path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    for number, words in (
        (2, "not JSON"),
        (3, "'attributes'"),
        (4, "'teal'"),
        (5, "names none of"),
        (6, "'caption'"),
        (7, "mood"),
    ):
        assert f"bad.jsonl:{number}: " in err and words in err, (number, err)
    assert "bad.jsonl:1:" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the input is valid


def test_evaluate_refuses_a_dishonest_oracle_without_force(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--oracle",
            str(files["oracle"]),
            "--out",
            str(tmp_path / "out"),
            *QUICK,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "honesty" in err and "--force-oracle" in err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--metrics", "fid,bogus"], "--metrics"),
        (["--precision", "int8"], "--precision"),
        (["--draw", "understood"], "--draw understood needs a bundle"),
        (["--oracle", "/nonexistent/oracle.pt"], "--oracle"),
        (["--metrics", "inception"], "--inception-weights"),
    ],
)
def test_evaluate_bad_flags_are_one_line(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    words: str,
) -> None:
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--out",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_evaluate_bundle_needs_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main(["--bundle", str(TINY_BUNDLE), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err


def test_evaluate_dataset_without_attributes_runs_what_applies(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # A CUB-style file (classes, captions, no attributes): R-precision and diversity run; the
    # oracle's metrics and the Inception metrics say what they would need.
    from train.data.schema import write_dataset
    from train.gan.trainer import generated_split

    data = write_dataset(
        tmp_path / "birds.h5",
        {"test": generated_split(40, captions=3, seed=1)},
        dataset="birds-like",
        image_size=64,
    )
    out = tmp_path / "eval"
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(data),
            "--splits",
            "test",
            "--retrieval",
            str(files["retrieval"]),
            "--seeds",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = {r["metric"]: r for r in _records(out)}
    assert "--oracle" in records["attributes"]["skipped"]
    assert "--inception-weights" in records["inception"]["skipped"]
    assert 0 <= records["r_precision"]["value"] <= 1 and records["r_precision"]["candidates"] > 2
    assert records["diversity"]["pixel_l1"] > 0


def test_evaluate_marks_the_gans_own_encoder_not_independent(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # A GAN checkpoint carries the image encoder its generator trained against.
    retrieval = ck.load_checkpoint(files["retrieval"])
    gan = ck.load_checkpoint(files["gan"], kind="gan")
    gan["models"]["image_encoder"] = retrieval["models"]["image_encoder"]
    gan["model_configs"]["image_encoder"] = retrieval["model_configs"]["image_encoder"]
    source = ev.CheckpointSource(ck.save_checkpoint(gan, tmp_path / "gan.pt"))
    assert ev.retrieval_independence(source, None) is False  # the checkpoint's own encoder
    same = {k: v.clone() for k, v in retrieval["models"]["image_encoder"].items()}
    assert ev.retrieval_independence(source, same) is False  # --retrieval, same weights
    other = {k: v + 1e-3 if v.is_floating_point() else v for k, v in same.items()}
    assert ev.retrieval_independence(source, other) is True  # trained separately
    assert ev.retrieval_independence(ev.BundleSource(TINY_BUNDLE, "fp32"), other) is None
    # Wherever the figure is printed, the mark travels with it.
    record = {"metric": "r_precision", "split": "test", "value": 0.5, "std_over_seeds": 0.0}
    record |= {"candidates": 24, "chance": 1 / 24, "independent": False}
    assert "not independent" in report.markdown_tables([record], ATTRIBUTE_NAMES)
    summary = ev.summary([record])
    assert "(not independent)" in report.ablation_table([("run", summary)])


def test_evaluate_refuses_a_judge_of_the_oracles_design(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ev.main(
        [
            "--checkpoint",
            str(files["gan"]),
            "--data",
            str(files["data"]),
            "--judge",
            str(files["oracle"]),
            "--out",
            str(tmp_path / "out"),
            *QUICK,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--judge" in err and "another design" in err


def test_evaluate_test_phrasing_scores_stated_attributes_and_unstated_entropy(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The held-out phrasing split: partial captions scored on what they state, the entropy of
    what they leave open by both judges, in metrics.jsonl, the summary and the report."""
    out = tmp_path / "eval"
    args = ["--checkpoint", str(files["gan"]), "--data", str(files["data"]), "--splits",
            "test_phrasing", "--oracle", str(files["oracle"]), "--force-oracle", "--judge",
            str(files["judge"]), "--force-judge", "--metrics",
            "attributes,attributes_judge,unstated_entropy,unstated_entropy_judge",
            "--seeds", "8", "--limit", "24", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert ev.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_phrasing"]
    by = {r["metric"]: r for r in _records(out)}
    attrs = by["attributes"]
    assert attrs["partial"]["captions"] + attrs["full"]["captions"] == 24
    assert attrs["partial"]["captions"] > 0 and min(attrs["stated"].values()) < 24
    for metric in ("unstated_entropy", "unstated_entropy_judge"):
        record = by[metric]
        assert record["seeds"] == 8 and record["captions"] == attrs["partial"]["captions"]
        assert 0.0 <= record["overall"] <= 1.0
    assert by["unstated_entropy_judge"]["design"] == "judge"
    assert summary["unstated_entropy"] == pytest.approx(by["unstated_entropy"]["overall"], abs=1e-4)
    assert "judge_unstated_entropy" in summary and "partial_all_stated_correct" in summary
    text = (out / "report.md").read_text()
    assert "Partial captions: stated attributes right" in text
    assert "Partial captions: entropy of the unstated attributes" in text
