"""The model bundle: the contract between export (the only writer) and the robot (the only reader).

Standard library only. A bundle is a directory::

    manifest.json           this module's `Manifest`, as JSON
    text_encoder.onnx       caption ids → text embedding
    generator.onnx          noise + text embedding → image
    generator.int8.onnx     ... and any other per-precision variant the manifest names

The manifest names every graph's file, sha256, inputs and outputs; `variants` pairs a text encoder
and a generator under a precision name ("fp32", "int8") with the quality export measured against
fp32 and whether it passed export's gate. `load_bundle` refuses — with one line naming the file and
the field or mismatch — an unknown or newer schema, malformed or oversized JSON, any field of the
wrong type or outside its range, sizes that disagree with the graphs' declared shapes, a missing,
unlisted, symlinked or non-regular file, a size or sha256 mismatch, a graph that keeps its weights
in an external data file, a tokenizer other than ours, or (given a session factory) a graph whose
inputs and outputs differ from the manifest.

A bundle arrives on a USB stick and is hostile until checked (docs/ARCHITECTURE.md § Bundle): every
limit below is checked before the thing it limits is read, and each graph is read once, hashed,
and handed to onnxruntime as those same bytes, so nothing can change between check and use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edge_runtime import tokenizer, vocabulary
from edge_runtime.atomic import fsync_dir

_T = TypeVar("_T")

SCHEMA = "rescue-t2i-bundle"
SCHEMA_VERSION = 6
"""2 adds the optional read-back (`Manifest.readback`, `Variant.readback`); 3 the optional search
assist (`Manifest.search`, `Variant.frame_scorer`); 4 the read-back's optional `known_words`; 5
the read-back's optional `canonical` (drawing what was understood, `edge_runtime.canonical`); 6
the optional canonical-embedding table (`Variant.canonical`, `CANONICAL_EMBEDDINGS`). A bundle is
written with the lowest version its fields need (1 without any), so robots that read only older
versions keep loading it."""
READBACK_SCHEMA_VERSION = 2
SEARCH_SCHEMA_VERSION = 3
KNOWN_WORDS_SCHEMA_VERSION = 4
CANONICAL_SCHEMA_VERSION = 5
CANONICAL_TABLE_SCHEMA_VERSION = 6
MANIFEST_NAME = "manifest.json"

# Tensor names: defined here once; the exporter names graph inputs/outputs with these and the
# runtime feeds and fetches with them.
CHAR_IDS = "char_ids"
"""Text encoder input: int64 [batch, time], ids from `edge_runtime.tokenizer` (0 = pad)."""
LENGTHS = "lengths"
"""Text encoder input: int64 [batch], number of real characters per row (≥ 1)."""
TEXT_EMBEDDING = "text_embedding"
"""Text encoder output / generator input: float32 [batch, embedding_dim]."""
NOISE = "noise"
"""Generator input: float32 [batch, noise_dim], standard normal."""
IMAGE = "image"
"""Generator output: float32 [batch, 3, image_size, image_size], RGB in `value_range`."""
ATTRIBUTE_PROBS = "attribute_probs"
"""Read-back output: float32 [batch, Σ(n_a + 1)], per attribute a softmax block over its values
and a last "not stated" class (`ReadBackSpec.attributes` order)."""
OFF_DOMAIN = "off_domain"
"""Read-back output: float32 [batch], probability that the caption describes nothing the robot
knows."""
CLASS_INDEX = "class_index"
"""Canonical-embedding table input: int64 [batch], a combination of read-back values as one
number, the first attribute most significant (`edge_runtime.canonical.class_index`)."""
FRAME = "frame"
"""Frame scorer input: float32 [batch, 3, frame_size, frame_size], RGB in [-1, 1]."""


def scores_name(scale: int) -> str:
    """Frame scorer output of scale `scale`: float32 [batch, h, w], per-window probability that
    the window shows the described person."""
    return f"scores_{scale}"


def boxes_name(scale: int) -> str:
    """Frame scorer output of scale `scale`: float32 [batch, 4, h, w], the box (x0, y0, x1, y1 in
    frame pixels) of whoever each window shows."""
    return f"boxes_{scale}"


TEXT_ENCODER = "text_encoder"
GENERATOR = "generator"
READBACK = "readback"
"""Optional role: text embedding → attributes read back (docs/EXPORT.md § Read-back)."""
FRAME_SCORER = "frame_scorer"
"""Optional role: camera frame + text embedding → score and box maps (docs/SEARCH.md)."""
CANONICAL_EMBEDDINGS = "canonical_embeddings"
"""Optional role: class index → its canonical caption's text embedding, as the same variant's
text encoder computes it (a Gather on a table export computed; docs/EXPORT.md § Read-back)."""
ROLES = (TEXT_ENCODER, GENERATOR, READBACK, FRAME_SCORER, CANONICAL_EMBEDDINGS)
BATCH_DIM = "batch"
"""Symbolic name of the dynamic batch axis in every graph."""
TIME_DIM = "time"
"""Symbolic name of the text encoder's (optionally dynamic) character axis."""

_DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8")
# onnxruntime reports tensor types as "tensor(float)" etc.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


# Limits on what a bundle may declare: far above any real bundle (the full model's graphs are
# ~20 MB each, its manifest ~8 KB), far below what would exhaust a robot's memory.
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 32
"""Longest JSON number literal: Python's int() of a 5,000-digit literal raises (and is slow)."""
MAX_GRAPH_BYTES = 64 << 20
"""The full model's graphs are ~20 MB fp32; a graph is held in memory once while it is checked."""
MAX_BUNDLE_BYTES = 160 << 20
"""All graph files together (`info` holds a session of each): ~50 MB today, room for more graphs."""
MAX_GRAPHS = 32
MAX_VARIANTS = 16
MAX_NOISE_DIM = 4096
MAX_EMBEDDING_DIM = 8192
MAX_IMAGE_SIZE = 512
"""A batch of 64 such fp32 images is 200 MB: the largest the engine's batches can afford."""
MAX_VALUE_MAGNITUDE = 1e6
MAX_NAME_CHARS = 128
MAX_METRICS = 64
IMAGE_CHANNELS = (1, 3)
"""Grey (repeated to RGB by the runtime) or RGB."""
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
"""Graph keys, variant and precision names, metric names."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_VALUES = 32
MAX_LABEL_CHARS = 24
"""Attribute and value names travel in every `gen` reply (`name:value:0.98` per attribute), so
their count and length bound that reply: 16 × (24 + 1 + 24 + 5) + separators < 1 KiB."""
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,23}")
"""Attribute and value names: lower-case ASCII with nothing the link's reply fields escape or
split on (space, '*', ',', ':', '=')."""
_WORD_RE = re.compile(rf"[a-z]{{1,{vocabulary.MAX_WORD_LENGTH}}}")
"""A read-back known word (`vocabulary.WORD`, bounded)."""
MAX_SCALES = 4
MAX_TOP_K = 16
"""Boxes per frame in a `find` reply: each is ~30 bytes on the link."""
MIN_FRAME_SIZE = 64
NOT_STATED = "?"
MAX_TEMPLATE_CHARS = 120
MAX_PHRASE_CHARS = 48
MAX_EXCLUDED = 256
"""Canonical captions (`CanonicalSpec`): the template, each value's phrase and the number of
value combinations the training data never shows. A rendered caption is checked against the
tokenizer's `MAX_LENGTH` at load, for the longest phrase of every attribute."""
_PHRASE = re.compile(r"[a-z][a-z ,'-]*[a-z]")
"""A value's phrase: lower-case words, spaces, commas, apostrophes and hyphens (the tokenizer
keeps them as they are, so the caption the robot encodes is the one it reports)."""
_SLOT = re.compile(r"\{([a-z][a-z0-9_-]{0,23})\}")
"""What the read-back prints for an attribute the caption leaves open (never a value name)."""
_INPUTS = {
    TEXT_ENCODER: (CHAR_IDS, LENGTHS),
    GENERATOR: (NOISE, TEXT_EMBEDDING),
    READBACK: (TEXT_EMBEDDING,),
    CANONICAL_EMBEDDINGS: (CLASS_INDEX,),
}
_OUTPUTS = {
    TEXT_ENCODER: (TEXT_EMBEDDING,),
    GENERATOR: (IMAGE,),
    READBACK: (ATTRIBUTE_PROBS, OFF_DOMAIN),
    CANONICAL_EMBEDDINGS: (TEXT_EMBEDDING,),
}
_INT_INPUTS = ("int64", "int32")
_FLOAT_TENSORS = ("float32", "float16")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: str
    """One of float32, float16, int64, int32, uint8, int8."""
    shape: tuple[int | str, ...]
    """Fixed sizes as ints, dynamic axes by symbolic name (e.g. "batch")."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> TensorSpec:
        _only(d, ("name", "dtype", "shape"), where)
        name = _key(d, "name", where)
        dtype = _get(d, "dtype", str, where)
        if dtype not in _DTYPES:
            raise BundleError(f"{where}: tensor {name!r} has unknown dtype {dtype!r:.40}")
        shape = _get(d, "shape", list, where)
        if not 1 <= len(shape) <= 8:
            raise BundleError(f"{where}: tensor {name!r} has rank {len(shape)}, expected 1..8")
        for dim in shape:
            fixed = isinstance(dim, int) and not isinstance(dim, bool) and 1 <= dim <= 1 << 20
            if not (fixed or (isinstance(dim, str) and _KEY.fullmatch(dim))):
                raise BundleError(f"{where}: tensor {name!r} has a bad dimension {dim!r:.40}")
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of the bundle."""

    file: str
    """File name inside the bundle directory (no directories)."""
    role: str
    """`TEXT_ENCODER` or `GENERATOR`."""
    precision: str
    """"fp32", "int8", "fp16", ..."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str = ""
    """Filled in by `write_bundle` from the file's bytes."""
    size_bytes: int = 0
    """Filled in by `write_bundle`."""
    opset: int = 0
    """Default-domain ONNX opset the graph was exported with."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> GraphSpec:
        _only(d, [f.name for f in dataclasses.fields(cls)], where)
        file = _get(d, "file", str, where)
        if not _FILE.fullmatch(file) or file == MANIFEST_NAME:
            raise BundleError(f"{where}: graph file {file!r:.80} must be a plain file name")
        role = _get(d, "role", str, where)
        if role not in ROLES:
            raise BundleError(f"{where}: graph {file} has unknown role {role!r:.40}")
        sha256 = _get(d, "sha256", str, where)
        if not _SHA256.fullmatch(sha256):
            raise BundleError(f"{where}: field 'sha256' must be 64 lowercase hex digits")
        return cls(
            file=file,
            role=role,
            precision=_key(d, "precision", where),
            inputs=_tensors(d, "inputs", f"{where} {file} inputs"),
            outputs=_tensors(d, "outputs", f"{where} {file} outputs"),
            sha256=sha256,
            size_bytes=_int(d, "size_bytes", where, 1, MAX_GRAPH_BYTES),
            opset=_int(d, "opset", where, 0, 100),
        )


@dataclass(frozen=True)
class Variant:
    """A runnable pair of graphs at one precision, with the quality export measured."""

    text_encoder: str
    """Key into `Manifest.graphs`."""
    generator: str
    """Key into `Manifest.graphs`."""
    gate_passed: bool
    """Whether export's quality gate passed (fp32 is the reference and always passes)."""
    quality: dict[str, float] = field(default_factory=dict)
    """Measured against fp32 on a fixed batch, e.g. {"psnr_db": 41.2, "ssim": 0.995}."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Measured on the exporting machine, e.g. {"generator_b1_t1": 2.1}."""
    readback: str | None = None
    """Key into `Manifest.graphs` of this precision's read-back graph; None when the bundle has
    no read-back (then the field is not written, as in schema version 1)."""
    frame_scorer: str | None = None
    """Key into `Manifest.graphs` of this precision's frame scorer; None without search assist
    (then the field is not written)."""
    canonical: str | None = None
    """Key into `Manifest.graphs` of this precision's canonical-embedding table (schema 6); None:
    the robot encodes the canonical caption's text (then the field is not written)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for optional in ("readback", "frame_scorer", "canonical"):
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Variant:
        _only(d, [f.name for f in dataclasses.fields(cls)], where)
        return cls(
            text_encoder=_get(d, "text_encoder", str, where),
            generator=_get(d, "generator", str, where),
            gate_passed=_get(d, "gate_passed", bool, where),
            quality=_floats(_get(d, "quality", dict, where), where),
            latency_ms=_floats(_get(d, "latency_ms", dict, where), where),
            readback=_get(d, "readback", str, where) if "readback" in d else None,
            frame_scorer=_get(d, "frame_scorer", str, where) if "frame_scorer" in d else None,
            canonical=_get(d, "canonical", str, where) if "canonical" in d else None,
        )


@dataclass(frozen=True)
class ReadBackSpec:
    """What the read-back graph's outputs mean, and the decision rule's threshold.

    `attributes` names the softmax blocks of `ATTRIBUTE_PROBS` in order: attribute a's block is
    its values in the listed order, then "not stated". The decision rule (docs/PROTOCOL.md
    § Read-back; the same as docs/TEXT_ENCODER.md § Read-back): per block the most probable class,
    `NOT_STATED` when that is the last one; off-domain when `OFF_DOMAIN` > `off_domain_threshold`.
    """

    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    """(attribute name, its value names) in block order."""
    off_domain_threshold: float = 0.5
    known_words: tuple[str, ...] = ()
    """The words of the captions the text encoder and the heads learnt from, sorted (schema 4;
    `edge_runtime.vocabulary`); () when the checkpoint did not record them. Lets the robot name
    the words of a caption it never saw."""
    canonical: CanonicalSpec | None = None
    """How to word what was understood as a training caption (schema 5; `edge_runtime.canonical`);
    None: the robot draws from the operator's caption itself."""

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Classes per attribute block: its values, then "not stated"."""
        return tuple(len(values) + 1 for _, values in self.attributes)

    @property
    def width(self) -> int:
        """Columns of `ATTRIBUTE_PROBS`: Σ(n_a + 1)."""
        return sum(self.block_sizes)

    def to_dict(self) -> dict[str, Any]:
        known = {"known_words": list(self.known_words)} if self.known_words else {}
        if self.canonical is not None:
            known["canonical"] = self.canonical.to_dict(self.attributes)
        return {
            "attributes": [
                {"name": name, "values": list(values)} for name, values in self.attributes
            ],
            "off_domain_threshold": self.off_domain_threshold,
            **known,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ReadBackSpec:
        _only(d, ("attributes", "off_domain_threshold", "known_words", "canonical"), where)
        items = _get(d, "attributes", list, where)
        if not 1 <= len(items) <= MAX_ATTRIBUTES:
            raise BundleError(
                f"{where}: field 'attributes' has {len(items)} entries, "
                f"expected 1..{MAX_ATTRIBUTES}"
            )
        attributes: list[tuple[str, tuple[str, ...]]] = []
        for index, raw in enumerate(items):
            at = f"{where} attributes[{index}]"
            item = _object(raw, at)
            _only(item, ("name", "values"), at)
            name = _label(_get(item, "name", str, at), "name", at)
            values = _get(item, "values", list, at)
            if not 2 <= len(values) <= MAX_ATTRIBUTE_VALUES:
                raise BundleError(
                    f"{at}: field 'values' has {len(values)} entries, expected "
                    f"2..{MAX_ATTRIBUTE_VALUES}"
                )
            for value in values:
                if not isinstance(value, str):
                    raise BundleError(
                        f"{at}: field 'values' should hold strings, got {type(value).__name__}"
                    )
                _label(value, "values", at)
            if len(set(values)) != len(values):
                raise BundleError(f"{at}: field 'values' repeats a value")
            attributes.append((name, tuple(values)))
        names = [name for name, _ in attributes]
        if len(set(names)) != len(names):
            raise BundleError(f"{where}: field 'attributes' repeats a name")
        threshold = _get(d, "off_domain_threshold", float, where)
        if not 0.0 < threshold < 1.0:
            raise BundleError(
                f"{where}: field 'off_domain_threshold' must be strictly between 0 and 1, "
                f"got {threshold!r:.40}"
            )
        known_words = _known_words(d.get("known_words", []), where)
        canonical = None
        if "canonical" in d:
            at = f"{where} canonical"
            canonical = CanonicalSpec.from_dict(_object(d["canonical"], at), at, tuple(attributes))
        return cls(
            attributes=tuple(attributes),
            off_domain_threshold=threshold,
            known_words=known_words,
            canonical=canonical,
        )


@dataclass(frozen=True)
class CanonicalSpec:
    """A training caption for any combination of the read-back's values (schema 5).

    `template` holds each attribute's slot `{name}` once (read-back attribute names); the slot
    is filled with `phrases[a][v]`, the phrase of value v of attribute a (read-back order). The
    robot draws a caption's understood values through this caption, and chooses the values the
    caption leaves open, avoiding the `excluded` combinations ((attribute index, value index)
    pairs that the training data never shows together). `edge_runtime.canonical` does both.
    """

    template: str
    phrases: tuple[tuple[str, ...], ...]
    excluded: tuple[tuple[tuple[int, int], ...], ...] = ()

    def to_dict(self, attributes: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any]:
        return {
            "template": self.template,
            "phrases": {
                name: list(phrases)
                for (name, _), phrases in zip(attributes, self.phrases, strict=True)
            },
            "excluded": [
                {attributes[a][0]: attributes[a][1][v] for a, v in combination}
                for combination in self.excluded
            ],
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        where: str,
        attributes: Sequence[tuple[str, Sequence[str]]],
    ) -> CanonicalSpec:
        _only(d, ("template", "phrases", "excluded"), where)
        names = [name for name, _ in attributes]
        template = _get(d, "template", str, where)
        if not 1 <= len(template) <= MAX_TEMPLATE_CHARS:
            raise BundleError(
                f"{where}: field 'template' must be 1..{MAX_TEMPLATE_CHARS} characters"
            )
        frame = _SLOT.sub("", template)  # the template's own characters, slots removed
        if sorted(_SLOT.findall(template)) != sorted(names) or "{" in frame or "}" in frame:
            raise BundleError(
                f"{where}: field 'template' must hold each of {{{'}, {'.join(names)}}} once and "
                "no other braces"
            )
        filled = _SLOT.sub("x", template)  # as a caption: the tokenizer folds runs of spaces
        if tokenizer.normalize(filled) != filled:
            raise BundleError(
                f"{where}: field 'template' has characters the tokenizer would change "
                "(lower-case ASCII only)"
            )
        raw = _get(d, "phrases", dict, where)
        _only(raw, names, f"{where} phrases")
        phrases: list[tuple[str, ...]] = []
        for name, values in attributes:
            at = f"{where} phrases.{name}"
            if name not in raw:
                raise BundleError(f"{where}: field 'phrases' lacks attribute {name!r}")
            items = raw[name]
            if not isinstance(items, list) or len(items) != len(values):
                raise BundleError(f"{at}: should be a list of {len(values)} phrases, one per value")
            for index, phrase in enumerate(items):
                if (
                    not isinstance(phrase, str)
                    or len(phrase) > MAX_PHRASE_CHARS
                    or not _PHRASE.fullmatch(phrase)
                ):
                    raise BundleError(
                        f"{at}[{index}] is {phrase!r:.40}, expected 2..{MAX_PHRASE_CHARS} "
                        "characters of a-z, space, comma, apostrophe or hyphen"
                    )
            if len(set(items)) != len(items):
                raise BundleError(f"{at}: repeats a phrase (two values would draw alike)")
            phrases.append(tuple(items))
        longest = len(frame) + sum(max(map(len, p)) for p in phrases)
        if longest > tokenizer.MAX_LENGTH:
            raise BundleError(
                f"{where}: its longest caption has {longest} characters, more than the "
                f"tokenizer's {tokenizer.MAX_LENGTH}"
            )
        items = d.get("excluded", [])
        if not isinstance(items, list) or len(items) > MAX_EXCLUDED:
            raise BundleError(
                f"{where}: field 'excluded' should be a list of at most {MAX_EXCLUDED} objects"
            )
        excluded: list[tuple[tuple[int, int], ...]] = []
        for index, item in enumerate(items):
            at = f"{where} excluded[{index}]"
            combination = _object(item, at)
            if not 2 <= len(combination) <= len(names):
                raise BundleError(f"{at}: should name 2..{len(names)} attributes")
            pairs = []
            for name, value in combination.items():
                if name not in names:
                    raise BundleError(f"{at}: unknown attribute {name!r:.40}")
                a = names.index(name)
                if not isinstance(value, str) or value not in attributes[a][1]:
                    raise BundleError(f"{at}: {value!r:.40} is not a value of {name}")
                pairs.append((a, list(attributes[a][1]).index(value)))
            excluded.append(tuple(sorted(pairs)))
        return cls(template=template, phrases=tuple(phrases), excluded=tuple(excluded))


@dataclass(frozen=True)
class SearchScale:
    """One scale of the frame scorer: the frame is average-pooled by `factor` first; its score
    and box maps are `cells` = (h, w) large."""

    factor: int
    cells: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "cells": list(self.cells)}


@dataclass(frozen=True)
class SearchSpec:
    """Search assist (docs/SEARCH.md): how the frame scorer is fed and its output read.

    The robot resizes a camera frame to `frame_size`², runs the scorer with the caption's text
    embedding, takes every cell of every scale as a candidate box, keeps `top_k` after
    non-maximum suppression at `nms_iou`, and reports the person present when the best score
    reaches `threshold` (calibrated on a validation split: `calibration` says how).
    """

    frame_size: int
    scales: tuple[SearchScale, ...]
    threshold: float
    nms_iou: float = 0.3
    top_k: int = 5
    calibration: dict[str, float] = field(default_factory=dict)
    """Measured at export: e.g. the val split's absent quantile and figures (numbers only)."""

    def output_names(self) -> tuple[str, ...]:
        """The scorer's outputs in order: scores_0, boxes_0, scores_1, boxes_1, ..."""
        return tuple(n for i in range(len(self.scales)) for n in (scores_name(i), boxes_name(i)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_size": self.frame_size,
            "scales": [s.to_dict() for s in self.scales],
            "threshold": self.threshold,
            "nms_iou": self.nms_iou,
            "top_k": self.top_k,
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SearchSpec:
        _only(d, ("frame_size", "scales", "threshold", "nms_iou", "top_k", "calibration"), where)
        frame_size = _int(d, "frame_size", where, MIN_FRAME_SIZE, MAX_IMAGE_SIZE)
        items = _get(d, "scales", list, where)
        if not 1 <= len(items) <= MAX_SCALES:
            raise BundleError(
                f"{where}: field 'scales' has {len(items)} entries, expected 1..{MAX_SCALES}"
            )
        scales = []
        for index, raw in enumerate(items):
            at = f"{where} scales[{index}]"
            item = _object(raw, at)
            _only(item, ("factor", "cells"), at)
            factor = _int(item, "factor", at, 1, 8)
            cells = _get(item, "cells", list, at)
            if len(cells) != 2 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= frame_size
                for c in cells
            ):
                raise BundleError(
                    f"{at}: field 'cells' must be two integers 1..{frame_size}, got {cells!r:.60}"
                )
            scales.append(SearchScale(factor, (cells[0], cells[1])))
        threshold = _get(d, "threshold", float, where)
        if not 0.0 < threshold < 1.0:
            raise BundleError(
                f"{where}: field 'threshold' must be strictly between 0 and 1, "
                f"got {threshold!r:.40}"
            )
        nms_iou = _get(d, "nms_iou", float, where)
        if not 0.0 < nms_iou <= 1.0:
            raise BundleError(f"{where}: field 'nms_iou' must be in (0, 1], got {nms_iou!r:.40}")
        return cls(
            frame_size=frame_size,
            scales=tuple(scales),
            threshold=threshold,
            nms_iou=nms_iou,
            top_k=_int(d, "top_k", where, 1, MAX_TOP_K),
            calibration=_floats(_get(d, "calibration", dict, where), f"{where} calibration"),
        )


@dataclass(frozen=True)
class ModelSpec:
    """What the runtime needs to feed the graphs and read their output."""

    noise_dim: int
    embedding_dim: int
    image_size: int
    image_channels: int = 3
    value_range: tuple[float, float] = (-1.0, 1.0)
    """Generator output range; the runtime maps it linearly to 0..255."""
    max_length: int = tokenizer.MAX_LENGTH
    """Longest character input the text encoder accepts."""
    length_stride: int = 0
    """0: always pad captions to `max_length`. Otherwise the encoder's output for a caption of L
    characters is exactly the same for any input of ≥ `min_input_length(L)` characters, so the
    runtime may pad only that far (less work for short captions)."""
    length_extra: int = 0
    """See `min_input_length`."""

    def min_input_length(self, length: int) -> int:
        """Shortest padded input that gives the same embedding as padding to `max_length`."""
        if self.length_stride <= 0:
            return self.max_length
        needed = -(-length // self.length_stride) * self.length_stride + self.length_extra
        return min(self.max_length, needed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ModelSpec:
        _only(d, [f.name for f in dataclasses.fields(cls)], where)
        value_range = _get(d, "value_range", list, where)
        if len(value_range) != 2 or not all(_is_finite(v) for v in value_range):
            raise BundleError(
                f"{where}: field 'value_range' must be two finite numbers, got {value_range!r:.80}"
            )
        low, high = float(value_range[0]), float(value_range[1])
        # The runtime maps [low, high] to 0..255 with a scale of 255 / (high - low).
        if not (low < high and max(abs(low), abs(high)) <= MAX_VALUE_MAGNITUDE):
            raise BundleError(
                f"{where}: field 'value_range' must be [low, high] with low < high and "
                f"|values| ≤ {MAX_VALUE_MAGNITUDE:g}, got {value_range!r:.80}"
            )
        image_channels = _int(d, "image_channels", where, 1, 3)
        if image_channels not in IMAGE_CHANNELS:
            raise BundleError(
                f"{where}: field 'image_channels' must be 1 or 3, got {image_channels}"
            )
        max_length = _int(d, "max_length", where, 1, tokenizer.MAX_LENGTH)
        return cls(
            noise_dim=_int(d, "noise_dim", where, 1, MAX_NOISE_DIM),
            embedding_dim=_int(d, "embedding_dim", where, 1, MAX_EMBEDDING_DIM),
            image_size=_int(d, "image_size", where, 1, MAX_IMAGE_SIZE),
            image_channels=image_channels,
            value_range=(low, high),
            max_length=max_length,
            length_stride=_int(d, "length_stride", where, 0, max_length),
            length_extra=_int(d, "length_extra", where, 0, max_length),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` holds."""

    name: str
    model: ModelSpec
    graphs: dict[str, GraphSpec]
    """Keyed by a short name, e.g. "text_encoder.fp32", "generator.int8"."""
    variants: dict[str, Variant]
    """Keyed by precision name, e.g. "fp32", "int8"."""
    tokenizer: dict[str, Any] = field(default_factory=lambda: dict(tokenizer.SPEC))
    quantization: dict[str, Any] = field(default_factory=dict)
    """How int8 graphs were made: method, calibration set, excluded nodes, ..."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """checkpoint_sha256, git_commit, created_utc, exporter and library versions, ..."""
    readback: ReadBackSpec | None = None
    """The read-back's labels and threshold; None: the bundle reads no caption back."""
    search: SearchSpec | None = None
    """Search assist's frame size, scales and threshold; None: the bundle has no frame scorer."""
    schema: str = SCHEMA
    schema_version: int = 1
    """Written as `READBACK_SCHEMA_VERSION` when the bundle has a read-back, else as given."""

    def to_dict(self) -> dict[str, Any]:
        version = self.schema_version
        if self.readback is not None:
            version = max(version, READBACK_SCHEMA_VERSION)
        if self.search is not None:
            version = max(version, SEARCH_SCHEMA_VERSION)
        if self.readback is not None and self.readback.known_words:
            version = max(version, KNOWN_WORDS_SCHEMA_VERSION)
        if self.readback is not None and self.readback.canonical is not None:
            version = max(version, CANONICAL_SCHEMA_VERSION)
        if any(v.canonical is not None for v in self.variants.values()):
            version = max(version, CANONICAL_TABLE_SCHEMA_VERSION)
        extra = {} if self.readback is None else {"readback": self.readback.to_dict()}
        if self.search is not None:
            extra["search"] = self.search.to_dict()
        return {
            "schema": self.schema,
            "schema_version": version,
            "name": self.name,
            "tokenizer": dict(self.tokenizer),
            "model": self.model.to_dict(),
            "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
            "quantization": dict(self.quantization),
            "provenance": dict(self.provenance),
            **extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Manifest:
        if not isinstance(d, Mapping):
            raise BundleError(f"{where}: expected a JSON object, got {type(d).__name__}")
        schema = d.get("schema")
        if schema != SCHEMA:
            raise BundleError(f"{where}: unknown schema {schema!r:.60} (expected {SCHEMA!r})")
        _only(d, [f.name for f in dataclasses.fields(cls)], where)
        version = _get(d, "schema_version", int, where)
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version} is newer than this runtime reads "
                f"({SCHEMA_VERSION}); update rescue-t2i on the robot"
            )
        if version < 1:
            raise BundleError(f"{where}: unknown schema_version {version}")
        tok = _get(d, "tokenizer", dict, where)
        _only(tok, list(tokenizer.SPEC), f"{where} tokenizer")
        try:
            tokenizer.check_spec(tok, where)
        except ValueError as err:
            raise BundleError(str(err)) from None
        for key, ours in tokenizer.SPEC.items():
            if type(tok[key]) is not type(ours):  # True == 1 and 1.0 == 1 pass check_spec
                raise BundleError(
                    f"{where}: tokenizer {key} should be {type(ours).__name__}, "
                    f"got {type(tok[key]).__name__}"
                )
        graphs = {
            k: GraphSpec.from_dict(_object(g, f"{where} graphs.{k}"), f"{where} graphs.{k}")
            for k, g in _keyed(d, "graphs", where, MAX_GRAPHS).items()
        }
        variants = {
            k: Variant.from_dict(_object(v, f"{where} variants.{k}"), f"{where} variants.{k}")
            for k, v in _keyed(d, "variants", where, MAX_VARIANTS).items()
        }
        if not variants:
            raise BundleError(f"{where}: no variants")
        readback = _optional_section(
            d, "readback", needs_version=READBACK_SCHEMA_VERSION, version=version, where=where,
            parse=ReadBackSpec.from_dict,
        )  # fmt: skip
        search = _optional_section(
            d, "search", needs_version=SEARCH_SCHEMA_VERSION, version=version, where=where,
            parse=SearchSpec.from_dict,
        )  # fmt: skip
        if readback is not None and readback.known_words and version < KNOWN_WORDS_SCHEMA_VERSION:
            raise BundleError(
                f"{where} readback: field 'known_words' needs schema_version "
                f"{KNOWN_WORDS_SCHEMA_VERSION}, the manifest says {version}"
            )
        if readback is not None and readback.canonical and version < CANONICAL_SCHEMA_VERSION:
            raise BundleError(
                f"{where} readback: field 'canonical' needs schema_version "
                f"{CANONICAL_SCHEMA_VERSION}, the manifest says {version}"
            )
        tables = any(v.canonical is not None for v in variants.values())
        if tables and version < CANONICAL_TABLE_SCHEMA_VERSION:
            raise BundleError(
                f"{where}: a variant's 'canonical' table needs schema_version "
                f"{CANONICAL_TABLE_SCHEMA_VERSION}, the manifest says {version}"
            )
        has_canonical = readback is not None and readback.canonical is not None
        files: dict[str, GraphSpec] = {}
        total = sum({g.file: g.size_bytes for g in graphs.values()}.values())
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(
                f"{where}: graphs total {total} bytes, more than the {MAX_BUNDLE_BYTES} allowed"
            )
        for key, graph in graphs.items():
            # Two keys may share one file (write_bundle copies it once), never with two hashes.
            other = files.setdefault(graph.file, graph)
            if (other.sha256, other.size_bytes) != (graph.sha256, graph.size_bytes):
                raise BundleError(
                    f"{where}: graphs.{key} names file {graph.file} with another sha256 or size "
                    "than an earlier graph"
                )
        for key, variant in variants.items():
            for role, graph_key in (
                (TEXT_ENCODER, variant.text_encoder),
                (GENERATOR, variant.generator),
            ):
                graph = graphs.get(graph_key)
                if graph is None:
                    raise BundleError(f"{where}: variant {key} names unknown graph {graph_key!r}")
                if graph.role != role:
                    raise BundleError(
                        f"{where}: variant {key} uses {graph_key!r} (a {graph.role}) as its {role}"
                    )
            _check_readback_variant(key, variant, graphs, readback, where)
            _check_optional_role(
                key,
                variant.frame_scorer,
                role=FRAME_SCORER,
                section="search",
                graphs=graphs,
                present=search is not None,
                where=where,
            )
            # Optional even with a canonical caption (the robot then encodes its text), but
            # every variant or none: the picture must not depend on the precision chosen.
            if tables and not has_canonical:
                raise BundleError(
                    f"{where}: variant {key} names a canonical table but the manifest has no "
                    "'readback.canonical' caption it belongs to"
                )
            _check_optional_role(
                key,
                variant.canonical,
                role=CANONICAL_EMBEDDINGS,
                section="readback.canonical",
                graphs=graphs,
                present=tables,
                where=where,
            )
        for key, graph in graphs.items():
            if graph.role == READBACK and readback is None:
                raise BundleError(
                    f"{where}: graphs.{key} is a {READBACK} but the manifest has no 'readback'"
                    " field naming its attributes"
                )
            if graph.role == CANONICAL_EMBEDDINGS and not has_canonical:
                raise BundleError(
                    f"{where}: graphs.{key} is a {CANONICAL_EMBEDDINGS} but the manifest has no "
                    "'readback.canonical' field naming its classes"
                )
            if graph.role == FRAME_SCORER and search is None:
                raise BundleError(
                    f"{where}: graphs.{key} is a {FRAME_SCORER} but the manifest has no 'search'"
                    " field describing its scales"
                )
        name = _get(d, "name", str, where)
        # The name reaches logs and the link's status reply: no control characters.
        if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
            raise BundleError(
                f"{where}: field 'name' must be 1..{MAX_NAME_CHARS} printable characters"
            )
        model = ModelSpec.from_dict(_get(d, "model", dict, where), f"{where} model")
        for key, graph in graphs.items():
            _check_contract(graph, model, f"{where} graphs.{key}", readback, search)
        return cls(
            name=name,
            model=model,
            graphs=graphs,
            variants=variants,
            tokenizer=tok,
            quantization=_get(d, "quantization", dict, where),
            provenance=_get(d, "provenance", dict, where),
            readback=readback,
            search=search,
            schema=schema,
            schema_version=version,
        )


_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def _check_readback_variant(
    key: str,
    variant: Variant,
    graphs: Mapping[str, GraphSpec],
    readback: ReadBackSpec | None,
    where: str,
) -> None:
    """With a read-back every variant names one (whichever precision the robot picks, it can read
    captions back); without, none does."""
    if readback is None:
        if variant.readback is not None:
            raise BundleError(
                f"{where}: variant {key} names read-back graph {variant.readback!r:.60} but the "
                "manifest has no 'readback' field"
            )
        return
    if variant.readback is None:
        raise BundleError(f"{where}: variant {key} has no 'readback' graph (the bundle has one)")
    graph = graphs.get(variant.readback)
    if graph is None:
        raise BundleError(f"{where}: variant {key} names unknown graph {variant.readback!r:.60}")
    if graph.role != READBACK:
        raise BundleError(
            f"{where}: variant {key} uses {variant.readback!r} (a {graph.role}) as its {READBACK}"
        )


def _check_optional_role(
    key: str,
    graph_key: str | None,
    *,
    role: str,
    section: str,
    graphs: Mapping[str, GraphSpec],
    present: bool,
    where: str,
) -> None:
    """With the manifest's `section` every variant names a graph of `role`; without, none does."""
    if not present:
        if graph_key is not None:
            raise BundleError(
                f"{where}: variant {key} names {role} graph {graph_key!r:.60} but the manifest has "
                f"no {section!r} field"
            )
        return
    if graph_key is None:
        raise BundleError(f"{where}: variant {key} has no {role!r} graph (the bundle has one)")
    graph = graphs.get(graph_key)
    if graph is None:
        raise BundleError(f"{where}: variant {key} names unknown graph {graph_key!r:.60}")
    if graph.role != role:
        raise BundleError(
            f"{where}: variant {key} uses {graph_key!r} (a {graph.role}) as its {role}"
        )


def _label(value: str, key: str, where: str) -> str:
    if not _LABEL.fullmatch(value):
        raise BundleError(
            f"{where}: field {key!r} holds {value!r:.40}, not a label (1-{MAX_LABEL_CHARS} of "
            "a-z 0-9 _ -, starting with a letter)"
        )
    return value


def _only(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Refuse fields this schema version does not define (a typo or a newer writer's field
    would otherwise be silently ignored)."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise BundleError(f"{where}: unknown field {unknown[0]!r:.60}")


def _known_words(raw: Any, where: str) -> tuple[str, ...]:
    """The read-back's `known_words`: a list of at most `vocabulary.MAX_KNOWN_WORDS` distinct
    words of 1..`vocabulary.MAX_WORD_LENGTH` letters a–z (what `vocabulary.words_of` yields)."""
    if not isinstance(raw, list):
        raise BundleError(f"{where}: field 'known_words' should be list, got {type(raw).__name__}")
    if len(raw) > vocabulary.MAX_KNOWN_WORDS:
        raise BundleError(
            f"{where}: field 'known_words' has {len(raw)} entries, at most "
            f"{vocabulary.MAX_KNOWN_WORDS} allowed"
        )
    for index, word in enumerate(raw):
        if not isinstance(word, str) or not _WORD_RE.fullmatch(word):
            raise BundleError(
                f"{where}: known_words[{index}] is {word!r:.40}, expected 1..."
                f"{vocabulary.MAX_WORD_LENGTH} letters a-z"
            )
    if len(set(raw)) != len(raw):
        raise BundleError(f"{where}: field 'known_words' repeats a word")
    return tuple(raw)


def _optional_section(
    d: dict[str, Any],
    key: str,
    *,
    needs_version: int,
    version: int,
    where: str,
    parse: Callable[[dict[str, Any], str], _T],
) -> _T | None:
    """A manifest section added in schema `needs_version` (None when absent). An older reader
    refuses the field by name; a newer bundle must say its version itself."""
    if key not in d:
        return None
    if version < needs_version:
        raise BundleError(
            f"{where}: field '{key}' needs schema_version {needs_version}, "
            f"the manifest says {version}"
        )
    return parse(_object(d[key], f"{where} {key}"), f"{where} {key}")


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: should be an object, got {type(value).__name__}")
    return value


def _keyed(d: Mapping[str, Any], key: str, where: str, most: int) -> dict[str, Any]:
    value = _get(d, key, dict, where)
    if len(value) > most:
        raise BundleError(f"{where}: field {key!r} has {len(value)} entries, at most {most}")
    for name in value:
        if not _KEY.fullmatch(name):
            raise BundleError(f"{where}: {key} name {name!r:.60} is not a plain name")
    return value


def _key(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(d, key, str, where)
    if not _KEY.fullmatch(value):
        raise BundleError(f"{where}: field {key!r} is {value!r:.60}, not a plain name")
    return value


def _int(d: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = _get(d, key, int, where)
    if not low <= value <= high:
        raise BundleError(f"{where}: field {key!r} must be {low}..{high}, got {value}")
    return value


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tensors(d: Mapping[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    items = _get(d, key, list, where)
    if not 1 <= len(items) <= 8:
        raise BundleError(f"{where}: {len(items)} tensors, expected 1..8")
    specs = tuple(TensorSpec.from_dict(_object(t, where), where) for t in items)
    names = [t.name for t in specs]
    if len(set(names)) != len(names):
        raise BundleError(f"{where}: tensor names repeat: {names}")
    return specs


def _check_contract(
    graph: GraphSpec,
    model: ModelSpec,
    where: str,
    readback: ReadBackSpec | None = None,
    search: SearchSpec | None = None,
) -> None:
    """The graph's declared inputs and outputs are what the runtime will feed and fetch, with the
    model's sizes: a manifest that passes here cannot make `serve` fail on a shape."""
    inputs = {t.name: t for t in graph.inputs}
    if graph.role == FRAME_SCORER:
        # Only reached with a search spec: a frame scorer without one is refused earlier.
        assert search is not None
        _check_frame_scorer(graph, model, search, where)
        return
    expected = _INPUTS[graph.role]
    if set(inputs) != set(expected):
        raise BundleError(
            f"{where}: a {graph.role} has inputs {sorted(expected)}, manifest says {sorted(inputs)}"
        )
    outputs = {t.name: t for t in graph.outputs}
    for name in _OUTPUTS[graph.role]:
        if name not in outputs:
            raise BundleError(f"{where}: a {graph.role} must have the output {name!r}")
    if graph.role == READBACK:
        # Only reached with a readback spec: a readback graph without one is refused earlier.
        assert readback is not None
        _expect(inputs[TEXT_EMBEDDING], _FLOAT_TENSORS, [(model.embedding_dim,)], where)
        _expect(outputs[ATTRIBUTE_PROBS], _FLOAT_TENSORS, [(readback.width,)], where)
        _expect(outputs[OFF_DOMAIN], _FLOAT_TENSORS, [], where)
    elif graph.role == CANONICAL_EMBEDDINGS:
        _expect(inputs[CLASS_INDEX], ("int64",), [], where)
        _expect(outputs[TEXT_EMBEDDING], _FLOAT_TENSORS, [(model.embedding_dim,)], where)
    elif graph.role == TEXT_ENCODER:
        # Padded only as far as `min_input_length` needs when length_stride > 0: a dynamic axis.
        time = (None,) if model.length_stride else (None, model.max_length)
        _expect(inputs[CHAR_IDS], _INT_INPUTS, [time], where)
        _expect(inputs[LENGTHS], _INT_INPUTS, [], where)
        _expect(outputs[TEXT_EMBEDDING], _FLOAT_TENSORS, [(model.embedding_dim,)], where)
    else:
        _expect(inputs[NOISE], _FLOAT_TENSORS, [(model.noise_dim,)], where)
        _expect(inputs[TEXT_EMBEDDING], _FLOAT_TENSORS, [(model.embedding_dim,)], where)
        size = model.image_size
        image = [(model.image_channels,), (size,), (size,)]
        _expect(outputs[IMAGE], _FLOAT_TENSORS, image, where)


def _check_frame_scorer(graph: GraphSpec, model: ModelSpec, search: SearchSpec, where: str) -> None:
    inputs = {t.name: t for t in graph.inputs}
    if set(inputs) != {FRAME, TEXT_EMBEDDING}:
        raise BundleError(
            f"{where}: a {FRAME_SCORER} has inputs {sorted([FRAME, TEXT_EMBEDDING])}, manifest "
            f"says {sorted(inputs)}"
        )
    size = search.frame_size
    _expect(inputs[FRAME], _FLOAT_TENSORS, [(3,), (size,), (size,)], where)
    _expect(inputs[TEXT_EMBEDDING], _FLOAT_TENSORS, [(model.embedding_dim,)], where)
    names = [t.name for t in graph.outputs]
    if names != list(search.output_names()):
        raise BundleError(
            f"{where}: a {FRAME_SCORER} with {len(search.scales)} scales has outputs "
            f"{list(search.output_names())}, manifest says {names}"
        )
    outputs = {t.name: t for t in graph.outputs}
    for i, scale in enumerate(search.scales):
        h, w = scale.cells
        _expect(outputs[scores_name(i)], _FLOAT_TENSORS, [(h,), (w,)], where)
        _expect(outputs[boxes_name(i)], _FLOAT_TENSORS, [(4,), (h,), (w,)], where)


def _expect(
    tensor: TensorSpec,
    dtypes: Sequence[str],
    sizes: Sequence[tuple[int | None, ...]],
    where: str,
) -> None:
    """The first axis is the batch (symbolic: the runtime varies it); `sizes` gives the sizes
    each later axis may have, None standing for a symbolic (dynamic) one."""
    if tensor.dtype not in dtypes:
        raise BundleError(
            f"{where}: tensor {tensor.name!r} is {tensor.dtype}, expected one of {list(dtypes)}"
        )
    ok = len(tensor.shape) == 1 + len(sizes) and isinstance(tensor.shape[0], str)
    for dim, allowed in zip(tensor.shape[1:], sizes, strict=False):
        ok = ok and ((None in allowed and isinstance(dim, str)) or dim in allowed)
    if not ok:
        wanted = [BATCH_DIM, *("dynamic" if a == (None,) else a[-1] for a in sizes)]
        raise BundleError(
            f"{where}: tensor {tensor.name!r} has shape {list(tensor.shape)}, the model's sizes "
            f"need {wanted}"
        )


def _get(d: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise BundleError(f"{where}: missing field {key!r}")
    value = d[key]
    # bool is an int subclass: refuse it where a number is meant.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(
            f"{where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _floats(d: Mapping[str, Any], where: str) -> dict[str, float]:
    if len(d) > MAX_METRICS:
        raise BundleError(f"{where}: {len(d)} metrics, at most {MAX_METRICS}")
    out = {}
    for k, v in d.items():
        if not _KEY.fullmatch(k):
            raise BundleError(f"{where}: metric name {k!r:.60} is not a plain name")
        if not _is_finite(v):
            raise BundleError(f"{where}: {k!r} should be a finite number, got {v!r:.40}")
        out[k] = float(v)
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SessionLike(Protocol):
    """What `load_bundle` needs of an inference session (onnxruntime.InferenceSession has it;
    it accepts the model's bytes as its first argument)."""

    def get_inputs(self) -> Sequence[Any]: ...
    def get_outputs(self) -> Sequence[Any]: ...


@dataclass
class Bundle:
    """A loaded, verified bundle: its directory, manifest and any sessions opened while loading."""

    path: Path
    manifest: Manifest
    sessions: dict[str, Any] = field(default_factory=dict)
    """Graph key → session, when `load_bundle` was given a session factory."""
    manifest_sha256: str = ""
    """sha256 of the manifest bytes that were parsed (the bundle's identity)."""

    def graph_path(self, key: str) -> Path:
        """Absolute path of graph `key`'s file."""
        return self.path / self.manifest.graphs[key].file


def _check_io(kind: str, specs: Sequence[TensorSpec], actual: Sequence[Any], where: str) -> None:
    names = [t.name for t in specs]
    got = [a.name for a in actual]
    if names != got:
        raise BundleError(f"{where}: graph {kind} are {got}, manifest says {names}")
    for spec, a in zip(specs, actual, strict=True):
        dtype = _ORT_DTYPES.get(a.type, a.type)
        if dtype != spec.dtype:
            raise BundleError(
                f"{where}: {kind[:-1]} {a.name!r} is {dtype}, manifest says {spec.dtype}"
            )
        shape = list(a.shape)
        if len(shape) != len(spec.shape):
            raise BundleError(
                f"{where}: {kind[:-1]} {a.name!r} has rank {len(shape)}, manifest says shape "
                f"{list(spec.shape)}"
            )
        for dim, expected in zip(shape, spec.shape, strict=True):
            # Symbolic axes may be renamed by tools; only fixed sizes must agree exactly.
            if isinstance(expected, int) and dim != expected:
                raise BundleError(
                    f"{where}: {kind[:-1]} {a.name!r} has shape {shape}, manifest says "
                    f"{list(spec.shape)}"
                )
            if isinstance(expected, str) and isinstance(dim, int):
                raise BundleError(
                    f"{where}: {kind[:-1]} {a.name!r} has fixed shape {shape}, manifest says "
                    f"{list(spec.shape)} is dynamic"
                )


def load_bundle(
    path: str | os.PathLike[str],
    open_session: Callable[[bytes], SessionLike] | None = None,
    *,
    graphs: Sequence[str] | None = None,
) -> Bundle:
    """Read and verify a bundle directory; raise `BundleError` naming the file and the problem.

    With `open_session` (e.g. a wrapper around `onnxruntime.InferenceSession`), each verified graph
    (or only those named in `graphs`) is opened from the very bytes that were hashed and its inputs
    and outputs checked against the manifest; the sessions are returned in `Bundle.sessions` so
    they are created once.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    raw = _read_regular(manifest_path, MAX_MANIFEST_BYTES, f"{manifest_path}: missing")
    manifest = Manifest.from_dict(parse_json(raw, str(manifest_path)), str(manifest_path))
    _check_listing(root, manifest)
    wanted = list(manifest.graphs) if graphs is None else list(graphs)
    bundle = Bundle(path=root, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest())
    for key in wanted:
        if key not in manifest.graphs:
            raise BundleError(f"{manifest_path}: no graph named {key!r}")
        spec = manifest.graphs[key]
        file = root / spec.file
        data = _read_regular(
            file, MAX_GRAPH_BYTES, f"{file}: missing (named by {MANIFEST_NAME} graphs.{key})"
        )
        if len(data) != spec.size_bytes:
            raise BundleError(
                f"{file}: {len(data)} bytes, manifest says {spec.size_bytes} "
                "(truncated or replaced)"
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise BundleError(
                f"{file}: sha256 mismatch: file has {actual[:16]}…, manifest says "
                f"{spec.sha256[:16]}… (corrupted or replaced)"
            )
        check_embedded_weights(data, str(file))
        if open_session is not None:
            try:
                session = open_session(data)
            except Exception as err:  # onnxruntime raises its own exception types
                raise BundleError(f"{file}: cannot be loaded: {first_line(err)}") from None
            _check_io("inputs", spec.inputs, session.get_inputs(), str(file))
            _check_io("outputs", spec.outputs, session.get_outputs(), str(file))
            bundle.sessions[key] = session
        del data
    return bundle


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (300 characters at most), for one-line errors."""
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def _read_regular(path: Path, limit: int, missing: str) -> bytes:
    """A regular file's bytes, read once through one descriptor: no symlink followed, no FIFO or
    device opened for long (O_NONBLOCK: opening a FIFO would otherwise wait for a writer), the
    size checked before a byte is read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(missing) from None
    except OSError as err:
        if path.is_symlink():
            raise BundleError(f"{path}: is a symlink; a bundle holds plain files only") from None
        raise BundleError(f"{path}: cannot read: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path}: not a regular file; a bundle holds plain files only")
        if info.st_size > limit:
            raise BundleError(f"{path}: {info.st_size} bytes, more than the {limit} allowed")
        chunks = []
        # One read of the whole file (one buffer: a graph is held once, not twice), one byte
        # more than declared so a file growing while read is caught; smaller reads only if
        # the kernel returns less.
        left = min(info.st_size, limit) + 1
        while left > 0:
            chunk = os.read(fd, left if not chunks else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        raise BundleError(f"{path}: cannot read: {err.strerror}") from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > min(info.st_size, limit):
        raise BundleError(f"{path}: grew while it was read; a bundle must not change in use")
    return data


def _check_listing(root: Path, manifest: Manifest) -> None:
    """Every entry of the bundle directory is the manifest or a graph it names, as a plain file:
    nothing unhashed can ride along (an external-data file, a library, a second manifest)."""
    listed = {MANIFEST_NAME} | {g.file for g in manifest.graphs.values()}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise BundleError(f"{root}: cannot list the bundle: {err.strerror}") from None
    if len(entries) > len(listed):
        extra = sorted({e.name for e in entries} - listed)
        raise BundleError(
            f"{root / extra[0]}: not listed in {MANIFEST_NAME}; a bundle holds only the manifest "
            "and the graphs it hashes (remove the file)"
        )
    for entry in entries:
        if entry.name not in listed:
            raise BundleError(
                f"{root / entry.name}: not listed in {MANIFEST_NAME}; a bundle holds only the "
                "manifest and the graphs it hashes (remove the file)"
            )
        if entry.is_symlink():
            raise BundleError(f"{root / entry.name}: is a symlink; a bundle holds plain files only")
        if not entry.is_file(follow_symlinks=False):
            raise BundleError(f"{root / entry.name}: not a regular file")


def parse_json(raw: bytes, where: str) -> Any:
    """JSON with its size, nesting depth and number lengths bounded before and while parsing;
    duplicate keys and NaN/Infinity refused. Every failure is one `BundleError` line."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{where}: not UTF-8 (byte offset {err.start})") from None
    # Depth before parsing: json recurses once per level and a deep file ends in RecursionError.
    # One linear pass over escapes, quotes and brackets (a regex for whole strings can backtrack
    # quadratically on hostile input).
    depth, in_string = 0, False
    for token in _JSON_TOKENS.findall(text):
        if token == '"':
            in_string = not in_string
        elif not in_string and token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BundleError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        elif not in_string and token in "]}":
            depth -= 1
    try:
        return json.loads(
            text,
            parse_int=_bounded_number(int, where),
            parse_float=_bounded_number(float, where),
            parse_constant=_no_constant(where),
            object_pairs_hook=_unique_keys(where),
        )
    except json.JSONDecodeError as err:
        raise BundleError(
            f"{where}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    except RecursionError:  # the depth scan above makes this unreachable; belt and braces
        raise BundleError(f"{where}: JSON nested too deeply") from None


_JSON_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _bounded_number(kind: Callable[[str], Any], where: str) -> Callable[[str], Any]:
    def parse(literal: str) -> Any:
        if len(literal) > MAX_NUMBER_CHARS:
            raise BundleError(
                f"{where}: a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS}): "
                f"{literal[:20]}…"
            )
        value = kind(literal)
        if not math.isfinite(value):  # 1e999 parses as inf
            raise BundleError(f"{where}: number {literal} is not finite")
        return value

    return parse


def _no_constant(where: str) -> Callable[[str], Any]:
    def refuse(name: str) -> Any:
        raise BundleError(f"{where}: {name} is not a number JSON allows")

    return refuse


def _unique_keys(where: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise BundleError(f"{where}: key {key!r:.60} appears twice in one object")
                seen.add(key)
        return out

    return build


# ONNX protobuf field numbers (onnx/onnx.proto3) of every message that can hold a tensor.
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE, _ATTR_SPARSES = 22, 23
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE = 7, 11
_TRAINING_GRAPHS = (1, 2)
_MAX_PROTO_DEPTH = 64


def check_embedded_weights(data: bytes, where: str) -> None:
    """Refuse an ONNX model whose tensors live in external data files.

    Such a file is not hashed by the manifest, and onnxruntime resolves its path when the model is
    loaded (from bytes: relative to the working directory), so the weights could change under an
    unchanged sha256. The robot cannot import `onnx`, hence this walk of the protobuf wire format
    over exactly the messages that can hold a tensor (initializers, sparse initializers, node
    attributes, subgraphs, functions, training graphs). Anything that does not parse is left for
    onnxruntime to refuse.
    """
    try:
        _walk(data, "model", 0)
    except _ExternalDataError:
        raise BundleError(
            f"{where}: a tensor refers to an external data file; bundles embed every weight "
            "(export without external data)"
        ) from None
    except (_MalformedError, IndexError):
        return


class _ExternalDataError(Exception):
    pass


class _MalformedError(Exception):
    pass


_CHILDREN: dict[str, dict[int, str]] = {
    "model": {_MODEL_GRAPH: "graph", _MODEL_TRAINING: "training", _MODEL_FUNCTIONS: "function"},
    "training": dict.fromkeys(_TRAINING_GRAPHS, "graph"),
    "graph": {_GRAPH_NODE: "node", _GRAPH_INITIALIZER: "tensor", _GRAPH_SPARSE: "sparse"},
    "node": {_NODE_ATTRIBUTE: "attribute"},
    "function": {_FUNCTION_NODE: "node", _FUNCTION_ATTRIBUTE: "attribute"},
    "attribute": {
        _ATTR_TENSOR: "tensor",
        _ATTR_GRAPH: "graph",
        _ATTR_TENSORS: "tensor",
        _ATTR_GRAPHS: "graph",
        _ATTR_SPARSE: "sparse",
        _ATTR_SPARSES: "sparse",
    },
    "sparse": {_SPARSE_VALUES: "tensor", _SPARSE_INDICES: "tensor"},
    "tensor": {},
}


def _walk(data: bytes | memoryview, kind: str, depth: int) -> None:
    if depth > _MAX_PROTO_DEPTH:
        raise _MalformedError
    view = memoryview(data)
    children = _CHILDREN[kind]
    pos, end = 0, len(view)
    while pos < end:
        tag, pos = _varint(view, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(view, pos)
            if kind == "tensor" and number == _TENSOR_DATA_LOCATION and value == 1:
                raise _ExternalDataError  # TensorProto.DataLocation.EXTERNAL
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(view, pos)
            if pos + length > end:
                raise _MalformedError
            if kind == "tensor" and number == _TENSOR_EXTERNAL_DATA:
                raise _ExternalDataError
            child = children.get(number)
            if child is not None:
                _walk(view[pos : pos + length], child, depth + 1)
            pos += length
        else:
            raise _MalformedError
    if pos != end:
        raise _MalformedError


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _MalformedError


def write_bundle(
    out: str | os.PathLike[str],
    manifest: Manifest,
    files: Mapping[str, str | os.PathLike[str]],
    *,
    force: bool = False,
) -> Manifest:
    """Write a bundle atomically: graph files copied into a temp directory, hashed, manifest
    written, then the directory renamed into place. Returns the manifest with hashes filled in.

    `files` maps graph keys of `manifest.graphs` to the ONNX files to copy. Without `force` an
    existing `out` is refused; with it, the old bundle is replaced only once the new one is
    complete, so a failure never leaves a half-written bundle at `out`.
    """
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out}: already exists (use --force to replace it)")
    missing = set(manifest.graphs) - set(files)
    if missing:
        raise BundleError(f"{out}: no file given for graphs {sorted(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    # mkdtemp makes the directory 0700; a bundle is read by the service's own user on the robot.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        graphs = {}
        for key, spec in manifest.graphs.items():
            target = tmp / spec.file
            if not target.exists():
                shutil.copyfile(files[key], target)
            graphs[key] = dataclasses.replace(
                spec, sha256=sha256_file(target), size_bytes=target.stat().st_size
            )
        final = dataclasses.replace(manifest, graphs=graphs)
        # Round-trip through our own reader: a manifest we cannot load must never be written.
        Manifest.from_dict(json.loads(json.dumps(final.to_dict())), str(out / MANIFEST_NAME))
        manifest_tmp = tmp / MANIFEST_NAME
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(final.to_dict(), f, indent=2, sort_keys=False)
            f.write("\n")
        for child in tmp.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        fsync_dir(out.parent)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
