"""The model bundle: the contract between export (the only writer) and the robot (the only reader).

Standard library only. A bundle is a directory::

    manifest.json           this module's `Manifest`, as JSON
    text_encoder.onnx       caption ids → text embedding
    generator.onnx          noise + text embedding → image
    generator.int8.onnx     ... and any other per-precision variant the manifest names

The manifest names every graph's file, sha256, inputs and outputs; `variants` pairs a text encoder
and a generator under a precision name ("fp32", "int8") with the quality export measured against
fp32 and whether it passed export's gate. `load_bundle` refuses — with one line naming the file and
the mismatch — an unknown or newer schema, malformed JSON, a missing file, a sha256 mismatch, a
tokenizer other than ours, or (given a session factory) a graph whose inputs and outputs differ
from the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_runtime import tokenizer
from edge_runtime.atomic import fsync_dir

SCHEMA = "rescue-t2i-bundle"
SCHEMA_VERSION = 1
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

TEXT_ENCODER = "text_encoder"
GENERATOR = "generator"
ROLES = (TEXT_ENCODER, GENERATOR)
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
        name = _get(d, "name", str, where)
        dtype = _get(d, "dtype", str, where)
        if dtype not in _DTYPES:
            raise BundleError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        shape = _get(d, "shape", list, where)
        for dim in shape:
            if not isinstance(dim, int | str) or isinstance(dim, bool):
                raise BundleError(f"{where}: tensor {name!r} has a bad dimension {dim!r}")
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
        file = _get(d, "file", str, where)
        if not file or Path(file).name != file or file in (".", ".."):
            raise BundleError(f"{where}: graph file {file!r} must be a plain file name")
        role = _get(d, "role", str, where)
        if role not in ROLES:
            raise BundleError(f"{where}: graph {file} has unknown role {role!r}")
        return cls(
            file=file,
            role=role,
            precision=_get(d, "precision", str, where),
            inputs=tuple(
                TensorSpec.from_dict(t, f"{where} {file} inputs")
                for t in _get(d, "inputs", list, where)
            ),
            outputs=tuple(
                TensorSpec.from_dict(t, f"{where} {file} outputs")
                for t in _get(d, "outputs", list, where)
            ),
            sha256=_get(d, "sha256", str, where),
            size_bytes=_get(d, "size_bytes", int, where),
            opset=_get(d, "opset", int, where),
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Variant:
        return cls(
            text_encoder=_get(d, "text_encoder", str, where),
            generator=_get(d, "generator", str, where),
            gate_passed=_get(d, "gate_passed", bool, where),
            quality=_floats(_get(d, "quality", dict, where), where),
            latency_ms=_floats(_get(d, "latency_ms", dict, where), where),
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
        value_range = _get(d, "value_range", list, where)
        if len(value_range) != 2 or not all(isinstance(v, int | float) for v in value_range):
            raise BundleError(f"{where}: value_range must be two numbers, got {value_range!r}")
        spec = cls(
            noise_dim=_get(d, "noise_dim", int, where),
            embedding_dim=_get(d, "embedding_dim", int, where),
            image_size=_get(d, "image_size", int, where),
            image_channels=_get(d, "image_channels", int, where),
            value_range=(float(value_range[0]), float(value_range[1])),
            max_length=_get(d, "max_length", int, where),
            length_stride=_get(d, "length_stride", int, where),
            length_extra=_get(d, "length_extra", int, where),
        )
        if min(spec.noise_dim, spec.embedding_dim, spec.image_size, spec.image_channels) <= 0:
            raise BundleError(f"{where}: model sizes must be positive: {spec}")
        return spec


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
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "name": self.name,
            "tokenizer": dict(self.tokenizer),
            "model": self.model.to_dict(),
            "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
            "quantization": dict(self.quantization),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Manifest:
        if not isinstance(d, Mapping):
            raise BundleError(f"{where}: expected a JSON object, got {type(d).__name__}")
        schema = d.get("schema")
        if schema != SCHEMA:
            raise BundleError(f"{where}: unknown schema {schema!r} (expected {SCHEMA!r})")
        version = _get(d, "schema_version", int, where)
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version} is newer than this runtime reads "
                f"({SCHEMA_VERSION}); update rescue-t2i on the robot"
            )
        if version < 1:
            raise BundleError(f"{where}: unknown schema_version {version}")
        tok = _get(d, "tokenizer", dict, where)
        try:
            tokenizer.check_spec(tok, where)
        except ValueError as err:
            raise BundleError(str(err)) from None
        graphs = {
            k: GraphSpec.from_dict(g, f"{where} graphs.{k}")
            for k, g in _get(d, "graphs", dict, where).items()
        }
        variants = {
            k: Variant.from_dict(v, f"{where} variants.{k}")
            for k, v in _get(d, "variants", dict, where).items()
        }
        if not variants:
            raise BundleError(f"{where}: no variants")
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
        return cls(
            name=_get(d, "name", str, where),
            model=ModelSpec.from_dict(_get(d, "model", dict, where), f"{where} model"),
            graphs=graphs,
            variants=variants,
            tokenizer=tok,
            quantization=_get(d, "quantization", dict, where),
            provenance=_get(d, "provenance", dict, where),
            schema=schema,
            schema_version=version,
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
    out = {}
    for k, v in d.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise BundleError(f"{where}: {k!r} should be a number, got {v!r}")
        out[str(k)] = float(v)
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SessionLike(Protocol):
    """What `load_bundle` needs of an inference session (onnxruntime.InferenceSession has it)."""

    def get_inputs(self) -> Sequence[Any]: ...
    def get_outputs(self) -> Sequence[Any]: ...


@dataclass
class Bundle:
    """A loaded, verified bundle: its directory, manifest and any sessions opened while loading."""

    path: Path
    manifest: Manifest
    sessions: dict[str, Any] = field(default_factory=dict)
    """Graph key → session, when `load_bundle` was given a session factory."""

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
    open_session: Callable[[Path], SessionLike] | None = None,
    *,
    graphs: Sequence[str] | None = None,
) -> Bundle:
    """Read and verify a bundle directory; raise `BundleError` naming the file and the problem.

    With `open_session` (e.g. a wrapper around `onnxruntime.InferenceSession`), each verified graph
    (or only those named in `graphs`) is opened and its inputs and outputs checked against the
    manifest; the sessions are returned in `Bundle.sessions` so they are created once.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing") from None
    except OSError as err:
        raise BundleError(f"{manifest_path}: cannot read: {err.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BundleError(f"{manifest_path}: not UTF-8 (byte offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise BundleError(
            f"{manifest_path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    manifest = Manifest.from_dict(data, str(manifest_path))
    wanted = list(manifest.graphs) if graphs is None else list(graphs)
    bundle = Bundle(path=root, manifest=manifest)
    for key in wanted:
        if key not in manifest.graphs:
            raise BundleError(f"{manifest_path}: no graph named {key!r}")
        spec = manifest.graphs[key]
        file = root / spec.file
        if not file.is_file():
            raise BundleError(f"{file}: missing (named by {MANIFEST_NAME} graphs.{key})")
        actual = sha256_file(file)
        if actual != spec.sha256:
            raise BundleError(
                f"{file}: sha256 mismatch: file has {actual[:16]}…, manifest says "
                f"{spec.sha256[:16]}… (corrupted or replaced)"
            )
        if open_session is not None:
            try:
                session = open_session(file)
            except Exception as err:  # onnxruntime raises its own exception types
                raise BundleError(f"{file}: cannot be loaded: {str(err).splitlines()[0]}") from None
            _check_io("inputs", spec.inputs, session.get_inputs(), str(file))
            _check_io("outputs", spec.outputs, session.get_outputs(), str(file))
            bundle.sessions[key] = session
    return bundle


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
