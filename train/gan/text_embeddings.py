"""Text embeddings of a whole split, computed once by the frozen text encoder and cached.

Reed et al. trained the GAN on embeddings precomputed by the frozen char-CNN-RNN (their loader
reads them from disk); so do we. Every distinct caption of the split is encoded exactly once:

- captions are deduplicated, sorted by length and encoded in chunks padded only to
  `TextEncoderConfig.min_input_length` of the chunk's longest caption (the encoder's output does
  not depend on padding beyond that, docs/ARCHITECTURE.md), which is 2-3× less work than 201;
- under DDP each rank encodes a 1/world_size share and the shares are all-gathered;
- optionally the table is stored as `.npz` (no pickle) in a cache folder, keyed by the encoder
  checkpoint's sha256 and a digest of the caption texts, so later runs skip the work.

The generator consumes exactly the encoder's output: the only operation between the two is the
mean over the K captions drawn per sample (Reed's averaging; K = 1 is the identity).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from edge_runtime import atomic, tokenizer
from train import models
from train.data.schema import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the stored layout changes."""


@dataclass(frozen=True)
class CaptionTable:
    """The distinct captions of a split and, per image, which of them each caption is."""

    texts: tuple[str, ...]
    """Distinct caption strings, in first-seen order."""
    index: np.ndarray
    """int64 (N, C): `texts[index[i, c]]` is caption c of image i."""

    @classmethod
    def from_captions(cls, captions: Sequence[Sequence[str]]) -> CaptionTable:
        """Deduplicate the N × C captions of a split."""
        position: dict[str, int] = {}
        index = np.empty((len(captions), len(captions[0]) if captions else 0), dtype=np.int64)
        for i, row in enumerate(captions):
            for c, text in enumerate(row):
                index[i, c] = position.setdefault(text, len(position))
        return cls(tuple(position), index)

    def digest(self) -> str:
        """sha256 over the caption texts and their arrangement (what the embeddings depend on)."""
        h = hashlib.sha256()
        for text in self.texts:
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
        h.update(self.index.astype("<i8").tobytes())
        return h.hexdigest()


@torch.inference_mode()
def embed_texts(
    encoder: models.CharCnnRnn,
    texts: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    chunk: int = 512,
    progress: bool = False,
    where: str = "captions",
) -> torch.Tensor:
    """Encode captions with `encoder` (eval mode): float32 (len(texts), E) on `device`."""
    config = encoder.config
    encoded: list[tuple[int, ...]] = []
    for i, text in enumerate(texts):
        try:
            encoded.append(tokenizer.encode(text).ids)
        except tokenizer.CaptionError as err:
            raise DataError(f"{where}[{i}] {text[:40]!r}: {err}") from None
    out = torch.empty(len(texts), config.embedding_dim, device=device)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    was_training = encoder.training
    encoder.eval()
    bar = tqdm(total=len(texts), unit="caption", desc="text embeddings", disable=not progress)
    try:
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            longest = max(len(encoded[i]) for i in rows)
            width = config.min_input_length(longest)
            ids = torch.zeros(len(rows), width, dtype=torch.int64)
            for r, i in enumerate(rows):
                ids[r, : len(encoded[i])] = torch.tensor(encoded[i][:width])
            lengths = torch.tensor([len(encoded[i]) for i in rows])
            emb = encoder(ids.to(device), lengths.to(device))  # (chunk, E)
            out[torch.tensor(rows, device=device)] = emb.float()
            bar.update(len(rows))
    finally:
        bar.close()
        encoder.train(was_training)
    return out


class TextEmbeddings:
    """The embedding table of one split on the training device, looked up per batch."""

    def __init__(self, table: torch.Tensor, index: np.ndarray) -> None:
        self.table = table  # (U, E)
        self.index = torch.from_numpy(index).to(table.device)  # (N, C)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def lookup(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Mean embedding of captions (B, K) of images (B,): (B, E)."""
        rows = self.index[images[:, None], captions]  # (B, K)
        return self.table[rows].mean(dim=1)  # (B, K, E) → (B, E)


def cache_key(encoder_sha256: str, captions: CaptionTable) -> str:
    """Name of the cached table: changes with the encoder file or any caption."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{encoder_sha256}:{captions.digest()}".encode())
    return h.hexdigest()[:32]


def load_or_compute(
    encoder: models.CharCnnRnn,
    encoder_sha256: str,
    captions: Sequence[Sequence[str]],
    *,
    device: torch.device,
    cache_dir: str | os.PathLike[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    where: str = "captions",
) -> TextEmbeddings:
    """The split's embedding table from the cache, or encoded now (sharded over ranks), cached."""
    table_info = CaptionTable.from_captions(captions)
    path = None
    cached = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"text-embeddings-{cache_key(encoder_sha256, table_info)}.npz"
        cached = _read_cache(path, (len(table_info.texts), encoder.config.embedding_dim), device)
    if world_size > 1 and dist.is_initialized():
        # Ranks on different nodes may see different caches (a node-local --out): all must agree,
        # or those that found one would skip the all_gather below that the others wait in.
        everyone_has_it = torch.tensor([int(cached is not None)], device=device)
        dist.all_reduce(everyone_has_it, op=dist.ReduceOp.MIN)
        if not int(everyone_has_it.item()):
            cached = None
    if cached is not None:
        log.info("text embeddings: %d captions from cache %s", len(cached), path)
        return TextEmbeddings(cached, table_info.index)
    start = time.monotonic()
    texts = table_info.texts
    share = -(-len(texts) // world_size)
    mine = texts[rank * share : (rank + 1) * share]
    encoder = encoder.to(device)
    part = embed_texts(encoder, mine, device=device, progress=progress, where=where)
    if world_size > 1 and dist.is_initialized():
        padded = torch.zeros(share, part.shape[1], device=device)
        padded[: len(part)] = part
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded)
        table = torch.cat(gathered)[: len(texts)]
    else:
        table = part
    elapsed = time.monotonic() - start
    log.info(
        "text embeddings: encoded %d distinct captions (of %d) in %.1f s (%.0f captions/s)",
        len(texts), table_info.index.size, elapsed, len(texts) / max(elapsed, 1e-9),
    )  # fmt: skip
    if path is not None and rank == 0:
        _save_npz(path, table.cpu().numpy())
    return TextEmbeddings(table, table_info.index)


def _read_cache(path: Path, shape: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """The cached table when `path` holds one of `shape`; None (with a warning if damaged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            table = torch.from_numpy(stored["embeddings"]).to(device)
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s: unreadable cache (%s), re-encoding", path, err)
        return None
    if tuple(table.shape) != shape:
        log.warning("%s: shape %s does not fit, re-encoding", path, tuple(table.shape))
        return None
    return table


def _save_npz(path: Path, embeddings: np.ndarray) -> None:
    """Atomic write (temp + fsync + rename); a failed cache write only costs a warning."""
    try:
        with atomic.atomic_file(path, make_parents=True) as f:
            np.savez(f, embeddings=embeddings)
        log.info("text embeddings cached in %s", path)
    except OSError as err:
        log.warning("%s: cannot write the embedding cache: %s", path, err)
