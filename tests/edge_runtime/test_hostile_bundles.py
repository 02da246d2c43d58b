"""A corpus of hostile bundles, generated from the committed tiny bundle: every manifest field
mutated, keys removed and added, JSON made huge, deep or numerically absurd, files added,
removed, swapped, truncated, symlinked, replaced by FIFOs and devices, weights moved to external
data. Each must be refused by `rescue-edge info` with one line and exit 2 — or, for the few
mutations that leave a valid bundle, be accepted *and served* (`serve --stdin`).

The bulk runs in-process (`main([...])`, under an alarm so a hang fails instead of blocking);
a representative sample runs as real child processes whose peak memory is measured.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_wire as wire
import onnxruntime as ort
import pytest
from peak_memory import run_main

from edge_runtime import bundle as b
from edge_runtime.cli import main

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_bundle"
BASE: dict[str, Any] = json.loads((TINY / b.MANIFEST_NAME).read_text())
GRAPH_FILES = sorted({g["file"] for g in BASE["graphs"].values()})
FREE_FORM = ("quantization", "provenance")
"""Sections whose content is the exporter's record, not the runtime's input: any JSON is valid
there (within the size, depth and number bounds)."""
METRICS = ("quality", "latency_ms")
"""Per-variant records: any names, but finite numbers; adding or removing one stays valid."""
CASE_TIMEOUT_S = 20
PEAK_LIMIT_MB = 300

Edit = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    edit: Edit
    """Turns a fresh copy of the tiny bundle into the hostile one."""
    valid: bool = False
    """True for the few mutations that leave a usable bundle: accepted, then served."""


# -- building blocks ---------------------------------------------------------------------------


def _write_manifest(data: Any, raw: dict[str, str] | None = None) -> Edit:
    """Write `data` as the manifest; each "@@name@@" string is replaced by raw JSON text."""

    def edit(root: Path) -> None:
        text = json.dumps(data, indent=1)
        for name, literal in (raw or {}).items():
            text = text.replace(json.dumps(f"@@{name}@@"), literal)
        (root / b.MANIFEST_NAME).write_text(text)

    return edit


def _set(path: tuple[Any, ...], value: Any, raw: str | None = None) -> Edit:
    data = copy.deepcopy(BASE)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@v@@" if raw is not None else value
    return _write_manifest(data, {"v": raw} if raw is not None else None)


def _delete(path: tuple[Any, ...]) -> Edit:
    data = copy.deepcopy(BASE)
    target = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return _write_manifest(data)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value of the manifest (containers too), except inside the free-form sections."""
    if path:
        yield path, node
    if path and path[0] in FREE_FORM:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))


def _name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


HUGE_INT = "9" * 5000
"""Python's int() refuses literals over 4300 digits with a ValueError: a traceback before."""


def _hostile_values(value: Any) -> list[tuple[str, Any, str | None]]:
    """(label, value, raw JSON literal or None) that no typed manifest field may hold."""
    wrong_types = [("null", None, None), ("list", [], None), ("object", {}, None)]
    if isinstance(value, bool):
        return [*wrong_types, ("int", 1, None), ("string", "true", None)]
    if isinstance(value, int):
        return [
            *wrong_types, ("negative", -5, None), ("huge", 10**12, None), ("float", 0.5, None),
            ("string", "7", None), ("bool", True, None), ("5000-digits", None, HUGE_INT),
        ]  # fmt: skip
    if isinstance(value, float):
        return [
            *wrong_types, ("nan", None, "NaN"), ("infinity", None, "-Infinity"),
            ("overflow", None, "1e999"), ("string", "1.0", None), ("bool", True, None),
        ]  # fmt: skip
    if isinstance(value, str):
        return [
            *wrong_types, ("int", 5, None), ("long", "x" * 300, None),
            ("newline", "a\nExecStartPre=+/bin/sh", None), ("path", "../../etc/passwd", None),
        ]  # fmt: skip
    if isinstance(value, list):
        return [("null", None, None), ("object", {}, None), ("string", "x", None),
                ("too-long", [1] * 10, None)]  # fmt: skip
    return [("null", None, None), ("list", [], None), ("string", "x", None)]


# -- the corpus --------------------------------------------------------------------------------


def _field_cases() -> list[Case]:
    cases = []
    for path, value in _leaves(BASE):
        if path[0] in FREE_FORM and len(path) > 1:
            continue
        for label, hostile, raw in _hostile_values(value):
            if path[0] in FREE_FORM and label in ("null", "list", "string"):
                pass  # the section itself must stay an object
            elif path[0] in FREE_FORM:
                continue
            label_only = path == ("name",) and label == "path"  # a name is only a label
            cases.append(
                Case(f"field:{_name(path)}={label}", _set(path, hostile, raw), valid=label_only)
            )
        if isinstance(path[-1], str) and path[-1] in _parent(path):
            # A variant removed leaves its graphs hashed and unused: still a valid bundle.
            whole_variant = len(path) == 2 and path[0] == "variants"
            metric = len(path) == 4 and path[2] in METRICS
            optional = path == ("readback", "known_words")  # a bundle may carry no vocabulary
            cases.append(
                Case(
                    f"delete:{_name(path)}",
                    _delete(path),
                    valid=whole_variant or metric or optional,
                )
            )
    for path, value in [((), BASE), *_leaves(BASE)]:
        if isinstance(value, dict) and not (path and path[0] in FREE_FORM):
            metric = bool(path) and path[-1] in METRICS
            cases.append(
                Case(f"unknown-key:{_name(path) or 'root'}", _set((*path, "x"), 1), valid=metric)
            )
    return cases


def _parent(path: tuple[Any, ...]) -> Any:
    node: Any = BASE
    for key in path[:-1]:
        node = node[key]
    return node


def _why_cases() -> list[Case]:
    """The attacks the hostile-files review found, by name, plus cross-field inconsistencies."""
    model = ("model",)
    cases = [
        Case("why:embedding_dim-wrong", _set((*model, "embedding_dim"), 33)),
        Case("why:noise_dim-1e12", _set((*model, "noise_dim"), 10**12)),
        Case("why:noise_dim-float-1e12", _set((*model, "noise_dim"), 1e12)),
        Case("why:noise_dim-other", _set((*model, "noise_dim"), 64)),
        Case("why:image_size-other", _set((*model, "image_size"), 32)),
        Case("why:image_channels-1", _set((*model, "image_channels"), 1)),
        Case("why:image_channels-2", _set((*model, "image_channels"), 2)),
        Case("why:max_length-negative", _set((*model, "max_length"), -5)),
        Case("why:max_length-1e12", _set((*model, "max_length"), 10**12)),
        Case("why:max_length-202", _set((*model, "max_length"), 202)),
        Case("why:length_stride-over-max", _set((*model, "length_stride"), 500)),
        Case("why:value_range-equal", _set((*model, "value_range"), [1, 1])),
        Case("why:value_range-reversed", _set((*model, "value_range"), [1, -1])),
        Case("why:value_range-nan", _set((*model, "value_range"), None, "[NaN, 1]")),
        Case("why:value_range-huge", _set((*model, "value_range"), [-1e300, 1e300])),
        Case("why:value_range-three", _set((*model, "value_range"), [-1, 0, 1])),
        Case("why:deep-nesting", _write_manifest({"a": "@@v@@"}, {"v": "[" * 100_000})),
        Case(
            "why:deep-nesting-in-provenance",
            _set(("provenance", "x"), None, "[" * 40 + "]" * 40),
        ),
        Case("why:5000-digit-int", _set((*model, "noise_dim"), None, HUGE_INT)),
        Case("why:5000-digit-in-provenance", _set(("provenance", "x"), None, HUGE_INT)),
        Case("why:long-float", _set(("provenance", "x"), None, "0." + "1" * 5000)),
        Case("why:nan-in-provenance", _set(("provenance", "x"), None, "NaN")),
        Case("why:huge-manifest", _set(("provenance", "x"), "p" * (2 << 20))),
        Case("why:duplicate-key", _duplicate_key),
        Case("why:quadratic-regex-bait", _set(("provenance", "x"), None, '"' + '\\"' * 200_000)),
        Case("graph:shared-file-two-hashes", _share_file_with_another_hash),
        Case("graph:int8-generator-text-input-missing", _drop_input("generator.int8", 1)),
        Case("graph:text-encoder-time-fixed-with-stride", _fixed_time_axis),
        Case("graph:image-dtype-int8", _tensor_edit("generator.fp32", "outputs", 0, dtype="int8")),
        Case("graph:batch-fixed", _tensor_edit("generator.fp32", "inputs", 0, shape=[1, 100])),
        Case("graph:extra-input", _extra_input),
        Case("graph:no-variants", _set(("variants",), {})),
        Case("graph:total-size-over-limit", _all_sizes(b.MAX_GRAPH_BYTES)),
        Case("graph:role-swapped", _set(("graphs", "generator.fp32", "role"), "text_encoder")),
        Case("graph:file-is-manifest", _set(("graphs", "generator.fp32", "file"), "manifest.json")),
        Case("graph:hash-upper-case", _upper_hash),
        Case("manifest:empty", lambda r: (r / b.MANIFEST_NAME).write_bytes(b"")),
        Case("manifest:null", lambda r: (r / b.MANIFEST_NAME).write_text("null")),
        Case("manifest:list", lambda r: (r / b.MANIFEST_NAME).write_text("[]")),
        Case("manifest:number", lambda r: (r / b.MANIFEST_NAME).write_text("1")),
        Case("manifest:latin-1", _reencode("latin-1", "é")),
        Case("manifest:utf-16", _reencode("utf-16", "")),
        Case("manifest:bom", lambda r: _prefix(r, b"\xef\xbb\xbf")),
        Case("manifest:nul-bytes", lambda r: _prefix(r, b"\0" * 16)),
    ]
    size = len((TINY / b.MANIFEST_NAME).read_bytes())
    for cut in (1, 10, 100, size // 4, size // 2, size - 2):
        cases.append(Case(f"manifest:truncated-{cut}", _truncate(b.MANIFEST_NAME, cut)))
    return cases


def _file_cases() -> list[Case]:
    cases = [
        Case("files:unlisted-text", lambda r: (r / "notes.txt").write_text("hi")),
        Case("files:unlisted-dotfile", lambda r: (r / ".DS_Store").write_bytes(b"\0")),
        Case("files:unlisted-onnx", lambda r: shutil.copy(r / "generator.onnx", r / "g2.onnx")),
        Case("files:unlisted-dir", lambda r: (r / "sub").mkdir()),
        Case("files:unlisted-symlink", lambda r: (r / "link").symlink_to("/etc/passwd")),
        Case("files:manifest-symlink", _replace_with_symlink(b.MANIFEST_NAME)),
        Case("files:manifest-fifo", _replace_with_fifo(b.MANIFEST_NAME)),
        Case("files:manifest-dir", _replace_with_dir(b.MANIFEST_NAME)),
        Case("files:manifest-to-dev-zero", _replace_with_link_to(b.MANIFEST_NAME, "/dev/zero")),
        Case("files:manifest-missing", lambda r: (r / b.MANIFEST_NAME).unlink()),
        Case("files:swap-generators", _swap("generator.onnx", "generator.int8.onnx")),
        Case("files:swap-text-and-generator", _swap("text_encoder.onnx", "generator.onnx")),
        Case("files:swap-with-rehash", _swap_and_rehash),
        Case("files:external-data-inside", _external_data(inside=True)),
        Case("files:external-data-outside", _external_data(inside=False)),
        Case("files:external-data-absolute", _external_data(inside=False, absolute=True)),
        Case("files:not-onnx-rehashed", _replace_graph_rehashed(b"not onnx at all")),
        Case("files:empty-graph-rehashed", _replace_graph_rehashed(b"")),
        Case("files:oversized-sparse-graph", _sparse_graph(b.MAX_GRAPH_BYTES + 1)),
        Case("files:sparse-graph-size-claimed", _sparse_graph(b.MAX_GRAPH_BYTES, claim=True)),
        Case("files:bundle-is-a-file", _bundle_is_file),
    ]
    for file in GRAPH_FILES:
        cases += [
            Case(f"files:{file}-missing", lambda r, f=file: (r / f).unlink()),
            Case(f"files:{file}-empty", _truncate(file, 0)),
            Case(f"files:{file}-truncated-half", _truncate(file, None)),
            Case(f"files:{file}-one-bit-flipped", _flip_bit(file)),
            Case(f"files:{file}-appended", _append(file)),
            Case(f"files:{file}-symlink", _replace_with_symlink(file)),
            Case(f"files:{file}-fifo", _replace_with_fifo(file)),
            Case(f"files:{file}-dir", _replace_with_dir(file)),
            Case(f"files:{file}-to-dev-zero", _replace_with_link_to(file, "/dev/zero")),
            Case(f"files:{file}-to-dev-null", _replace_with_link_to(file, "/dev/null")),
        ]
    return cases


def _valid_cases() -> list[Case]:
    """Mutations that keep the bundle valid: accepted, so they must also be served."""
    return [
        Case("valid:renamed", _set(("name",), "robot bundle 2 (field test)"), valid=True),
        Case("valid:int8-gate-failed", _set(("variants", "int8", "gate_passed"), False), True),
        Case("valid:provenance-free-form", _set(("provenance", "note"), [1, {"a": None}]), True),
        Case("valid:quantization-empty", _set(("quantization",), {}), True),
        Case("valid:no-latency", _set(("variants", "fp32", "latency_ms"), {}), True),
        Case("valid:quality-negative", _set(("variants", "int8", "quality", "ssim"), -0.5), True),
        Case("valid:value_range-0-1", _set(("model", "value_range"), [0, 1]), True),
        Case("valid:max_length-64", _set(("model", "max_length"), 64), True),
        Case("valid:no-int8-variant", _drop_variant("int8"), True),
        Case("valid:opset-unknown", _set(("graphs", "generator.int8", "opset"), 0), True),
        Case("valid:no-readback", _without_readback, True),
        Case("valid:readback-threshold-0.9", _set(("readback", "off_domain_threshold"), 0.9), True),
    ]


def _readback_cases() -> list[Case]:
    """The read-back's own fields and cross-checks (docs/ARCHITECTURE.md § Bundle)."""
    rb = ("readback",)
    colour = (*rb, "attributes", 0)
    fp32_rb = ("variants", "fp32", "readback")
    graph = "readback.fp32"
    wrong = ["batch", 30]
    return [
        Case("readback:schema-version-1", _set(("schema_version",), 1)),
        Case("readback:value-dropped", _edited(lambda d: _values(d, 0).pop())),
        Case("readback:value-added", _edited(lambda d: _values(d, 1).append("lava"))),
        Case("readback:attribute-dropped", _edited(lambda d: d["readback"]["attributes"].pop())),
        Case("readback:value-repeated", _set((*colour, "values", 1), "red")),
        Case("readback:attribute-repeated", _set((*rb, "attributes", 1, "name"), "colour")),
        Case("readback:name-with-colon", _set((*colour, "name"), "col:our")),
        Case("readback:name-with-comma", _set((*colour, "values", 0), "red,blue")),
        Case("readback:name-upper-case", _set((*colour, "values", 0), "Red")),
        Case("readback:name-question-mark", _set((*colour, "values", 0), "?")),
        Case("readback:name-25-chars", _set((*colour, "name"), "c" * 25)),
        Case("readback:name-escape", _set((*colour, "values", 0), "red\u001b[2J")),
        Case("readback:one-value", _set((*colour, "values"), ["red"])),
        Case("readback:33-values", _set((*colour, "values"), [f"v{i}" for i in range(33)])),
        Case("readback:17-attributes", _set((*rb, "attributes"), SEVENTEEN)),
        Case("readback:no-attributes", _set((*rb, "attributes"), [])),
        Case("readback:threshold-0", _set((*rb, "off_domain_threshold"), 0.0)),
        Case("readback:threshold-1", _set((*rb, "off_domain_threshold"), 1.0)),
        Case("readback:threshold-int", _set((*rb, "off_domain_threshold"), 1)),
        Case("readback:threshold-negative", _set((*rb, "off_domain_threshold"), -0.5)),
        Case("readback:variant-without", _edited(lambda d: d["variants"]["int8"].pop(b.READBACK))),
        Case("readback:variant-names-generator", _set(fp32_rb, "generator.fp32")),
        Case("readback:variant-names-unknown", _set(fp32_rb, "readback.fp16")),
        Case("readback:graph-without-spec", _edited(_drop_readback_spec)),
        Case("readback:graph-embedding-33", _tensor_edit(graph, "inputs", 0, shape=["batch", 33])),
        Case("readback:graph-probs-width-wrong", _tensor_edit(graph, "outputs", 0, shape=wrong)),
        Case("readback:graph-off-domain-rank-2", _tensor_edit(graph, "outputs", 1, shape=wrong)),
        Case("readback:graph-probs-int8", _tensor_edit(graph, "outputs", 0, dtype="int8")),
        Case("readback:graph-output-missing", _edited(_drop_off_domain_output)),
        Case("readback:graph-outputs-swapped", _edited(_swap_readback_outputs)),
        Case("readback:graph-is-generator-file", _set(("graphs", graph, "file"), "generator.onnx")),
        Case("readback:role-generator", _set(("graphs", graph, "role"), "generator")),
    ]  # fmt: skip


SEVENTEEN = [{"name": f"a{i}", "values": ["x", "y"]} for i in range(17)]


def _values(d: dict[str, Any], index: int) -> list[str]:
    return d["readback"]["attributes"][index]["values"]


def _drop_off_domain_output(d: dict[str, Any]) -> None:
    d["graphs"]["readback.fp32"]["outputs"].pop()


def _drop_readback_spec(d: dict[str, Any]) -> None:
    del d["readback"]
    for variant in d["variants"].values():
        variant.pop("readback")


def _swap_readback_outputs(d: dict[str, Any]) -> None:
    outputs = d["graphs"]["readback.fp32"]["outputs"]
    outputs[0]["name"], outputs[1]["name"] = outputs[1]["name"], outputs[0]["name"]


def _without_readback(root: Path) -> None:
    """A bundle as an old checkpoint exports it: no read-back anywhere, schema version 1."""

    def change(d: dict[str, Any]) -> None:
        _drop_readback_spec(d)
        for key in [k for k, g in d["graphs"].items() if g["role"] == b.READBACK]:
            del d["graphs"][key]
        d["schema_version"] = 1

    _edited(change)(root)
    for file in {g["file"] for g in BASE["graphs"].values() if g["role"] == b.READBACK}:
        (root / file).unlink()


def corpus() -> list[Case]:
    return _field_cases() + _why_cases() + _readback_cases() + _file_cases() + _valid_cases()


# -- edits that need more than one field ------------------------------------------------------


def _edited(change: Callable[[dict[str, Any]], None]) -> Edit:
    data = copy.deepcopy(BASE)
    change(data)
    return _write_manifest(data)


def _duplicate_key(root: Path) -> None:
    text = json.dumps(BASE, indent=1).replace(
        '"noise_dim": 100', '"noise_dim": 100, "noise_dim": 7'
    )
    (root / b.MANIFEST_NAME).write_text(text)


def _share_file_with_another_hash(root: Path) -> None:
    _edited(lambda d: d["graphs"]["generator.int8"].update(file="generator.onnx"))(root)
    (root / "generator.int8.onnx").unlink()


def _drop_input(key: str, index: int) -> Edit:
    return _edited(lambda d: d["graphs"][key]["inputs"].pop(index))


def _fixed_time_axis(root: Path) -> None:
    _edited(lambda d: d["graphs"]["text_encoder.fp32"]["inputs"][0].update(shape=["batch", 201]))(
        root
    )


def _tensor_edit(key: str, side: str, index: int, **change: Any) -> Edit:
    return _edited(lambda d: d["graphs"][key][side][index].update(change))


def _all_sizes(size: int) -> Edit:
    def change(d: dict[str, Any]) -> None:
        for graph in d["graphs"].values():
            graph["size_bytes"] = size

    return _edited(change)


def _extra_input(root: Path) -> None:
    extra = {"name": "temperature", "dtype": "float32", "shape": ["batch", 1]}
    _edited(lambda d: d["graphs"]["generator.fp32"]["inputs"].append(extra))(root)


def _upper_hash(root: Path) -> None:
    _edited(lambda d: d["graphs"]["generator.fp32"].update(
        sha256=d["graphs"]["generator.fp32"]["sha256"].upper()))(root)  # fmt: skip


def _drop_variant(name: str) -> Edit:
    def edit(root: Path) -> None:
        def change(d: dict[str, Any]) -> None:
            key = d["variants"].pop(name)["generator"]
            del d["graphs"][key]

        _edited(change)(root)
        (root / BASE["graphs"]["generator.int8"]["file"]).unlink()

    return edit


def _reencode(encoding: str, extra: str) -> Edit:
    def edit(root: Path) -> None:
        data = copy.deepcopy(BASE)
        data["name"] = "tiny" + extra
        (root / b.MANIFEST_NAME).write_bytes(json.dumps(data, ensure_ascii=False).encode(encoding))

    return edit


def _prefix(root: Path, prefix: bytes) -> None:
    path = root / b.MANIFEST_NAME
    path.write_bytes(prefix + path.read_bytes())


def _truncate(file: str, size: int | None) -> Edit:
    def edit(root: Path) -> None:
        path = root / file
        data = path.read_bytes()
        path.unlink()  # a fresh inode: the copy may be a hard link to the fixture
        path.write_bytes(data[: len(data) // 2 if size is None else size])

    return edit


def _flip_bit(file: str) -> Edit:
    def edit(root: Path) -> None:
        path = root / file
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.unlink()
        path.write_bytes(bytes(data))

    return edit


def _append(file: str) -> Edit:
    def edit(root: Path) -> None:
        path = root / file
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data + b"\0")

    return edit


def _replace_with_symlink(file: str) -> Edit:
    def edit(root: Path) -> None:
        target = root.parent / f"{root.name}-{file}.real"
        shutil.copyfile(root / file, target)
        (root / file).unlink()
        (root / file).symlink_to(target)

    return edit


def _replace_with_link_to(file: str, target: str) -> Edit:
    def edit(root: Path) -> None:
        (root / file).unlink()
        (root / file).symlink_to(target)

    return edit


def _replace_with_fifo(file: str) -> Edit:
    def edit(root: Path) -> None:
        (root / file).unlink()
        os.mkfifo(root / file)

    return edit


def _replace_with_dir(file: str) -> Edit:
    def edit(root: Path) -> None:
        (root / file).unlink()
        (root / file).mkdir()

    return edit


def _swap(first: str, second: str) -> Edit:
    def edit(root: Path) -> None:
        a, c = (root / first).read_bytes(), (root / second).read_bytes()
        for path, data in ((root / first, c), (root / second, a)):
            path.unlink()
            path.write_bytes(data)

    return edit


def _rehash(root: Path, key: str, data: bytes) -> None:
    import hashlib

    manifest = json.loads((root / b.MANIFEST_NAME).read_text())
    graph = manifest["graphs"][key]
    (root / graph["file"]).unlink()
    (root / graph["file"]).write_bytes(data)
    graph.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=max(len(data), 1))
    (root / b.MANIFEST_NAME).write_text(json.dumps(manifest))


def _swap_and_rehash(root: Path) -> None:
    # The attacker updates the hashes too: the text encoder's file where a generator belongs.
    _rehash(root, "generator.fp32", (root / "text_encoder.onnx").read_bytes())


def _replace_graph_rehashed(data: bytes) -> Edit:
    return lambda root: _rehash(root, "generator.fp32", data)


def external_generator(location: str) -> bytes:
    """A generator graph honouring the tiny manifest's contract whose weight lives in the file
    `location`: image = reshape(noise @ W, (-1, 3, 64, 64)); text_embedding is unused."""
    shape = wire.tensor("shape", [4], [-1, 3, 64, 64])
    nodes = [
        wire.node("MatMul", [b.NOISE, "w"], ["flat"]),
        wire.node("Cast", ["shape"], ["shape64"], [wire.varint_field(1, 0)]),
        wire.node("Reshape", ["flat", "shape64"], [b.IMAGE]),
    ]
    # Cast's "to" attribute: name "to", i = 7 (INT64), type INT (2).
    nodes[1] = wire.node(
        "Cast",
        ["shape"],
        ["shape64"],
        [wire.bytes_field(1, "to") + wire.varint_field(3, 7) + wire.varint_field(20, 2)],
    )
    graph = wire.graph(
        nodes,
        [
            wire.value_info(b.NOISE, ["batch", 100]),
            wire.value_info(b.TEXT_EMBEDDING, ["batch", 32]),
        ],
        [wire.value_info(b.IMAGE, ["batch", 3, 64, 64])],
        [wire.tensor("w", [100, 3 * 64 * 64], external=location), shape],
    )
    return wire.model(graph)


def _external_data(*, inside: bool, absolute: bool = False) -> Edit:
    def edit(root: Path) -> None:
        weights = np.zeros((100, 3 * 64 * 64), np.float32).tobytes()
        if inside:
            location = "w.bin"
            (root / location).write_bytes(weights)
        else:
            outside = root.parent / f"{root.name}.w.bin"
            outside.write_bytes(weights)
            location = str(outside) if absolute else os.path.relpath(outside, root)
        _rehash(root, "generator.fp32", external_generator(location))

    return edit


def _sparse_graph(size: int, claim: bool = False) -> Edit:
    def edit(root: Path) -> None:
        path = root / "generator.onnx"
        path.unlink()
        with open(path, "wb") as f:
            f.truncate(size)  # a sparse file: no disk used, but `size` bytes to a reader
        if claim:
            _edited(lambda d: d["graphs"]["generator.fp32"].update(size_bytes=size))(root)

    return edit


def _bundle_is_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("{}")


# -- running -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def make_bundle(case: Case, tmp_root: Path) -> Path:
    root = tmp_root / case.id.replace("/", "_").replace(":", "_")[:150]
    root.mkdir()
    shutil.copyfile(TINY / b.MANIFEST_NAME, root / b.MANIFEST_NAME)
    for file in GRAPH_FILES:
        try:  # hard links: fast; every graph edit above unlinks before it writes
            os.link(TINY / file, root / file)
        except OSError:
            shutil.copyfile(TINY / file, root / file)
    case.edit(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def _fixture_left_intact() -> Iterator[None]:
    yield
    b.load_bundle(TINY)  # every hash still matches: no case wrote through a hard link


class _HangError(Exception):
    """Raised by SIGALRM in a case that took too long."""


def _alarm(_signum: int, _frame: object) -> None:
    raise _HangError


def run_info(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        status = main(["info", str(root)])
    except _HangError:
        pytest.fail(f"rescue-edge info {root} did not finish in {CASE_TIMEOUT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


CORPUS = {case.id: case for case in corpus()}
CORPUS_IDS = list(CORPUS)


def test_corpus_is_large_and_covers_every_kind() -> None:
    kinds = {case_id.split(":")[0] for case_id in CORPUS_IDS}
    hostile = [case for case in CORPUS.values() if not case.valid]
    print(f"hostile bundles: {len(hostile)}, valid mutations: {len(CORPUS) - len(hostile)}")
    assert len(hostile) >= 200
    assert len(CORPUS) == len(corpus())  # ids are unique
    assert {"field", "delete", "unknown-key", "why", "graph", "manifest", "files"} <= kinds
    assert "readback" in kinds


READBACK_NAMES = {
    "readback:schema-version-1": "field 'readback' needs schema_version 2",
    "readback:value-dropped": "tensor 'attribute_probs' has shape ['batch', 27], the model's "
    "sizes need ['batch', 26]",
    "readback:value-repeated": "attributes[0]: field 'values' repeats a value",
    "readback:attribute-repeated": "field 'attributes' repeats a name",
    "readback:name-with-colon": "attributes[0]: field 'name' holds 'col:our', not a label",
    "readback:name-question-mark": "attributes[0]: field 'values' holds '?', not a label",
    "readback:threshold-1": "field 'off_domain_threshold' must be strictly between 0 and 1",
    "readback:variant-without": "variant int8 has no 'readback' graph",
    "readback:variant-names-generator": "variant fp32 uses 'generator.fp32' (a generator)",
    "readback:graph-without-spec": "is a readback but the manifest has no 'readback' field",
    "readback:graph-embedding-33": "tensor 'text_embedding' has shape ['batch', 33]",
    "readback:graph-output-missing": "a readback must have the output 'off_domain'",
}
"""Each read-back refusal names the field or the mismatch (a sample: the whole corpus is checked
for one line and exit 2 above)."""


@pytest.mark.parametrize("case_id", sorted(READBACK_NAMES))
def test_readback_refusals_name_the_field(
    case_id: str, tmp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_root / "named").mkdir(exist_ok=True)
    status, _, err = run_info(make_bundle(CORPUS[case_id], tmp_root / "named"), capsys)
    assert status == 2
    assert READBACK_NAMES[case_id] in err, err


@pytest.mark.parametrize("case_id", CORPUS_IDS)
def test_hostile_bundle_is_refused_in_one_line_or_served(
    case_id: str, tmp_root: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    case = CORPUS[case_id]
    root = make_bundle(case, tmp_root)
    status, out, err = run_info(root, capsys)
    assert "Traceback" not in err
    if not case.valid:
        assert status == 2, f"{case_id}: accepted (exit {status}); stderr {err!r}"
        assert err.startswith("rescue-edge: ") and err.count("\n") == 1, err
        assert out == ""
        return
    assert status == 0, err
    assert json.loads(out)["inference_check"] == dict.fromkeys(json.loads(out)["variants"], "ok")
    # Whatever `info` accepts, `serve` serves.
    stdin = io.StringIO("survivor in an orange jacket lying on rubble, left side\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", stdin)
        argv = ["serve", "--stdin", "--bundle", str(root), "--out", str(tmp_path), "--no-fsync"]
        assert main(argv) == 0, capsys.readouterr().err
    (line,) = capsys.readouterr().out.splitlines()
    assert Path(line).is_file() and Path(line).stat().st_size > 0


SAMPLE = [
    "why:deep-nesting", "why:5000-digit-int", "why:huge-manifest", "why:quadratic-regex-bait",
    "why:value_range-nan", "why:embedding_dim-wrong", "files:external-data-outside",
    "files:generator.onnx-fifo", "files:manifest-to-dev-zero",
    "files:text_encoder.onnx-to-dev-zero", "files:oversized-sparse-graph",
    "files:sparse-graph-size-claimed", "files:swap-with-rehash", "files:unlisted-text",
    "valid:int8-gate-failed",
]  # fmt: skip


def test_hostile_bundle_sample_in_child_processes_stays_small(tmp_root: Path) -> None:
    """The real command line, one process per bundle: one line, no hang, peak memory bounded."""
    peaks = {}
    (tmp_root / "sample").mkdir()
    for case_id in SAMPLE:
        root = make_bundle(CORPUS[case_id], tmp_root / "sample")
        run = run_main("edge_runtime.cli", ["info", str(root)], timeout=60)
        peaks[case_id] = run.peak_mb
        if CORPUS[case_id].valid:
            assert run.returncode == 0, run.stderr_lines
            served = run_main(
                "edge_runtime.cli",
                ["serve", "--stdin", "--bundle", str(root), "--out", str(root.parent / "img")],
                input="person in red\n",
            )
            assert served.returncode == 0 and Path(served.stdout.strip()).is_file(), served
        else:
            assert run.returncode == 2 and len(run.stderr_lines) == 1, run.stderr_lines
            assert run.stderr_lines[0].startswith("rescue-edge: ")
    print("peak MB per case:", {k: round(v) for k, v in peaks.items()})
    assert all(math.isfinite(p) and p <= PEAK_LIMIT_MB for p in peaks.values()), peaks


def test_external_data_attack_is_real_and_refused(tmp_path: Path) -> None:
    """What the check prevents: onnxruntime loads the weights from the outside file, so changing
    that file changes the images while the hashed graph stays the same."""
    (tmp_path / "w.bin").write_bytes(np.ones((100, 3 * 64 * 64), np.float32).tobytes())
    model = external_generator("w.bin")
    (tmp_path / "g.onnx").write_bytes(model)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    feeds = {b.NOISE: np.ones((1, 100), np.float32), b.TEXT_EMBEDDING: np.ones((1, 32), np.float32)}
    assert session.run(None, feeds)[0].max() == 100.0  # the outside file's weights were used
    with pytest.raises(b.BundleError, match="refers to an external data file"):
        b.check_embedded_weights(model, "g.onnx")


@pytest.mark.parametrize(
    "place",
    ["initializer", "constant-attribute", "if-subgraph", "sparse-initializer"],
)
def test_external_data_is_found_wherever_a_tensor_can_be(place: str) -> None:
    outside = wire.tensor("w", [2, 2], external="../w.bin")
    inside = wire.tensor("w", [2, 2], [1, 2, 3, 4])
    x, y = wire.value_info("x", ["b", 2]), wire.value_info("y", ["b", 2])

    def model_with(t: bytes) -> bytes:
        if place == "initializer":
            return wire.model(wire.graph([wire.node("MatMul", ["x", "w"], ["y"])], [x], [y], [t]))
        constant = wire.node("Constant", [], ["w"], [wire.tensor_attribute("value", t)])
        if place == "constant-attribute":
            nodes = [constant, wire.node("MatMul", ["x", "w"], ["y"])]
            return wire.model(wire.graph(nodes, [x], [y]))
        if place == "if-subgraph":
            branch = wire.graph([constant], [], [wire.value_info("w", [2, 2])], name="then")
            attrs = [wire.graph_attribute("then_branch", branch)]
            return wire.model(wire.graph([wire.node("If", ["c"], ["w"], attrs)], [x], [y]))
        sparse = wire.bytes_field(1, t) + wire.bytes_field(2, wire.tensor("i", [1], [0]))
        return wire.model(wire.graph([], [x], [y]) + wire.bytes_field(15, sparse))

    b.check_embedded_weights(model_with(inside), "m.onnx")  # embedded: fine
    with pytest.raises(b.BundleError, match="external data"):
        b.check_embedded_weights(model_with(outside), "m.onnx")


def test_embedded_weight_check_is_not_fooled_by_garbage() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 100, 5000):
        b.check_embedded_weights(rng.bytes(size), "junk.onnx")  # garbage is left to onnxruntime
    b.check_embedded_weights(struct.pack("<B", 0x80) * 20, "varint.onnx")  # endless varint
    for file in GRAPH_FILES:
        b.check_embedded_weights((TINY / file).read_bytes(), file)  # real graphs pass
