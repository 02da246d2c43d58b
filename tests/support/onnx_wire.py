"""Hand-encoded ONNX models (protobuf wire format) for tests that must run without `onnx`.

Only what the hostile-bundle tests need: float tensors (embedded or in an external data file),
value infos with symbolic or fixed axes, nodes with tensor or graph attributes, and a model.
Field numbers are onnx/onnx.proto3's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

FLOAT = 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def varint_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def bytes_field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(number, 2) + _varint(len(data)) + data


def tensor(
    name: str, dims: Sequence[int], values: Sequence[float] | None = None, *, external: str = ""
) -> bytes:
    """A float TensorProto: `values` as raw_data, or stored in the file `external`."""
    out = b"".join(varint_field(1, d) for d in dims) + varint_field(2, FLOAT)
    out += bytes_field(8, name)
    if external:
        out += bytes_field(13, bytes_field(1, "location") + bytes_field(2, external))
        out += varint_field(14, 1)  # DataLocation.EXTERNAL
    else:
        out += bytes_field(9, struct.pack(f"<{len(values or ())}f", *(values or ())))
    return out


def value_info(name: str, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(
        bytes_field(1, bytes_field(2, d) if isinstance(d, str) else varint_field(1, d))
        for d in dims
    )
    tensor_type = varint_field(1, FLOAT) + bytes_field(2, shape)
    return bytes_field(1, name) + bytes_field(2, bytes_field(1, tensor_type))


def node(
    op: str, inputs: Sequence[str], outputs: Sequence[str], attributes: Sequence[bytes] = ()
) -> bytes:
    out = b"".join(bytes_field(1, i) for i in inputs) + b"".join(bytes_field(2, o) for o in outputs)
    out += bytes_field(4, op)
    return out + b"".join(bytes_field(5, a) for a in attributes)


def tensor_attribute(name: str, value: bytes) -> bytes:
    return bytes_field(1, name) + bytes_field(5, value) + varint_field(20, 4)  # TENSOR


def graph_attribute(name: str, value: bytes) -> bytes:
    return bytes_field(1, name) + bytes_field(6, value) + varint_field(20, 5)  # GRAPH


def graph(
    nodes: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes] = (),
    name: str = "g",
) -> bytes:
    out = b"".join(bytes_field(1, n) for n in nodes) + bytes_field(2, name)
    out += b"".join(bytes_field(5, t) for t in initializers)
    out += b"".join(bytes_field(11, i) for i in inputs)
    return out + b"".join(bytes_field(12, o) for o in outputs)


def model(graph_bytes: bytes, opset: int = 17, ir_version: int = 8) -> bytes:
    opset_import = bytes_field(1, "") + varint_field(2, opset)
    return varint_field(1, ir_version) + bytes_field(8, opset_import) + bytes_field(7, graph_bytes)
