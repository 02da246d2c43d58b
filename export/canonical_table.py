"""The canonical-embedding table (bundle schema 6): the robot's second text-encoder pass, done once.

A robot that draws what it understood (`edge_runtime.canonical`) feeds the generator the
embedding of a canonical caption: one of K = Π n_a captions (864 for the rescue scenes), the
same few for every operator. Encoding it per request cost a second text-encoder pass — a new
caption's first image went from 3.49 to 5.65 ms on one Zen 3 core (docs/QUALITY.md § 3.18). So
export embeds every canonical caption with each variant's own text encoder, each caption alone
and padded as the robot pads it (`edge_runtime.engine.run_text_encoder`), and ships the rows as a
Gather on a constant: class_index int64 (B,) → text_embedding float32 (B, E). The engine reads
the whole table once at load; a lookup is a row copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime import bundle as b
from edge_runtime import canonical, tokenizer
from edge_runtime.engine import run_text_encoder
from export import onnx_export as ox


def embeddings(session: Any, model: b.ModelSpec, spec: b.ReadBackSpec) -> np.ndarray:
    """float32 (K, E): row `canonical.class_index(spec, chosen)` is the embedding of that
    combination's canonical caption through the text-encoder `session`, each caption alone."""
    rows = [
        run_text_encoder(session, model, [tokenizer.encode(canonical.render(spec, chosen))])[0]
        for chosen in canonical.combinations(spec)
    ]
    return np.stack(rows).astype(np.float32)  # (K, E)


def write_graph(table: np.ndarray, path: Path) -> None:
    """The Gather graph over `table` (K, E), checked like every exported graph."""
    weights = numpy_helper.from_array(np.ascontiguousarray(table, np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", b.CLASS_INDEX], [b.TEXT_EMBEDDING], axis=0)],
        "canonical_embeddings",
        [helper.make_tensor_value_info(b.CLASS_INDEX, TensorProto.INT64, [b.BATCH_DIM])],
        [
            helper.make_tensor_value_info(
                b.TEXT_EMBEDDING, TensorProto.FLOAT, [b.BATCH_DIM, table.shape[1]]
            )
        ],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ox.OPSET)])
    model.ir_version = ox.IR_VERSION
    model.producer_name = "rescue-t2i export"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def graph_spec(file: str, precision: str, model: b.ModelSpec) -> b.GraphSpec:
    """The manifest entry of a table graph (hash and size filled in by write_bundle)."""
    return b.GraphSpec(
        file=file,
        role=b.CANONICAL_EMBEDDINGS,
        precision=precision,
        inputs=(b.TensorSpec(b.CLASS_INDEX, "int64", (b.BATCH_DIM,)),),
        outputs=(b.TensorSpec(b.TEXT_EMBEDDING, "float32", (b.BATCH_DIM, model.embedding_dim)),),
        opset=ox.OPSET,
    )
