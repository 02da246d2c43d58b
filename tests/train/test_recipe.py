"""The default recipe end to end on tiny configs and real renders: text encoder → GAN →
leave-one-out ablation → oracle → evaluation → REPORT.md; and its one-line flag errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.machine import cpu_info
from train import models
from train import recipe as rc
from train.data.synth import SynthConfig, synthesize
from train.distributed import cpu_computes_bf16
from train.quality.report import saturation_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenes") / "scenes.h5"
    synthesize(SynthConfig(out=path, train=96, test=32, test_unseen=32, workers=1))
    return path


def test_recipe_trains_without_a_weight_average_unless_asked() -> None:
    default = rc.RecipeConfig(data="scenes.h5")
    assert default.ema_decay == 0.0
    assert "no-ema" not in [name for name, _, _ in rc.ablation_runs(default)]
    flags = rc.RecipeFlags(**vars(rc.build_parser().parse_args(["--ema-decay", "0.999"])))
    assert flags.ema_decay == 0.999
    with_average = rc.RecipeConfig(data="scenes.h5", ema_decay=0.999)
    assert "no-ema" in [name for name, _, _ in rc.ablation_runs(with_average)]


def test_recipe_trains_the_gan_on_full_captions_unless_asked() -> None:
    assert rc.RecipeConfig(data="scenes.h5").partial_captions == "skip"
    parse = rc.build_parser().parse_args
    assert rc.RecipeFlags(**vars(parse([]))).partial_captions == "skip"
    assert rc.RecipeFlags(**vars(parse(["--partial-captions", "aware"]))).partial_captions == (
        "aware"
    )


def test_recipe_runs_end_to_end_with_ablation_and_report(scenes: Path, tmp_path: Path) -> None:
    config = rc.RecipeConfig(
        data=str(scenes),
        out=str(tmp_path / "recipe"),
        threads=1,
        text_steps=3,
        text_overrides={
            "batch_size": 16,
            "checkpoint_every": 1000,
            "log_every": 1,
            "text_encoder": models.TextEncoderConfig(
                conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16
            ),
            "image_encoder": models.ImageEncoderConfig(channels=(8, 8), embedding_dim=16),
        },
        ngf=8,
        ndf=8,
        gan_steps=2,
        gan_overrides={
            "batch_size": 8,
            "captions_per_sample": 2,
            "log_every": 1,
            "sample_every": 1000,
            "checkpoint_every": 1000,
        },
        ema_decay=0.999,  # as the demo: the recipe's own default trains without the average
        ablation=True,
        ablation_terms=("fm", "ema"),
        train_oracle=True,
        oracle_overrides={"epochs": 1, "batch_size": 32, "noise_images": 30, "force": True},
        eval_seeds=2,
        eval_limit=16,
        progress=False,
    )
    result = rc.run(config)
    run = Path(result["run_dir"])
    assert json.loads((run / "config.json").read_text())["ablation"] is True
    stages = [json.loads(line) for line in (run / rc.RECIPE_FILE).read_text().splitlines()]
    names = [s["stage"] for s in stages]
    for name in (
        "text_encoder",
        "gan",
        "recipe",
        "gan_default-seed1",
        "gan_no-fm",
        "gan_no-ema",
        "oracle",
        "evaluate_0",
        "evaluate_3",
    ):
        assert name in names, name
    assert result["gan_steps"] == 2
    # D's saturated steps, as the trainer counted them, for every GAN run and in the report.
    assert 0 <= result["gan_d_saturated_steps"] <= 2
    assert all(0 <= run["d_saturated_steps"] <= 2 for run in result["ablation"].values())
    gan_stage = next(s for s in stages if s["stage"] == "gan")
    assert gan_stage["d_saturated_steps"] == result["gan_d_saturated_steps"]
    assert {k: v["steps"] for k, v in result["ablation"].items()} == {
        "default-seed1": 2, "no-fm": 2, "no-ema": 2
    }  # fmt: skip
    # Leave-one-out: each run differs from the default in its one term (or its seed) only.
    default = json.loads(next((run / "gan").glob("*/config.json")).read_text())
    ignore = {"out", "text_encoder_checkpoint"}
    for name, changed in (
        ("default-seed1", {"seed": 1}),
        ("no-fm", {"fm_weight": 0.0}),
        ("no-ema", {"ema_decay": 0.0}),
    ):
        saved = json.loads(next((run / f"gan-{name}").glob("*/config.json")).read_text())
        diff = {k: saved[k] for k in saved if k not in ignore and saved[k] != default.get(k)}
        assert diff == changed, name
    assert default["fm_weight"] > 0 and default["ema_decay"] > 0
    # The robot draws full canonical captions: the recipe's GAN learns from full captions only.
    assert default["partial_captions"] == "skip"
    report = (run / rc.REPORT_FILE).read_text()
    # The machine and the GAN's arithmetic beside the figures (docs/QUALITY.md § 3.17).
    assert result["machine"] == cpu_info().describe()
    assert result["gan_arithmetic"] == ("bf16" if cpu_computes_bf16() else "fp32")
    assert result["cpu_computes_bf16"] is cpu_computes_bf16()
    assert f"- machine: {result['machine']}; GAN arithmetic: {result['gan_arithmetic']}" in report
    assert "leave-one-out ablation" in report and "without feature matching" in report
    assert "test_unseen R-prec % | D saturated |" in report  # the table's last column
    shown = saturation_text(result["gan_d_saturated_steps"], 2)
    assert f"(2 steps; D saturated: {shown})" in report
    for folder in ("default", "default-seed1", "no-fm", "no-ema"):
        assert (run / "eval" / folder / "report.md").is_file()
    assert set(result["evaluation"]) == {
        "default objective, seed 0",
        "default-seed1: default, seed 1",
        "no-fm: without feature matching",
        "no-ema: without EMA of G",
    }
    # The held-out phrasing split: partial captions at 8 seeds (issue 17), in REPORT.md too.
    assert "evaluate_phrasing" in names
    assert 0 <= result["phrasing"]["unstated_entropy"] <= 1
    assert "partial_all_stated_correct" in result["phrasing"]
    assert "## Operator phrasing (`test_phrasing`, the default GAN)" in report
    assert "Partial captions: entropy of the unstated attributes" in report
    phrasing = [json.loads(line) for line in (run / "eval/phrasing/metrics.jsonl").open()]
    assert {r["seeds"] for r in phrasing} == {8}


def test_report_says_when_the_cpu_cannot_compute_bf16() -> None:
    slow = rc.arithmetic_text({"cpu_computes_bf16": False, "gan_arithmetic": "fp32"})
    assert slow.startswith("fp32 (") and "half the GAN steps" in slow and "§ 3.17" in slow
    # fp32 by choice on a bf16 CPU, or bf16: nothing to warn about.
    assert rc.arithmetic_text({"cpu_computes_bf16": True, "gan_arithmetic": "fp32"}) == "fp32"
    assert rc.arithmetic_text({"cpu_computes_bf16": True, "gan_arithmetic": "bf16"}) == "bf16"
    # A summary written before the field existed (an older recipe's JSON): no claim either way.
    assert rc.arithmetic_text({"gan_arithmetic": "fp32"}) == "fp32"
    assert rc.arithmetic_text({}) == "–"


def test_recipe_bad_flags_are_one_line(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, words in (
        (["--minutes", "0"], "--minutes"),
        (["--ngf", "0"], "--ngf"),
        (["--oracle", str(tmp_path / "none.pt")], "--oracle"),
        (["--judge", str(tmp_path / "none.pt")], "--judge"),
        (["--text-encoder", str(scenes)], "scenes.h5"),
        (["--ablation-terms", "fm"], "--ablation-terms"),
        (["--ablation", "--ablation-terms", "fm,colour"], "colour"),
        (["--ablation", "--ablation-terms", "fm", "--objective", "paper"], "has it off"),
    ):
        assert rc.main(["--data", str(scenes), "--out", str(tmp_path / "r"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
    assert rc.main(["--data", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


def test_recipe_cli_reuses_a_pretrained_text_encoder(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from train import checkpoint as ck

    te = models.TextEncoderConfig(conv_channels=(16, 16, 16), rnn_hidden=16, embedding_dim=16)
    path = ck.save_checkpoint(
        ck.new_checkpoint(
            "text_encoder",
            models={"text_encoder": models.CharCnnRnn(te).state_dict()},
            model_configs={"text_encoder": dataclasses.asdict(te)},
            config={},
        ),
        tmp_path / "te.pt",
    )
    argv = [
        "--data",
        str(scenes),
        "--out",
        str(tmp_path / "r"),
        "--text-encoder",
        str(path),
        "--gan-steps",
        "1",
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--threads",
        "1",
        "--no-progress",
        "--objective",
        "paper",
    ]
    assert rc.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = Path(result["run_dir"])
    assert not (run / "text-encoder").exists()  # stage 1 skipped
    stage = json.loads((run / rc.RECIPE_FILE).read_text().splitlines()[0])
    assert stage["stage"] == "text_encoder" and stage["checkpoint"] == str(path)
    gan = ck.load_checkpoint(result["checkpoint"], kind="gan")
    assert gan["config"]["text_encoder_checkpoint"]["path"] == str(path.resolve())
    # --objective reaches the GAN, resolved to explicit weights (Reed's: no extra terms).
    saved = gan["config"]
    assert saved["objective"] == "paper" and saved["fm_weight"] == saved["match_weight"] == 0.0
    assert saved["nonsat_weight"] == pytest.approx(2 / 3)


def test_ablated_terms_follow_the_objective() -> None:
    from train.gan import config as gc

    def terms(**fields: object) -> list[str]:
        return gc.ablated_terms(gc.GanTrainConfig(text_encoder="random", **fields))  # type: ignore[arg-type]

    assert terms() == ["match", "fm", "int", "wrong", "ema", "text-norm"]
    assert terms(objective="paper") == ["int", "wrong", "ema", "text-norm"]
    assert terms(objective="seed") == ["fm", "int", "wrong", "ema", "text-norm"]
    on = terms(r1_gamma=1.0, hard_negative_fraction=0.3, d_augment="translation", fm_weight=0.0)
    assert "fm" not in on and {"r1", "hard-negatives", "d-augment"} <= set(on)
    assert "text-norm" not in terms(text_norm="none")
