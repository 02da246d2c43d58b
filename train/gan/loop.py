"""`python -m train gan`: the run folder, the training loop and the command line.

    python -m train gan --data data/rescue_scenes.h5 --text-encoder runs/te/00000-x/checkpoint.pt \\
        --out runs/gan [--minutes 15] [--resume runs/gan/00003-...]
    torchrun --nproc-per-node 4 -m train gan ...        # data-parallel, same flags
    python -m train gan --dry-run                       # one real step on generated data

The step itself is `train.gan.trainer`; the flags and config are `train.gan.config`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from train import checkpoint as ck
from train import distributed, options
from train.data.schema import SplitData
from train.distributed import DistEnv
from train.errors import BAD_INPUT
from train.gan.config import (
    RESUMABLE_OVERRIDES,
    ConfigError,
    GanTrainConfig,
    build_parser,
    config_from_checkpoint,
    validate,
)
from train.gan.trainer import GanTrainer
from train.runs import new_run_dir, truncate_after_step, write_json_atomic

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# Run folder, logging and the loop
# ---------------------------------------------------------------------------------------------


class RunLog:
    """Rank 0's outputs: TensorBoard, metrics.jsonl, sample PNGs, log.txt."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: slow to import, rank 0 only

        self.run_dir = run_dir
        (run_dir / "samples").mkdir(exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            # Drop lines a crashed run logged after the checkpoint: those steps are redone.
            truncate_after_step(self.metrics_path, resume_step)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self.handler)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    def images(self, step: int, grid: torch.Tensor, strips: torch.Tensor) -> None:
        self.writer.add_image("samples/captions_x_noise", grid, step)
        self.writer.add_image("samples/gan_int_strips", strips, step)
        for name, image in (("grid", grid), ("interp", strips)):
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            path = self.run_dir / "samples" / f"{name}-{step:07d}.png"
            cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        self.writer.close()
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


@dataclass
class RunResult:
    """What `train` returns (tests and the recipe use it)."""

    trainer: GanTrainer
    run_dir: Path | None
    exit_code: int
    checkpoint: Path | None


def train(
    config: GanTrainConfig,
    *,
    resume_from: str | None = None,
    split: SplitData | None = None,
    started: float | None = None,
    env: DistEnv | None = None,
) -> RunResult:
    """Run (or continue) training per `config`; the library entry point behind `main`."""
    started = time.monotonic() if started is None else started
    env = env or distributed.init_distributed(config.device)
    config = validate(config, env.world_size)
    resume: dict[str, Any] | None = None
    run_dir: Path | None = None
    if resume_from is not None:
        ckpt_path = _checkpoint_path(resume_from)
        resume = ck.load_checkpoint(ckpt_path, kind="gan", map_location="cpu")
        run_dir = ckpt_path.parent
        if env.is_main:
            # Temp files of a writer killed mid-save (the checkpoint itself is always whole).
            for stale in run_dir.glob(f".{ckpt_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
    trainer = GanTrainer(config, env, split=split, resume=resume, resume_path=str(resume_from))
    c = trainer.config
    if env.is_main:
        if run_dir is None:
            name = Path(c.data).stem if c.data else "generated"
            run_dir = new_run_dir(c.out, f"{name}-ngf{c.ngf}-ndf{c.ndf}")
        resolved = trainer.resolved_config()
        resolved["run"] = {
            "world_size": env.world_size,
            "device": str(env.device),
            "batch_per_process": trainer.local_batch,
            "interpolated_per_process": trainer.local_interp,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "images": len(trainer.dataset),
            "data_digest": trainer.data_digest,
            "torch": torch.__version__,
            "resumed_from_step": trainer.step if resume is not None else None,
        }
        write_json_atomic(run_dir / "config.json", resolved, sort_keys=True)
        log.info("run folder %s (config.json written)", run_dir)
    result = RunResult(trainer, run_dir, 0, None)
    runlog = RunLog(run_dir, trainer.step if resume else None) if env.is_main else None
    try:
        result.exit_code, result.checkpoint = _loop(trainer, runlog, run_dir, started)
    finally:
        if runlog is not None:
            runlog.close()
    return result


def _checkpoint_path(resume_from: str) -> Path:
    path = Path(resume_from)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def _loop(
    trainer: GanTrainer, runlog: RunLog | None, run_dir: Path | None, started: float
) -> tuple[int, Path | None]:
    """The training loop: steps, logging, samples, checkpoints, stop conditions."""
    c, env = trainer.config, trainer.env
    main_rank = env.is_main
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    last_good: tuple[Path | None, int | None] = (
        (ckpt_path, trainer.step) if ckpt_path is not None and ckpt_path.exists() else (None, None)
    )
    budget = None if c.minutes is None else c.minutes * 60.0
    sums: dict[str, torch.Tensor] = {}
    interval_steps, interval_start = 0, time.monotonic()
    if main_rank and runlog is not None and trainer.step == 0:
        runlog.writer.add_text("samples/captions", "\n\n".join(trainer.grid_texts()), 0)
        runlog.images(0, *trainer.sample_grids())

    def save() -> bool:
        """Write the checkpoint (rank 0) unless a weight is non-finite; False = stop."""
        nonlocal last_good
        nets = [trainer.generator, trainer.discriminator]
        finite = all(bool(torch.isfinite(p).all()) for n in nets for p in n.parameters())
        if distributed.any_rank(not finite, trainer.device):
            log.error(
                "step %d: non-finite weights; not saved, %s",
                trainer.step,
                _last_good_text(last_good),
            )
            return False
        if env.distributed and not all(
            distributed.replicas_identical(n, trainer.device) for n in nets
        ):
            raise RuntimeError("DDP ranks hold different weights; this is a bug, please report it")
        if main_rank and ckpt_path is not None:
            ck.save_checkpoint(trainer.checkpoint(), ckpt_path)
            last_good = (ckpt_path, trainer.step)
            log.info("step %d: checkpoint %s", trainer.step, ckpt_path)
        return True

    exit_code = 0
    bar = tqdm(
        total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
        disable=None if main_rank and c.progress else True, desc="GAN",
    )  # fmt: skip
    redirect = logging_redirect_tqdm() if main_rank and c.progress else contextlib.nullcontext()
    try:
        with redirect:
            while trainer.step < trainer.total_steps:
                epoch, start = divmod(trainer.step, trainer.steps_per_epoch)
                stop = False
                for batch in trainer.loader.batches(epoch, start):
                    metrics = trainer.train_step(batch)
                    bar.update(1)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0) + v
                    interval_steps += 1
                    stacked = torch.stack(list(metrics.values()))
                    bad = not bool(torch.isfinite(stacked).all())
                    if distributed.any_rank(bad, trainer.device):
                        names = [k for k, v in metrics.items() if not torch.isfinite(v)]
                        log.error(
                            "step %d (epoch %d): non-finite %s; stopped without saving, %s",
                            trainer.step, trainer.epoch, ", ".join(names) or "loss on another rank",
                            _last_good_text(last_good),
                        )  # fmt: skip
                        return 1, last_good[0]
                    step = trainer.step
                    if step % c.log_every == 0 or step == trainer.total_steps:
                        _log_interval(
                            trainer, runlog, bar, sums, steps=interval_steps, started=interval_start
                        )
                        sums, interval_steps, interval_start = {}, 0, time.monotonic()
                    if main_rank and runlog is not None and step % c.sample_every == 0:
                        runlog.images(step, *trainer.sample_grids())
                    if step % c.checkpoint_every == 0 and not save():
                        return 1, last_good[0]
                    if budget is not None:
                        out_of_time = time.monotonic() - started >= budget
                        if distributed.broadcast_flag(out_of_time, trainer.device):
                            log.info("step %d: --minutes %g reached", step, c.minutes)
                            stop = True
                    if stop or trainer.step >= trainer.total_steps:
                        break
                if stop:
                    break
            if trainer.step % c.checkpoint_every != 0 and not save():
                return 1, last_good[0]
            if main_rank and runlog is not None and trainer.step % c.sample_every != 0:
                runlog.images(trainer.step, *trainer.sample_grids())
    except KeyboardInterrupt:
        if not env.distributed:
            log.warning("interrupted at step %d: saving a checkpoint", trainer.step)
            save()
        return 130, last_good[0]
    finally:
        bar.close()
    return exit_code, last_good[0]


def _last_good_text(last_good: tuple[Path | None, int | None]) -> str:
    if last_good[0] is None:
        return "no checkpoint was written yet"
    return f"last good checkpoint: {last_good[0]} (step {last_good[1]})"


def _log_interval(
    trainer: GanTrainer,
    runlog: RunLog | None,
    bar: Any,
    sums: dict[str, torch.Tensor],
    *,
    steps: int,
    started: float,
) -> None:
    """Average the interval's metrics over steps and ranks; rank 0 writes them."""
    if not sums:
        return
    keys = list(sums)
    totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]).float())
    means = (totals / (steps * trainer.env.world_size)).tolist()
    elapsed = max(time.monotonic() - started, 1e-9)
    values = dict(zip(keys, means, strict=True))
    # Measurements of the networks now (the same on every rank's call order, so collectives of
    # synchronised batch norm match): per-term G gradient norms of the last probe step, D's
    # score on held-out real images, and the run's share of saturated D steps so far.
    measured = dict(trainer.probe)
    trainer.probe = {}
    held_out = trainer.held_out_score()
    if held_out is not None:
        measured["D(x)/held_out_right_text"] = held_out
    measured["D/saturated_steps_total"] = trainer.saturated_steps.clone()
    if measured:
        names = list(measured)
        stacked = torch.stack([measured[k].float() for k in names])
        averaged = distributed.all_reduce_sum(stacked) / trainer.env.world_size
        values.update(zip(names, averaged.tolist(), strict=True))
    values["lr"] = trainer.last_lr
    values["speed/images_per_s"] = steps * trainer.config.batch_size / elapsed
    values["epoch"] = trainer.epoch
    if runlog is not None:
        runlog.scalars(trainer.step, values)
        bar.set_postfix(
            img_s=f"{values['speed/images_per_s']:.0f}",
            D=f"{values['gan_cls/total_D']:.3f}",
            G=f"{values['generator/total_G']:.3f}",
            refresh=False,
        )
        log.debug("step %d: %s", trainer.step, values)
        if bar.disable and trainer.step % (10 * trainer.config.log_every) == 0:
            # No terminal (logs, `make demo`) or --no-progress: a progress line now and then.
            log.info(
                "step %d, epoch %d: D %.3f, G %.3f, %.0f images/s",
                trainer.step,
                trainer.epoch,
                values["gan_cls/total_D"],
                values["generator/total_G"],
                values["speed/images_per_s"],
            )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> tuple[GanTrainConfig, str | None]:
    """Flags → config; with --resume, the checkpoint's config plus the allowed overrides."""
    given = {k: v for k, v in vars(args).items() if k != "resume"}
    resume = getattr(args, "resume", None)
    if resume is None:
        if given.get("dry_run"):
            given.setdefault("steps", 1)
            given.setdefault("text_encoder", "random")
            if "data" in given:
                raise ConfigError("--dry-run trains on generated data: drop --data")
        elif "data" not in given:
            raise ConfigError("--data is required (an HDF5 dataset; or --dry-run)")
        elif "text_encoder" not in given:
            raise ConfigError(
                "--text-encoder is required (a checkpoint of `python -m train text-encoder`; "
                '"random" trains on an untrained encoder whose images will not follow the text)'
            )
        return GanTrainConfig(**given), None
    if given.get("dry_run"):
        raise ConfigError("--dry-run cannot --resume")
    path = _checkpoint_path(resume)
    saved = ck.load_checkpoint(path, kind="gan")
    base = config_from_checkpoint(saved.get("config", {}), str(path))
    return options.resume_config(base, given, RESUMABLE_OVERRIDES), str(path)


def main(argv: list[str] | None = None) -> int:
    """`python -m train gan ...`; returns the exit status."""
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        config, resume = resolve_config(args)
        env = distributed.init_distributed(config.device)
        result = train(config, resume_from=resume, started=started, env=env)
    except BAD_INPUT as err:
        print(f"rescue-train gan: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if result.exit_code == 0 and result.run_dir is not None:
        print(result.run_dir)  # machine-usable: the run folder
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
