"""Caption → image on the robot: a verified bundle run by onnxruntime, with an embedding cache.

`Engine` opens each graph once (hashes and graph inputs/outputs verified by `load_bundle`),
chooses the execution provider and the precision variant, warms up, and then turns captions and
seeds into uint8 RGB images. Results are a pure function of (caption, seed, image index,
precision): noise row k of a request with seed s is
`numpy.random.default_rng([s, k]).standard_normal(noise_dim, dtype=numpy.float32)`, so any
single image of a batch can be regenerated alone.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from edge_runtime import bundle as bundle_mod
from edge_runtime import canonical, tokenizer, vocabulary
from edge_runtime.bundle import (
    ATTRIBUTE_PROBS,
    CHAR_IDS,
    CLASS_INDEX,
    FRAME,
    IMAGE,
    LENGTHS,
    NOISE,
    OFF_DOMAIN,
    TEXT_EMBEDDING,
    Bundle,
    BundleError,
    GraphSpec,
    ModelSpec,
    load_bundle,
)
from edge_runtime.canonical import DRAW_CHOICES, DRAW_UNDERSTOOD
from edge_runtime.readback import Understood, decide

log = logging.getLogger(__name__)

PRECISION_AUTO = "auto"
PROVIDER_AUTO = "auto"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
"""Short names `--provider` accepts; a full onnxruntime provider name works too."""
ORT_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}

DEFAULT_CACHE_SIZE = 256
MAX_BATCH = 64
"""Largest batch one onnxruntime call gets; bigger requests run in slices (bounded memory)."""
REFERENCE = "fp32"
"""The variant every other one was measured against by export (lossless by definition)."""
AUTO_MARGIN = 0.9
"""`--precision auto` takes a lossy variant only when it runs in ≤ 90 % of the reference's time."""
SPIN_CONFIG_KEY = "session.intra_op.allow_spinning"
"""onnxruntime session option; the engine sets it to "0" when it runs more than one thread."""
_SELECTION_ROUNDS = 15
_SELECTION_CAPTION = "survivor in an orange jacket lying on rubble, left side"


class EngineError(ValueError):
    """A configuration the engine cannot run (provider, precision, threads); one line."""


def noise_for(seed: int, index: int, noise_dim: int, dtype: Any = np.float32) -> np.ndarray:
    """Noise row `index` of a request with `seed`: (noise_dim,) standard normal."""
    return (
        np.random.default_rng([seed, index])
        .standard_normal(noise_dim, dtype=np.float32)
        .astype(dtype, copy=False)
    )


def to_uint8_rgb(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Generator output (B, C, H, W) in `value_range` → (B, H, W, 3) uint8 RGB (NaN → low)."""
    low, high = value_range
    scale = np.float32(255.0 / (high - low))
    x = images.astype(np.float32, copy=False) * scale  # (B, C, H, W), a fresh array
    x += np.float32(0.5) - np.float32(low) * scale  # + 0.5: the truncating cast then rounds
    # fmax/fmin rather than clip: they map NaN to the bound instead of passing it to the cast.
    np.fmax(x, np.float32(0.0), out=x)
    np.fmin(x, np.float32(255.0), out=x)
    planes = x.astype(np.uint8)  # (B, C, H, W)
    if planes.shape[1] == 1:
        planes = np.repeat(planes, 3, axis=1)
    out = np.empty((planes.shape[0], planes.shape[2], planes.shape[3], 3), dtype=np.uint8)
    for b in range(planes.shape[0]):
        # cv2.merge interleaves planes ~10x faster than numpy's strided transpose copy.
        out[b] = cv2.merge(list(planes[b, :3]))  # (H, W, 3)
    return out


def choose_precision(measured_ms: dict[str, float], reference: str = REFERENCE) -> str:
    """The fastest measured variant, except that a lossy one must beat the reference by
    `AUTO_MARGIN`: a quantized model costs some quality, and near-equal timings would otherwise
    let measurement noise flip the choice (and the pixels) from one start to the next."""
    fastest = min(measured_ms, key=measured_ms.__getitem__)
    if (
        reference in measured_ms
        and fastest != reference
        and measured_ms[fastest] > AUTO_MARGIN * measured_ms[reference]
    ):
        return reference
    return fastest


def resolve_providers(choice: str) -> list[Any]:
    """`--provider` → the onnxruntime providers list; raises `EngineError` when unavailable.

    "auto" takes CUDA when this onnxruntime has it, else the CPU. TensorRT is never chosen
    automatically: it compiles engines on first start (minutes on a Jetson), which a service
    that must be READY in seconds cannot afford unplanned; force it with `--provider tensorrt`.
    """
    available = ort.get_available_providers()
    if choice == PROVIDER_AUTO:
        return [CUDA, CPU] if CUDA in available else [CPU]
    name = PROVIDER_ALIASES.get(choice.lower(), choice)
    if name not in available:
        short = ", ".join(p.removesuffix("ExecutionProvider").lower() for p in available)
        raise EngineError(
            f"--provider {choice}: not available in this onnxruntime build (available: {short})"
        )
    if name == CPU:
        return [CPU]
    if name == TENSORRT:
        cache = Path(
            os.environ.get("RESCUE_EDGE_TRT_CACHE", Path.home() / ".cache/rescue-t2i/tensorrt")
        )
        cache.mkdir(parents=True, exist_ok=True)
        options = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
        }
        return [(TENSORRT, options), *([CUDA] if CUDA in available else []), CPU]
    return [name, CPU]


def open_session(
    model: bytes, threads: int = 1, providers: Sequence[Any] = (CPU,)
) -> ort.InferenceSession:
    """A session on a model's bytes (the bytes `load_bundle` hashed: no second read of the file),
    with the options the engine runs under."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not operator news
    if threads > 1:
        # Each session owns a thread pool whose workers busy-wait after every run. The text
        # encoder's pool then spins on the cores the generator needs next (and vice versa), so
        # on a 2-core robot a caption took 7.1 ms p50 at 2 threads instead of 3.3-3.7 ms, and a
        # batch of 32 unseen captions made 300-330 images/s instead of 505-600 (measured with
        # both settings, recipe bundle, int8). One thread has no workers: nothing to turn off.
        options.add_session_config_entry(SPIN_CONFIG_KEY, "0")
    return ort.InferenceSession(model, options, providers=list(providers))


def check_variants(bundle: Bundle) -> dict[str, str]:
    """Run every variant of a bundle loaded with sessions once, as `Engine` will: a short and a
    longest caption in one batch of two, through text encoder and generator, checking each
    output's shape and that the images are finite. Returns variant → "ok"; raises `BundleError`
    naming the variant and graph on the first failure (so `info` accepts only what `serve` runs).
    """
    model = bundle.manifest.model
    captions = [tokenizer.encode("warm up"), tokenizer.encode("x" * tokenizer.MAX_LENGTH)]
    results = {}
    for name, variant in bundle.manifest.variants.items():
        text_spec = bundle.manifest.graphs[variant.text_encoder]
        gen_spec = bundle.manifest.graphs[variant.generator]
        runner = _Variant(
            precision=name,
            text_encoder=bundle.sessions[variant.text_encoder],
            generator=bundle.sessions[variant.generator],
            ids_dtype=_input_dtype(text_spec, CHAR_IDS),
            lengths_dtype=_input_dtype(text_spec, LENGTHS),
            noise_dtype=_input_dtype(gen_spec, NOISE),
            embedding_dtype=_input_dtype(gen_spec, TEXT_EMBEDDING),
            gate_passed=variant.gate_passed,
            readback=bundle.sessions[variant.readback] if variant.readback else None,
        )
        for step, file in (("text encoder", text_spec.file), ("generator", gen_spec.file)):
            where = f"{bundle.path / file}: variant {name} {step}"
            try:
                if step == "text encoder":
                    embedding = _run_text(runner, model, captions)  # (2, E)
                    got, expected = embedding.shape, (2, model.embedding_dim)
                else:
                    images = _run_generator(runner, model, embedding, [(0, 0), (0, 1)])
                    got = images.shape  # (2, C, H, W)
                    expected = (2, model.image_channels, model.image_size, model.image_size)
                    to_uint8_rgb(images, model.value_range)
            except Exception as err:  # onnxruntime raises its own exception types
                raise BundleError(f"{where}: fails to run: {bundle_mod.first_line(err)}") from None
            if tuple(got) != expected:
                raise BundleError(f"{where}: produced shape {list(got)}, expected {list(expected)}")
        if not np.isfinite(images).all():
            raise BundleError(f"{bundle.path / gen_spec.file}: variant {name}: non-finite pixels")
        spec = bundle.manifest.readback
        if variant.readback is not None and spec is not None:
            file = bundle.manifest.graphs[variant.readback].file
            where = f"{bundle.path / file}: variant {name} read-back"
            try:
                probs, off = _run_readback(runner, embedding)
            except Exception as err:  # onnxruntime raises its own exception types
                raise BundleError(f"{where}: fails to run: {bundle_mod.first_line(err)}") from None
            if probs.shape != (2, spec.width) or off.shape != (2,):
                raise BundleError(
                    f"{where}: produced shapes {list(probs.shape)} and {list(off.shape)}, "
                    f"expected [2, {spec.width}] and [2]"
                )
            if not (np.isfinite(probs).all() and np.isfinite(off).all()):
                raise BundleError(f"{where}: non-finite probabilities")
        search = bundle.manifest.search
        if variant.frame_scorer is not None and search is not None:
            _check_frame_scorer(bundle, variant.frame_scorer, name, search, embedding[:1])
        results[name] = "ok"
    return results


def _check_frame_scorer(
    bundle: Bundle, key: str, name: str, search: bundle_mod.SearchSpec, embedding: np.ndarray
) -> None:
    """One grey frame through a variant's frame scorer: the maps' shapes, scores in [0, 1]."""
    where = f"{bundle.path / bundle.manifest.graphs[key].file}: variant {name} frame scorer"
    size = search.frame_size
    frame = np.zeros((1, 3, size, size), np.float32)
    try:
        maps = bundle.sessions[key].run(
            list(search.output_names()),
            {FRAME: frame, TEXT_EMBEDDING: embedding.astype(np.float32)},
        )
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{where}: fails to run: {bundle_mod.first_line(err)}") from None
    for i, scale in enumerate(search.scales):
        scores, boxes = maps[2 * i], maps[2 * i + 1]
        if scores.shape != (1, *scale.cells) or boxes.shape != (1, 4, *scale.cells):
            raise BundleError(
                f"{where}: scale {i} produced shapes {list(scores.shape)} and "
                f"{list(boxes.shape)}, expected [1, {scale.cells[0]}, {scale.cells[1]}] and "
                f"[1, 4, {scale.cells[0]}, {scale.cells[1]}]"
            )
        if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
            raise BundleError(f"{where}: scale {i} scores outside [0, 1]")


def _provider_name(entry: Any) -> str:
    return entry[0] if isinstance(entry, tuple) else entry


@dataclass
class _Variant:
    """One precision's pair of sessions and what feeding them needs."""

    precision: str
    text_encoder: Any
    generator: Any
    ids_dtype: Any
    lengths_dtype: Any
    noise_dtype: Any
    embedding_dtype: Any
    gate_passed: bool
    readback: Any = None
    """The read-back session, None when the bundle has none."""
    frame_scorer: Any = None
    """The frame scorer session (search assist), None when the bundle has none."""
    canonical_table: np.ndarray | None = None
    """float32 (K, E), read-only: the canonical caption of class k embedded by this variant's
    text encoder (read from the bundle's table once, at load); None: encode the caption."""


@dataclass
class CacheStats:
    """Embedding cache counters."""

    hits: int = 0
    misses: int = 0
    size: int = 0
    capacity: int = 0


@dataclass
class EngineInfo:
    """What the engine chose and measured at start-up (for `status` and logs)."""

    bundle: str
    bundle_id: str
    """Manifest name + the first 12 hex digits of manifest.json's sha256."""
    precision: str
    provider: str
    threads: int
    startup_ms: float
    selection_ms: dict[str, float] = field(default_factory=dict)
    """`--precision auto`: median caption → image ms of each candidate variant, same run."""


class Engine:
    """A loaded bundle ready to turn captions into images; create once, call many times."""

    def __init__(
        self,
        bundle_path: str | os.PathLike[str],
        *,
        precision: str = PRECISION_AUTO,
        provider: str = PROVIDER_AUTO,
        threads: int = 1,
        cache_size: int = DEFAULT_CACHE_SIZE,
        warmup: bool = True,
        draw: str = DRAW_UNDERSTOOD,
    ) -> None:
        start = time.perf_counter()
        if threads < 1:
            raise EngineError(f"--threads must be at least 1, got {threads}")
        if draw not in DRAW_CHOICES:
            raise EngineError(f"--draw must be one of {', '.join(DRAW_CHOICES)}, got {draw!r:.40}")
        self.draw = draw
        if cache_size < 0:
            raise EngineError(f"cache size must be ≥ 0, got {cache_size}")
        self.threads = threads
        providers = resolve_providers(provider)
        self._providers = providers
        # Manifest first (no graph hashed yet): the precision decides which graphs are opened.
        manifest = load_bundle(bundle_path, graphs=[]).manifest
        candidates = self._candidates(manifest, precision, bundle_path)
        keys = sorted(
            {
                k
                for v in candidates
                for k in (v.text_encoder, v.generator, v.readback, v.frame_scorer, v.canonical)
                if k
            }
        )
        self.bundle = load_bundle(bundle_path, self._open_session, graphs=keys)
        self.manifest = self.bundle.manifest
        self.model = self.manifest.model
        variants = {
            name: self._variant(name, variant) for name, variant in self._named(candidates).items()
        }
        selection: dict[str, float] = {}
        if len(variants) > 1:
            selection = self._measure(list(variants.values()))
            chosen = choose_precision(selection)
            log.info(
                "precision auto: %s (caption → image median ms: %s)",
                chosen,
                ", ".join(f"{k} {v:.2f}" for k, v in selection.items()),
            )
        else:
            chosen = next(iter(variants))
        self._variant_in_use = variants[chosen]
        # Drop the sessions of variants not chosen (their memory is the robot's) and the
        # canonical tables' (read into arrays at load).
        keep = {
            self.manifest.variants[chosen].text_encoder,
            self.manifest.variants[chosen].generator,
            self.manifest.variants[chosen].readback,
            self.manifest.variants[chosen].frame_scorer,
        }
        self.bundle.sessions = {k: v for k, v in self.bundle.sessions.items() if k in keep}
        del variants
        if selection:
            _return_freed_memory()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._understood: OrderedDict[str, Understood] = OrderedDict()
        readback_spec = self.manifest.readback
        self._known_words = vocabulary.KnownWords(
            readback_spec.known_words if readback_spec is not None else ()
        )
        self._cache_capacity = cache_size
        self._stats = CacheStats(capacity=cache_size)
        self._lock = threading.Lock()
        if warmup:
            self.warm_up()
        manifest_sha = self.bundle.manifest_sha256
        used = self._variant_in_use.generator.get_providers()[0]
        self.info = EngineInfo(
            bundle=str(Path(bundle_path)),
            bundle_id=f"{self.manifest.name}@{manifest_sha[:12]}",
            precision=chosen,
            provider=used.removesuffix("ExecutionProvider").lower(),
            threads=threads,
            startup_ms=(time.perf_counter() - start) * 1000.0,
            selection_ms=selection,
        )

    # -- loading --------------------------------------------------------------------------------

    def _open_session(self, model: bytes) -> ort.InferenceSession:
        session = open_session(model, self.threads, self._providers)
        wanted = _provider_name(self._providers[0])
        if session.get_providers()[0] != wanted:
            # onnxruntime silently falls back to the CPU when e.g. CUDA libraries are missing.
            raise EngineError(
                f"onnxruntime could not start {wanted} (it fell back to "
                f"{session.get_providers()[0]}); check the GPU libraries or use --provider cpu"
            )
        return session

    @staticmethod
    def _candidates(
        manifest: bundle_mod.Manifest, precision: str, where: str | os.PathLike[str]
    ) -> list[bundle_mod.Variant]:
        if precision != PRECISION_AUTO:
            variant = manifest.variants.get(precision)
            if variant is None:
                raise EngineError(
                    f"--precision {precision}: bundle {where} has variants "
                    f"{', '.join(manifest.variants)} (or use auto)"
                )
            if not variant.gate_passed:
                log.warning(
                    "precision %s failed export's quality gate (%s); using it: it was forced",
                    precision,
                    variant.quality,
                )
            return [variant]
        passed = [v for v in manifest.variants.values() if v.gate_passed]
        for name, variant in manifest.variants.items():
            if not variant.gate_passed:
                log.info("precision %s failed export's quality gate; not considered", name)
        if not passed:
            raise EngineError(f"{where}: no variant passed export's quality gate")
        return passed

    def _named(self, variants: list[bundle_mod.Variant]) -> dict[str, bundle_mod.Variant]:
        return {name: v for name, v in self.manifest.variants.items() if v in variants}

    def _variant(self, name: str, variant: bundle_mod.Variant) -> _Variant:
        text_spec = self.manifest.graphs[variant.text_encoder]
        gen_spec = self.manifest.graphs[variant.generator]
        table = None
        if variant.canonical is not None:
            table = self._canonical_table(variant.canonical)
        return _Variant(
            precision=name,
            text_encoder=self.bundle.sessions[variant.text_encoder],
            generator=self.bundle.sessions[variant.generator],
            ids_dtype=_input_dtype(text_spec, CHAR_IDS),
            lengths_dtype=_input_dtype(text_spec, LENGTHS),
            noise_dtype=_input_dtype(gen_spec, NOISE),
            embedding_dtype=_input_dtype(gen_spec, TEXT_EMBEDDING),
            gate_passed=variant.gate_passed,
            readback=self.bundle.sessions[variant.readback] if variant.readback else None,
            frame_scorer=(
                self.bundle.sessions[variant.frame_scorer] if variant.frame_scorer else None
            ),
            canonical_table=table,
        )

    def _canonical_table(self, key: str) -> np.ndarray:
        """The whole table of graph `key`, read once and checked: one row per class of the
        read-back's values, E wide, finite. A table rather than a graph run per request because
        each lookup is then a row copy; a graph rather than a raw array file because the bundle
        contract already hashes, lists and bounds graphs (no second file kind to secure)."""
        spec = self.manifest.readback
        assert spec is not None  # load_bundle refuses a table without readback.canonical
        count = canonical.class_count(spec)
        where = f"bundle {self.bundle.path}: graphs.{key}"
        try:
            (table,) = self.bundle.sessions[key].run(
                [TEXT_EMBEDDING], {CLASS_INDEX: np.arange(count, dtype=np.int64)}
            )
        except Exception as err:  # onnxruntime raises its own types, e.g. an index past the end
            raise EngineError(
                f"{where}: cannot read {count} rows: {bundle_mod.first_line(err)}"
            ) from None
        expected = (count, self.model.embedding_dim)
        if table.shape != expected or not np.isfinite(table).all():
            raise EngineError(
                f"{where}: expected {expected} finite values, got shape {tuple(table.shape)}"
            )
        table = np.ascontiguousarray(table, dtype=np.float32)
        table.flags.writeable = False
        return table

    def _measure(self, variants: list[_Variant]) -> dict[str, float]:
        """Median caption → image ms per variant, rounds interleaved so drift hits all alike."""
        encoded = tokenizer.encode(_SELECTION_CAPTION)
        times: dict[str, list[float]] = {v.precision: [] for v in variants}
        for round_index in range(_SELECTION_ROUNDS + 2):
            for variant in variants:
                t0 = time.perf_counter()
                embedding = self._run_text(variant, [encoded])
                self._run_generator(variant, embedding, [(0, round_index)])
                if round_index >= 2:  # the first two rounds are warm-up
                    times[variant.precision].append((time.perf_counter() - t0) * 1000.0)
        return {k: statistics.median(v) for k, v in times.items()}

    def warm_up(self) -> None:
        """Run the graphs at a short and the longest caption length (first calls allocate)."""
        for text in ("warm up", "x" * self.model.max_length):
            self.generate(text, n=1, seed=0)
            self.understand(text)
        self.clear_cache()

    # -- inference ------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The precision variant in use."""
        return self._variant_in_use.precision

    def _run_text(self, variant: _Variant, encoded: Sequence[tokenizer.Encoded]) -> np.ndarray:
        return _run_text(variant, self.model, encoded)

    def _run_generator(
        self, variant: _Variant, embeddings: np.ndarray, seeds: Sequence[tuple[int, int]]
    ) -> np.ndarray:
        return _run_generator(variant, self.model, embeddings, seeds)

    def embed(self, captions: Sequence[str]) -> np.ndarray:
        """Captions → (B, E) text embeddings, from the LRU cache (keyed by normalised text) or
        the text encoder; raises `tokenizer.CaptionError` naming the bad caption."""
        by_text: dict[str, tokenizer.Encoded] = {}
        for index, caption in enumerate(captions):
            if caption in by_text:
                continue  # n images of one caption: normalised once
            try:
                by_text[caption] = tokenizer.encode(caption)
            except tokenizer.CaptionError as err:
                several = len(set(captions)) > 1
                raise tokenizer.CaptionError(
                    f"caption {index}: {err}" if several else str(err)
                ) from None
        encoded = [by_text[caption] for caption in captions]
        out = np.empty((len(encoded), self.model.embedding_dim), dtype=np.float32)
        missing: dict[str, tokenizer.Encoded] = {}
        with self._lock:
            # Counted per distinct caption: n images of one caption are one look-up.
            seen: set[str] = set()
            for row, e in enumerate(encoded):
                hit = self._cache.get(e.text)
                if hit is None:
                    missing[e.text] = e
                else:
                    self._cache.move_to_end(e.text)
                    out[row] = hit
                    if e.text not in seen:
                        self._stats.hits += 1
                seen.add(e.text)
            self._stats.misses += len(missing)
        if missing:
            # Each caption is encoded alone, padded to its own length: batched with others, its
            # embedding would depend on them (other kernels for another (B, T), and a dynamic
            # int8 text encoder quantizes with one scale over the whole batch), and through the
            # cache on whatever was asked before. The determinism promise (docs/PROTOCOL.md §
            # Determinism) needs a caption's embedding to be a function of the caption alone.
            # The price is the text encoder's batching for many distinct unseen captions at
            # once, which only `bench` and `train evaluate` do (same section of the docs).
            computed = {
                e.text: self._run_text(self._variant_in_use, [e])[0].astype(np.float32)
                for e in missing.values()
            }
            for row, e in enumerate(encoded):
                if e.text in computed:
                    out[row] = computed[e.text]
            with self._lock:
                for text, row_value in computed.items():
                    if self._cache_capacity == 0:
                        break
                    row_value.flags.writeable = False
                    self._cache[text] = row_value
                    self._cache.move_to_end(text)
                    while len(self._cache) > self._cache_capacity:
                        self._cache.popitem(last=False)
                self._stats.size = len(self._cache)
        return out

    def generate(self, caption: str, n: int = 1, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """`n` images of one caption → (n, H, W, 3) uint8 RGB (noise indices first_index, ...)."""
        return self.generate_batch([(caption, seed, first_index + k) for k in range(n)])

    def generate_batch(self, items: Sequence[tuple[str, int, int]]) -> np.ndarray:
        """(caption, seed, index) per image → (B, H, W, 3) uint8 RGB, run as one batch."""
        if not items:
            size = self.model.image_size
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        embeddings = self._drawn_embeddings(items)  # (B, E)
        parts = []
        for start in range(0, len(items), MAX_BATCH):
            seeds = [(s, i) for _, s, i in items[start : start + MAX_BATCH]]
            raw = self._run_generator(
                self._variant_in_use, embeddings[start : start + MAX_BATCH], seeds
            )  # (b, C, H, W)
            parts.append(to_uint8_rgb(raw, self.model.value_range))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def draws_understood(self) -> bool:
        """Whether images follow the read-back through the canonical caption (`--draw
        understood` and a bundle that carries one)."""
        spec = self.manifest.readback
        return (
            self.draw == DRAW_UNDERSTOOD
            and self.has_readback
            and spec is not None
            and spec.canonical is not None
        )

    def drawn_captions(self, items: Sequence[tuple[str, int, int]]) -> list[str]:
        """The caption the generator draws for each image (caption, seed, index): with
        `draws_understood`, the canonical caption of what the robot understood, each open
        attribute chosen for that image (`edge_runtime.canonical`); else — and for a caption
        read as off-domain, whose read-back means nothing — the caption itself. Each distinct
        caption is read back once, however many images it asks for."""
        spec = self.manifest.readback
        return [
            caption if chosen is None or spec is None else canonical.render(spec, chosen)
            for caption, chosen in self._choices(items)
        ]

    def _drawn_embeddings(self, items: Sequence[tuple[str, int, int]]) -> np.ndarray:
        """(B, E) embeddings of `drawn_captions(items)`: canonical ones from the variant's table
        when the bundle has one (the second text-encoder pass saved: docs/QUALITY.md § 3.20),
        the others through `embed` and its cache."""
        table = self._variant_in_use.canonical_table
        spec = self.manifest.readback
        if table is None or spec is None:
            return self.embed(self.drawn_captions(items))
        choices = self._choices(items)
        out = np.empty((len(items), self.model.embedding_dim), dtype=np.float32)
        words = [row for row, (_, chosen) in enumerate(choices) if chosen is None]
        if words:
            out[words] = self.embed([choices[row][0] for row in words])
        for row, (_, chosen) in enumerate(choices):
            if chosen is not None:
                out[row] = table[canonical.class_index(spec, chosen)]
        return out

    def _choices(
        self, items: Sequence[tuple[str, int, int]]
    ) -> list[tuple[str, tuple[int, ...] | None]]:
        """Per image: (the caption, the values drawn for it), or (the caption, None) where the
        words themselves are drawn (`drawn_captions`)."""
        spec = self.manifest.readback
        if not self.draws_understood or spec is None:
            return [(caption, None) for caption, _, _ in items]
        # caption → (normalised text, understood values), or None: draw the words.
        readings: dict[str, tuple[str, list[str]] | None] = {}
        drawn: list[tuple[str, tuple[int, ...] | None]] = []
        for caption, seed, index in items:
            if caption not in readings:
                understood = self.understand(caption)
                readings[caption] = (
                    None
                    if understood is None or understood.is_off_domain
                    else (
                        tokenizer.encode(caption).text,
                        [a.value for a in understood.attributes],
                    )
                )
            reading = readings[caption]
            if reading is None:
                drawn.append((caption, None))
            else:
                text, values = reading
                drawn.append((caption, canonical.choose(spec, values, text, seed, index)))
        return drawn

    def drawn_caption(self, caption: str, seed: int = 0, index: int = 0) -> str:
        """`drawn_captions` of one image."""
        return self.drawn_captions([(caption, seed, index)])[0]

    @property
    def has_readback(self) -> bool:
        """Whether the bundle reads captions back (`understand` returns None otherwise)."""
        return self._variant_in_use.readback is not None and self.manifest.readback is not None

    def understand(self, caption: str) -> Understood | None:
        """What the robot understood from `caption` (docs/PROTOCOL.md § Read-back): per attribute
        a value or "?" with a confidence, the off-domain probability and the caption's words
        the encoder never learnt from (`edge_runtime.vocabulary`; none when the bundle records
        no vocabulary); None when the bundle has no read-back. Cached by normalised text like
        the embedding, and a function of the caption alone (its embedding is, and the read-back
        runs on that one row); raises
        `tokenizer.CaptionError` for a caption that is empty after normalisation."""
        spec = self.manifest.readback
        runner = self._variant_in_use
        if runner.readback is None or spec is None:
            return None
        text = tokenizer.encode(caption).text
        with self._lock:
            hit = self._understood.get(text)
            if hit is not None:
                self._understood.move_to_end(text)
                return hit
        understood = self.read_back(self.embed([caption]))
        assert understood is not None  # checked above: this bundle has a read-back
        understood = dataclasses.replace(understood, unknown_words=self.unknown_words(text))
        with self._lock:
            if self._cache_capacity > 0:
                self._understood[text] = understood
                while len(self._understood) > self._cache_capacity:
                    self._understood.popitem(last=False)
        return understood

    def unknown_words(self, caption: str) -> tuple[str, ...]:
        """The words of `caption` the bundle's text encoder never learnt from (at most
        `vocabulary.MAX_REPORTED`); () when the bundle records no vocabulary."""
        return self._known_words.unknown(caption)

    def read_back(self, embedding: np.ndarray) -> Understood | None:
        """One caption's (1, E) text embedding → `Understood` (no cache): the read-back's own
        cost on top of the embedding, which `rescue-edge bench` times."""
        spec = self.manifest.readback
        runner = self._variant_in_use
        if runner.readback is None or spec is None:
            return None
        probs, off = _run_readback(runner, embedding)  # (1, W), (1,)
        return decide(probs[0], off[0], spec)

    @property
    def has_search(self) -> bool:
        """Whether the bundle can score camera frames against a caption (docs/SEARCH.md)."""
        return self._variant_in_use.frame_scorer is not None and self.manifest.search is not None

    def score_frame(self, frame: np.ndarray, embedding: np.ndarray) -> list[np.ndarray]:
        """One frame (1, 3, S, S) float32 in [-1, 1] and a caption's (1, E) embedding → the
        scorer's maps [scores_0 (1, h, w), boxes_0 (1, 4, h, w), ...]; `EngineError` without a
        frame scorer."""
        runner = self._variant_in_use
        if runner.frame_scorer is None or self.manifest.search is None:
            raise EngineError(f"bundle {self.info.bundle} has no frame scorer (search assist)")
        return runner.frame_scorer.run(
            list(self.manifest.search.output_names()),
            {FRAME: frame, TEXT_EMBEDDING: embedding.astype(np.float32, copy=False)},
        )

    # -- cache ----------------------------------------------------------------------------------

    def cache_stats(self) -> CacheStats:
        """A copy of the embedding cache counters."""
        with self._lock:
            return CacheStats(
                self._stats.hits, self._stats.misses, len(self._cache), self._cache_capacity
            )

    def clear_cache(self) -> None:
        """Forget every cached embedding (counters too)."""
        with self._lock:
            self._cache.clear()
            self._understood.clear()
            self._stats = CacheStats(capacity=self._cache_capacity)


def _run_text(
    variant: _Variant, model: ModelSpec, encoded: Sequence[tokenizer.Encoded]
) -> np.ndarray:
    """Encoded captions → (B, E) embeddings, padded only as far as the longest needs."""
    return run_text_encoder(
        variant.text_encoder, model, encoded, variant.ids_dtype, variant.lengths_dtype
    )


def run_text_encoder(
    session: Any,
    model: ModelSpec,
    encoded: Sequence[tokenizer.Encoded],
    ids_dtype: Any = np.int64,
    lengths_dtype: Any = np.int64,
) -> np.ndarray:
    """Encoded captions → (B, E) embeddings through a text-encoder session, padded only as far
    as the longest needs: the robot's own feed, which export's canonical table reuses so that
    its rows are what `Engine.embed` computes for one caption."""
    width = max(model.min_input_length(e.length) for e in encoded)
    ids = np.zeros((len(encoded), width), dtype=ids_dtype)  # (B, T), 0 = pad
    for row, e in enumerate(encoded):
        ids[row, : e.length] = e.ids[:width]
    lengths = np.array([min(e.length, width) for e in encoded], dtype=lengths_dtype)
    (embedding,) = session.run([TEXT_EMBEDDING], {CHAR_IDS: ids, LENGTHS: lengths})
    return embedding  # (B, E)


def _run_generator(
    variant: _Variant,
    model: ModelSpec,
    embeddings: np.ndarray,
    seeds: Sequence[tuple[int, int]],
) -> np.ndarray:
    """(B, E) embeddings + (seed, index) per row → (B, C, H, W) generator output."""
    noise = np.stack(
        [noise_for(s, i, model.noise_dim, variant.noise_dtype) for s, i in seeds]
    )  # (B, noise_dim)
    (images,) = variant.generator.run(
        [IMAGE],
        {NOISE: noise, TEXT_EMBEDDING: embeddings.astype(variant.embedding_dtype, copy=False)},
    )
    return images


def _run_readback(variant: _Variant, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, E) embeddings → (attribute_probs (B, W), off_domain (B,)) through the read-back."""
    probs, off = variant.readback.run(
        [ATTRIBUTE_PROBS, OFF_DOMAIN], {TEXT_EMBEDDING: embeddings.astype(np.float32, copy=False)}
    )
    return probs, off


def _return_freed_memory() -> None:
    """Hand the heap freed by the variants not chosen back to the OS.

    glibc keeps freed memory in its arenas, so without this the robot would carry the losing
    variant's weights as resident memory for its whole life (≈ 40 MB for the full model, a
    quarter of the budget). `malloc_trim` is glibc's own call for this; elsewhere (musl,
    macOS) it is simply skipped.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


def _input_dtype(spec: GraphSpec, name: str) -> Any:
    for tensor in spec.inputs:
        if tensor.name == name:
            dtype = ORT_DTYPES.get(tensor.dtype)
            if dtype is None:
                raise BundleError(f"{spec.file}: input {name} has unsupported dtype {tensor.dtype}")
            return dtype
    raise BundleError(f"{spec.file}: has no input named {name!r}")
