"""`python -m train data bench`: time rescue-scenes rendering and dataset reading.

Prints one JSON object per measurement on stdout and never passes or fails on a time: the
machines this runs on are shared and noisy. Variants (1 process vs N) are compared as ratios
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from train import options
from train.data.attributes import all_attributes
from train.data.captions import captions_for
from train.data.files import read_split
from train.data.peer import read_peer
from train.data.scenes import render_scene
from train.data.synth import SynthConfig, synthesize
from train.options import option

CUB_IMAGES = 11_788


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def bench_render_sample(count: int) -> float:
    """Milliseconds per image (render only) in this process, over `count` mixed classes."""
    classes = all_attributes()
    started = time.perf_counter()
    for i in range(count):
        render_scene(classes[(i * 389) % len(classes)], np.random.default_rng([7, i]))
    ms = (time.perf_counter() - started) / count * 1000
    _emit(metric="render_ms_per_image", value=round(ms, 3), processes=1, images=count)
    started = time.perf_counter()
    for i in range(count):
        captions_for(classes[(i * 389) % len(classes)], 10, np.random.default_rng([8, i]))
    cms = (time.perf_counter() - started) / count * 1000
    _emit(metric="captions_ms_per_image", value=round(cms, 3), captions_per_image=10)
    return ms + cms


def _write_peer_like(path: Path, images: int) -> None:
    """A peer-layout file of `images` CUB-sized (500×375) JPEGs × 5 entries each."""
    rng = np.random.default_rng(0)
    text = h5py.special_dtype(vlen=str)
    with h5py.File(path, "w") as f:
        split = f.create_group("train")
        for i in range(images):
            # Smooth noise compresses like a photo (≈ 20-40 KB), unlike white noise.
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            photo = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
            jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
            for c in range(5):
                entry = split.create_group(f"Bird_{i:05d}_{c}")
                entry.create_dataset("name", data=f"Bird_{i:05d}")
                entry.create_dataset("img", data=np.void(jpeg))
                entry.create_dataset("embeddings", data=np.zeros(1024, np.float32))
                entry.create_dataset("class", data=f"{1 + i % 200:03d}.Bird")
                entry.create_dataset("txt", data=f"caption {c} of bird {i}\n", dtype=text)


def bench_peer(directory: Path, images: int, workers: int) -> None:
    """Direct-read cost of a peer-layout file: 1 thread vs `workers` threads, same run."""
    path = directory / "peer.hdf5"
    _write_peer_like(path, images)
    seconds = {}
    for threads in dict.fromkeys((1, workers)):
        started = time.perf_counter()
        read_peer(path, image_size=76, workers=threads)
        seconds[threads] = time.perf_counter() - started
        _emit(
            metric="peer_read_ms_per_image",
            value=round(seconds[threads] / images * 1000, 3),
            threads=threads,
            images=images,
            cub_size_estimate_seconds=round(seconds[threads] / images * CUB_IMAGES, 1),
        )
    if len(seconds) == 2:
        _emit(metric="peer_read_thread_speedup", value=round(seconds[1] / seconds[workers], 2))


@dataclass(frozen=True)
class BenchFlags:
    """The bench command line, each flag declared once (`train.options`)."""

    # No help for these four: their names say it, and --help stays as it was.
    train: int = option(10_000, "", show_default=False, at_least=1)
    test: int = option(1_000, "", show_default=False, at_least=0)
    unseen: int = option(1_000, "", show_default=False, at_least=0)
    workers: int = option(min(os.cpu_count() or 1, 8), "", show_default=False, at_least=1)
    sample: int = option(
        500, "images rendered in-process for the per-image time", show_default=False, at_least=1
    )
    keep: Path | None = option(None, "keep the rendered file at this path", show_default=False)
    peer_images: int = option(
        200,
        "images in the synthetic peer-layout file timed for direct reading (0: skip)",
        show_default=False,
        at_least=0,
    )


def build_parser() -> argparse.ArgumentParser:
    """The bench flags, generated from `BenchFlags` (argparse checks the ranges)."""
    p = argparse.ArgumentParser(prog="python -m train data bench", description=__doc__)
    return options.build_parser(BenchFlags, p, given_only=False, ranges_in_parser=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the results."""
    args = BenchFlags(**vars(build_parser().parse_args(argv)))

    _emit(metric="machine", cpus=os.cpu_count(), load_avg_1min=round(os.getloadavg()[0], 2))
    per_image_ms = bench_render_sample(args.sample)
    total = args.train + args.test + args.unseen
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "bench.h5"
        summary = synthesize(
            SynthConfig(
                out=out,
                train=args.train,
                test=args.test,
                test_unseen=args.unseen,
                test_phrasing=0,  # figures stay comparable with those taken before test_phrasing
                workers=args.workers,
            )
        )
        serial_estimate = per_image_ms * total / 1000
        _emit(
            metric="synth_seconds",
            value=summary["total_seconds"],
            render_seconds=summary["render_seconds"],
            images=total,
            workers=args.workers,
            images_per_second=summary["images_per_second"],
            speedup_vs_one_process=round(serial_estimate / summary["render_seconds"], 2),
        )
        started = time.perf_counter()
        split = read_split(out, "train")
        seconds = time.perf_counter() - started
        _emit(
            metric="read_split_train_seconds",
            value=round(seconds, 3),
            images=len(split),
            images_per_second=round(len(split) / seconds, 1),
            file_mb=round(out.stat().st_size / 2**20, 1),
        )
        if args.peer_images:
            bench_peer(Path(tmp), args.peer_images, args.workers)
    return 0
