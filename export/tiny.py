"""The tiny committed test bundle: real architecture, tiny widths, random weights.

    python -m export.tiny tests/fixtures/tiny_bundle

builds a random-weight GAN checkpoint and a small rescue-scenes caption set in a temporary
directory, then runs the real export (`--quantize --force`) on them, so the bundle has the fp32
and the int8 variant, the real tensor names and dynamic axes, and a manifest the runtime verifies.
Its checkpoint carries read-back heads (`fit_readback`), so the bundle has a read-back graph too
(gated at `TINY_MIN_READBACK_AGREEMENT`, see there). Runtime tests load it in milliseconds; its
images are noise-like (the weights are random).
`tiny_checkpoint` and `tiny_dataset` are also what export's own tests build on.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_runtime import tokenizer, vocabulary
from export.cli import main as export_main
from train import checkpoint as ck
from train import models
from train.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, all_attributes
from train.data.captions import caption_for, captions_for
from train.data.phrasing import training_caption
from train.data.schema import SplitData, write_dataset

TEXT_CONFIG = models.TextEncoderConfig(conv_channels=(32, 32, 32), rnn_hidden=32, embedding_dim=32)
# noise_dim stays the real 100; ngf 4 and a 32-d text projection keep the bundle well under 1 MB
# (the 1×1 → 4×4 layer alone holds (noise_dim + projected_dim) · 8·ngf · 16 weights).
GAN_CONFIG = models.GANConfig(noise_dim=100, embedding_dim=32, projected_dim=32, ngf=4, ndf=4)
READBACK_HIDDEN = 32
TINY_MIN_READBACK_AGREEMENT = 0.9
"""The tiny bundle's read-back gate. Its encoder has random weights, whose embeddings the heads
can only separate by small margins: the int8 text encoder flips 3-5 % of their decisions (0.956
measured), which a trained encoder's read-back must not (export's default gate is 0.98)."""

OFF_DOMAIN_SENTENCES = (
    "draw a cat",
    "draw a cat on a sofa",
    "hello how are you today",
    "order two pizzas with extra cheese",
    "what time is the meeting",
    "a castle on a hill at night",
    "the stock market fell sharply",
    "turn on the kitchen lights",
    "my favourite colour is a number",
    "sing me a song",
    "bake bread for an hour",
    "a dog chasing a ball in the park",
)
"""What the tiny read-back learns to flag as off-domain: a test fixture's stand-in for the trained
off-domain negatives of text-encoder pretraining (train/text, docs/TEXT_ENCODER.md)."""


def randomize_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine terms, so folding them is really tested."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def standardize_text_encoder(encoder: models.CharCnnRnn, embeddings: np.ndarray) -> None:
    """Fold a per-dimension standardisation of `embeddings` into the encoder's last layer.

    A random-weight encoder maps every caption to nearly the same vector (caption-to-caption
    spread ~2 % of the common part); a trained one separates them. Zero mean and unit spread
    across captions make the random encoder's outputs look like a trained one's."""
    mean = torch.from_numpy(embeddings.mean(0))
    std = torch.from_numpy(embeddings.std(0)).clamp_min(1e-6)
    with torch.no_grad():
        encoder.project.weight /= std[:, None]
        encoder.project.bias.sub_(mean).div_(std)


def batch_norm_from_data(
    generator: models.Generator, embeddings: np.ndarray, seed: int = 0
) -> None:
    """Set every batch norm's running statistics to those of one forward pass on `embeddings`
    (and standard-normal noise), as training leaves them, and scale the to-RGB layer so the values
    entering tanh have unit spread: a random-weight generator then has trained-like activation
    ranges and images using the whole [-1, 1] range, which is what quantization quality depends on.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives exactly the batch statistics
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(embeddings), generator.config.noise_dim, generator=gen)
    generator.train()
    with torch.no_grad():
        generator(noise, torch.from_numpy(np.asarray(embeddings, np.float32)))
    generator.eval()
    for m in norms:
        m.momentum = 0.1
    pre_tanh: list[torch.Tensor] = []
    hook = generator.to_rgb.register_forward_hook(lambda _m, _i, out: pre_tanh.append(out))
    with torch.no_grad():
        generator(noise, torch.from_numpy(np.asarray(embeddings, np.float32)))
        hook.remove()
        generator.to_rgb.weight /= pre_tanh[0].std()


def tiny_checkpoint(
    seed: int = 0,
    *,
    rnn: str = "gru",
    residual: bool = False,
    data: Path | None = None,
    text_config: models.TextEncoderConfig = TEXT_CONFIG,
    gan_config: models.GANConfig = GAN_CONFIG,
    readback: bool = False,
) -> dict[str, Any]:
    """A `kind="gan"` checkpoint dict with random weights, laid out as the GAN trainer's; with
    `readback` it also carries read-back heads fitted to its text encoder (`fit_readback`), as a
    GAN checkpoint copies them from its text-encoder checkpoint."""
    torch.manual_seed(seed)
    text = dataclasses.replace(text_config, rnn=rnn)
    gan = dataclasses.replace(gan_config, residual=residual, embedding_dim=text.embedding_dim)
    nets = {
        "text_encoder": models.CharCnnRnn(text),
        "generator": models.Generator(gan),
        "discriminator": models.Discriminator(gan),
    }
    gen = torch.Generator().manual_seed(seed)
    for net in nets.values():
        randomize_batch_norm(net, gen)
    # Trained-like ranges, which quantization quality (and float rounding) depend on: the text
    # encoder tells captions apart, and the generator's statistics come from data.
    encoder = nets["text_encoder"]
    standardize_text_encoder(encoder, _embeddings(encoder, seed))
    batch_norm_from_data(nets["generator"], _embeddings(encoder, seed), seed)
    configs: dict[str, Any] = {"text_encoder": text, "generator": gan, "discriminator": gan}
    if readback:
        nets["readback"] = fit_readback(encoder, seed)
        configs["readback"] = nets["readback"].config
    return ck.new_checkpoint(
        "gan",
        models={k: v.state_dict() for k, v in nets.items()},
        model_configs={k: dataclasses.asdict(v) for k, v in configs.items()},
        config={"data": str(data) if data is not None else None, "purpose": "tiny test bundle"},
        step=0,
        epoch=0,
    )


def _embeddings(encoder: models.CharCnnRnn, seed: int, count: int = 256) -> np.ndarray:
    """Text embeddings of `count` rescue-scenes grammar captions."""
    rng = np.random.default_rng(seed)
    everything = all_attributes()
    captions = [caption_for(everything[i], rng) for i in rng.choice(len(everything), count)]
    rows, lengths = tokenizer.encode_batch(captions, encoder.config.max_length)
    with torch.no_grad():
        return encoder.eval()(torch.tensor(rows), torch.tensor(lengths)).numpy()


def fit_readback(encoder: models.CharCnnRnn, seed: int = 0, steps: int = 400) -> models.ReadBack:
    """Read-back heads fitted in a second or two to `encoder`'s embeddings of grammar captions,
    full and partial (`train.data.phrasing`), and of `OFF_DOMAIN_SENTENCES`, so the tiny bundle
    reads captions back decisively (random heads sit near chance, where fp32 and int8 disagree on
    every near-tie). The random 32-d encoder does not tell attribute words apart, so the heads
    learn "not stated" for every attribute (the commonest class) but do flag the off-domain
    sentences (0.7-0.95 against 0.0-0.25 for grammar captions): a fixture with decisive outputs
    and both warnings, not a model's accuracy."""
    rng = np.random.default_rng(seed + 1)
    everything = all_attributes()
    config = models.ReadBackConfig(
        embedding_dim=encoder.config.embedding_dim,
        value_counts=tuple(len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES),
        hidden=READBACK_HIDDEN,
    )
    texts: list[str] = []
    labels: list[list[int]] = []  # per attribute: value index, or n_a = not stated
    for i in rng.choice(len(everything), 1200):
        attributes = everything[int(i)]
        caption, stated = training_caption(attributes, rng, partial_fraction=0.5)
        texts.append(caption)
        labels.append(
            [
                index if name in stated else len(ATTRIBUTE_VALUES[name])
                for name, index in zip(ATTRIBUTE_NAMES, attributes.indices, strict=True)
            ]
        )
    # The words of the rescue captions, as a trained checkpoint records them (fit_heads).
    known = sorted({word for text in texts for word in vocabulary.words_of(text)})
    config = dataclasses.replace(config, known_words=tuple(known))
    off = list(OFF_DOMAIN_SENTENCES) * 25
    rows, lengths = tokenizer.encode_batch(texts + off, encoder.config.max_length)
    with torch.no_grad():
        embeddings = encoder.eval()(torch.tensor(rows), torch.tensor(lengths))  # (N, E)
    targets = torch.tensor(labels + [list(config.value_counts)] * len(off))  # (N, A)
    off_target = torch.tensor([0.0] * len(texts) + [1.0] * len(off))  # (N,)
    torch.manual_seed(seed)
    heads = models.ReadBack(config)
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    # Noise on the embeddings while fitting (10 % of their scale, twice what the int8 text
    # encoder moves them): decisions with a margin against that noise, as fp32 vs int8 needs.
    scale = 0.1 * embeddings.norm(dim=1, keepdim=True) / embeddings.shape[1] ** 0.5
    noise = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        jitter = torch.randn(embeddings.shape, generator=noise) * scale
        logits, off_logit = heads(embeddings + jitter)
        loss = nn.functional.binary_cross_entropy_with_logits(off_logit, off_target)
        for a, block in enumerate(logits.split(config.block_sizes, dim=1)):
            # Off-domain rows say nothing about attributes: they learn "not stated" everywhere.
            loss = loss + nn.functional.cross_entropy(block, targets[:, a])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return heads.eval()


def tiny_dataset(path: Path, train: int = 64, test: int = 8, seed: int = 0) -> Path:
    """A rescue-scenes-layout HDF5 with real grammar captions (10 per image) and blank images."""
    rng = np.random.default_rng(seed)
    everything = all_attributes()

    def split(n: int) -> SplitData:
        picks = [everything[i] for i in rng.choice(len(everything), size=n, replace=False)]
        return SplitData(
            images=np.zeros((n, 64, 64, 3), np.uint8),
            captions=[captions_for(a, 10, rng) for a in picks],
            class_ids=np.array([a.class_id for a in picks], np.int64),
            attributes=np.array([a.indices for a in picks], np.int16),
        )

    return write_dataset(
        path,
        {"train": split(train), "test": split(test)},
        dataset="rescue-scenes",
        image_size=64,
        attribute_names=ATTRIBUTE_NAMES,
        attribute_values=ATTRIBUTE_VALUES,
        provenance={"generator": "export.tiny", "seed": seed, "images": "blank"},
    )


def main(argv: list[str] | None = None) -> int:
    """Regenerate the tiny bundle at OUT (replacing it)."""
    parser = argparse.ArgumentParser(
        prog="python -m export.tiny", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="bundle directory, e.g. tests/fixtures/tiny_bundle")
    parser.add_argument("--rnn", choices=("gru", "lstm"), default="gru")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="tiny-bundle-") as tmp:
        data = tiny_dataset(Path(tmp) / "captions.h5")
        path = ck.save_checkpoint(
            tiny_checkpoint(rnn=args.rnn, data=data, readback=True), Path(tmp) / "checkpoint.pt"
        )
        return export_main(
            [
                "--checkpoint",
                str(path),
                "--out",
                str(args.out),
                "--quantize",
                "--force",
                "--name",
                "tiny",
                "--min-readback-agreement",
                str(TINY_MIN_READBACK_AGREEMENT),
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
