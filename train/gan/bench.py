"""`python -m train.gan.bench`: GAN training throughput, product trainer vs a plain loop.

Measures and prints; never passes or fails on a time. Variants run round-robin, one step each
per round, so a busy machine slows them alike and the ratios stay meaningful; the table reports
the median step time of each.

- **plain**: the straightforward PyTorch GAN-CLS loop of the same architecture and losses
  (GAN-CLS real/wrong/fake, non-saturating G, GAN-INT on half a batch, feature matching): text
  embeddings recomputed by the char-CNN-RNN every step (captions padded to 201), a per-sample
  Dataset + DataLoader, separate D passes for real/right, real/wrong and fake/right, a fresh
  generator pass in the G step (as Reed's code), D's weight gradients computed and discarded in
  the G step, the real features for feature matching recomputed, fp32, NCHW.
- **plain, cached text**: the same loop fed the product's cached embeddings (shows how much of
  the gap is the text encoder).
- **trainer**: `train.gan.trainer.GanTrainer.train_step` with its loader, exactly as
  `python -m train gan` runs it, with the memory layout / compile variants given by the flags.

    python -m train.gan.bench                   # loader + ngf=ndf=64 comparison + width sweep
    python -m train.gan.bench --widths 64 --steps 3 --compile
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import torch

from edge_runtime import tokenizer
from train import models
from train.data.loader import GanClsDataset, GanClsLoader, LoaderConfig
from train.data.schema import SplitData
from train.distributed import DistEnv
from train.gan import losses
from train.gan.config import GanTrainConfig, validate
from train.gan.text_embeddings import TextEmbeddings
from train.gan.trainer import GanTrainer, generated_split
from train.timing import interleaved

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The plain loop
# ---------------------------------------------------------------------------------------------


class PlainDataset(torch.utils.data.Dataset):
    """Per-sample item: augmented image, K caption ids, a wrong-class caption, a partner caption."""

    def __init__(self, split: SplitData, k: int, seed: int) -> None:
        self.split = split
        self.k = k
        self.rng = np.random.default_rng(seed)
        rows, lengths = tokenizer.encode_batch(c for caps in split.captions for c in caps)
        n, c = len(split.captions), len(split.captions[0])
        self.ids = torch.tensor(rows).reshape(n, c, -1)  # (N, C, 201)
        self.lengths = torch.tensor(lengths).reshape(n, c)

    def __len__(self) -> int:
        return len(self.split.images)

    def _captions(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = self.rng.choice(self.ids.shape[1], self.k, replace=False)
        return self.ids[i, pick], self.lengths[i, pick]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = np.asarray(self.split.images[i], dtype=np.float32)

        image = cv2.resize(image, (76, 76), interpolation=cv2.INTER_LINEAR)
        y, x = self.rng.integers(0, 13, 2)
        image = image[y : y + 64, x : x + 64]
        if self.rng.random() < 0.5:
            image = image[:, ::-1]
        while True:
            j = int(self.rng.integers(len(self)))
            if self.split.class_ids[j] != self.split.class_ids[i]:
                break
        partner = (i + 1 + int(self.rng.integers(len(self) - 1))) % len(self)
        ids, lengths = self._captions(i)
        wrong_ids, wrong_lengths = self._captions(j)
        partner_ids, partner_lengths = self._captions(partner)
        return {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()) / 127.5 - 1,
            "ids": ids, "lengths": lengths, "wrong_ids": wrong_ids,
            "wrong_lengths": wrong_lengths, "partner_ids": partner_ids,
            "partner_lengths": partner_lengths,
            "index": torch.tensor(i), "wrong": torch.tensor(j), "partner": torch.tensor(partner),
        }  # fmt: skip


class PlainLoop:
    """The baseline (module docstring); `cached` swaps the encoder for the product's table."""

    def __init__(
        self,
        gan_config: models.GANConfig,
        encoder: models.CharCnnRnn,
        split: SplitData,
        *,
        batch_size: int = 64,
        k: int = 4,
        seed: int = 0,
        cached: TextEmbeddings | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.G, self.D = models.Generator(gan_config), models.Discriminator(gan_config)
        models.init_dcgan_weights(self.G)
        models.init_dcgan_weights(self.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.encoder = encoder.eval()
        self.cached = cached
        self.k = k
        self.noise_dim = gan_config.noise_dim
        self.data = torch.utils.data.DataLoader(
            PlainDataset(split, k, seed), batch_size=batch_size, shuffle=True, drop_last=True
        )
        self._batches = self._forever()

    def _forever(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from self.data

    def _embed(self, ids: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b, k, t = ids.shape
        if self.cached is not None:
            # Caption ids are not tracked through the plain dataset; the first K captions of the
            # image stand in (same lookup cost, same shapes).
            return self.cached.lookup(index, torch.arange(k).expand(b, k))
        with torch.no_grad():
            return (
                self.encoder(ids.reshape(b * k, t), lengths.reshape(b * k))
                .reshape(b, k, -1)
                .mean(1)
            )

    def step(self) -> None:
        batch = next(self._batches)
        real = batch["image"]
        b = len(real)
        n = b // 2
        right = self._embed(batch["ids"], batch["lengths"], batch["index"])
        wrong = self._embed(batch["wrong_ids"], batch["wrong_lengths"], batch["wrong"])
        partner = self._embed(
            batch["partner_ids"][:n], batch["partner_lengths"][:n], batch["partner"][:n]
        )
        # (1) D: GAN-CLS, three separate passes.
        fake = self.G(torch.randn(b, self.noise_dim), right)
        d_real, _ = self.D(real, right)
        d_wrong, _ = self.D(real, wrong)
        d_fake, _ = self.D(fake.detach(), right)
        d = losses.gan_cls_discriminator_loss(d_real, d_wrong, d_fake)
        self.opt_d.zero_grad()
        d.total.backward()
        self.opt_d.step()
        # (2) G: regenerate (right + interpolated), score, feature matching on fresh real stats.
        texts = torch.cat([right, losses.interpolate_embeddings(right[:n], partner)])
        generated = self.G(torch.randn(b + n, self.noise_dim), texts)
        logits, joint = self.D(generated, texts)
        _, joint_real = self.D(real, right)
        g = (
            losses.generator_nonsaturating_loss(logits[:b])
            + losses.gan_int_loss(logits[b:])
            + losses.feature_matching_loss(joint_real, joint[:b])
        )
        self.opt_g.zero_grad()
        g.backward()
        self.opt_g.step()


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def bench_loader(split: SplitData, seconds: float = 2.0) -> list[tuple[str, float]]:
    """Samples/s of the in-memory GAN-CLS loader (batch 64) with and without augmentation."""
    rows = []
    for name, config in (
        ("memory, resize 76 + crop + flip", LoaderConfig()),
        ("memory, no augmentation", LoaderConfig(crop=False, flip=False)),
        ("memory, + wrong images", LoaderConfig(wrong_images=True)),
    ):
        loader = GanClsLoader(GanClsDataset.from_split(split, config))
        count, epoch, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for batch in loader.batches(epoch):
                count += len(batch)
            epoch += 1
        rows.append((name, count / (time.perf_counter() - start)))
    return rows


def _trainer_stepper(
    split: SplitData, width: int, args: argparse.Namespace, **overrides: Any
) -> tuple[Callable[[], None], GanTrainer]:
    config = GanTrainConfig(
        text_encoder=args.text_encoder or "random", ngf=width, ndf=width,
        batch_size=args.batch_size, embedding_cache="off", progress=False, device="cpu",
        threads=args.threads, **overrides,
    )  # fmt: skip
    config = validate(config)
    trainer = GanTrainer(config, DistEnv(), split=split)

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            yield from trainer.loader.batches(epoch)
            epoch += 1

    it = batches()

    def step() -> None:
        trainer.train_step(next(it))

    return step, trainer


def main(argv: list[str] | None = None) -> int:
    """Print the loader and training-throughput tables."""
    p = argparse.ArgumentParser(
        prog="python -m train.gan.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--widths", type=int, nargs="+", default=[32, 48, 64], help="ngf = ndf values")
    p.add_argument("--steps", type=int, default=4, help="measured steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=2048, help="generated training images")
    p.add_argument("--text-encoder", help="text-encoder checkpoint (default: random init)")
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument("--bf16", action="store_true", help="add a CPU bf16-autocast variant (slow)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain loops")
    p.add_argument("--loader-only", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("train.gan", "train.gan.text_embeddings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip

    loader_split = generated_split(10_000, seed=1)
    print("\n## GAN-CLS loader (10,000 generated 64×64 images, batch 64)\n")
    print("| mode | samples/s |\n| --- | ---: |")
    for name, rate in bench_loader(loader_split):
        print(f"| {name} | {rate:,.0f} |")
    if args.loader_only:
        return 0

    split = generated_split(args.images, seed=1)
    results: list[dict[str, Any]] = []
    for width in sorted(set(args.widths), reverse=True):
        variants: dict[str, Callable[[], None]] = {}
        compile_s = None
        step, trainer = _trainer_stepper(split, width, args)
        variants["trainer (channels-last, fp32)"] = step
        variants["trainer (NCHW, fp32)"] = _trainer_stepper(
            split, width, args, channels_last=False
        )[0]
        if args.compile:
            compiled, _ = _trainer_stepper(split, width, args, compile=True)
            start = time.perf_counter()
            compiled()
            compile_s = time.perf_counter() - start
            variants["trainer + torch.compile"] = compiled
        if args.bf16:
            variants["trainer + CPU bf16 autocast"] = _trainer_stepper(
                split, width, args, amp="bf16"
            )[0]
        if not args.no_plain:
            gan_config = trainer.gan_config
            encoder = trainer.text_encoder
            k = trainer.config.captions_per_sample
            plain = PlainLoop(gan_config, encoder, split, batch_size=args.batch_size, k=k)
            variants["plain loop"] = plain.step
            cached = PlainLoop(
                gan_config, encoder, split, batch_size=args.batch_size, k=k,
                cached=trainer.embeddings,
            )  # fmt: skip
            variants["plain loop, cached text"] = cached.step
        # Round-robin, so load from other processes hits every variant alike.
        seconds = {
            name: ms / 1000.0
            for name, ms in interleaved(variants, rounds=args.steps, warmup=args.warmup).items()
        }
        base = seconds.get("plain loop")
        for name, median in seconds.items():
            row = {
                "ngf=ndf": width, "variant": name, "s/step": median,
                "images/s": args.batch_size / median,
                "vs plain": None if base is None else base / median,
            }  # fmt: skip
            if name == "trainer + torch.compile":
                row["compile s"] = compile_s
            results.append(row)

    print(f"\n## Training throughput, batch {args.batch_size}, median of {args.steps} steps\n")
    print("| ngf=ndf | variant | s/step | images/s | × plain loop |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in results:
        ratio = "" if r["vs plain"] is None else f"{r['vs plain']:.2f}"
        extra = f" (compile {r['compile s']:.0f} s)" if r.get("compile s") else ""
        print(f"| {r['ngf=ndf']} | {r['variant']}{extra} | {r['s/step']:.2f} | "
              f"{r['images/s']:.1f} | {ratio} |")  # fmt: skip
    print("\n" + json.dumps({"bench": "gan_training", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
