"""The SHA-256 an ONNX export carries (model property ``spikingjelly_ff.sha256``), as the
spike artefact carries its own: protobuf checks no sum, so a weight changed on disk would
load and serve.

The sum covers what decides a result: the ``spikingjelly_ff`` settings (their JSON text),
the IR and opset versions, the graph's inputs and outputs (names, types, dims), every
initializer (name, element type, dims, values) and every node (operator, domain, inputs,
outputs, attributes), each taken as content rather than as protobuf bytes, whose encoding is
protobuf's to change. Other model properties (a producer's notes) are not covered. A file
without the property (written before it) loads unchecked.
"""

from __future__ import annotations

import hashlib

import numpy as np

from spikingjelly_ff.runtime.onnx_meta import META_KEY

__all__ = ["DIGEST_KEY", "onnx_digest", "stamp_digest", "verify_digest"]

DIGEST_KEY = f"{META_KEY}.sha256"


def _bytes(text) -> bytes:
    # protobuf hands a string field back as bytes where damage left it invalid UTF-8
    return text if isinstance(text, bytes) else str(text).encode()


def _tensor(h, t) -> None:
    from onnx import numpy_helper

    a = np.ascontiguousarray(numpy_helper.to_array(t))
    h.update(repr((_bytes(t.name), int(t.data_type), list(a.shape), a.dtype.str)).encode())
    h.update(a.tobytes())


def _value_info(v) -> tuple:
    dims = [(d.dim_value, _bytes(d.dim_param)) for d in v.type.tensor_type.shape.dim]
    return _bytes(v.name), int(v.type.tensor_type.elem_type), dims


def _graph(h, graph) -> None:
    """Feed ``graph``'s inputs, outputs, initializers and nodes to ``h``; subgraphs (a Scan's
    body) the same way, so that no part is taken as protobuf's text or bytes."""
    from onnx import AttributeProto, helper

    ends = [[_value_info(v) for v in graph.input], [_value_info(v) for v in graph.output]]
    h.update(repr(ends).encode())
    for t in sorted(graph.initializer, key=lambda t: _bytes(t.name)):
        _tensor(h, t)
    for node in graph.node:
        parts = (node.op_type, node.domain, list(node.input), list(node.output))
        h.update(repr(tuple(_bytes(p) if not isinstance(p, list) else [_bytes(v) for v in p] for p in parts)).encode())
        for attr in sorted(node.attribute, key=lambda a: _bytes(a.name)):
            h.update(repr((_bytes(attr.name), int(attr.type))).encode())
            if attr.type == AttributeProto.TENSOR:
                _tensor(h, attr.t)
            elif attr.type == AttributeProto.TENSORS:
                for t in attr.tensors:
                    _tensor(h, t)
            elif attr.type == AttributeProto.GRAPH:
                _graph(h, attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _graph(h, g)
            else:  # numbers, strings and their lists: their Python values
                h.update(repr(helper.get_attribute_value(attr)).encode())


def onnx_digest(model) -> str:
    """Hex SHA-256 of ``model``'s (an ``onnx.ModelProto``) settings, versions, graph inputs
    and outputs, initializers and nodes. A field too damaged to read raises (ValueError and
    others: :meth:`AnalogGraph.build` names them)."""
    h = hashlib.sha256()
    props = {p.key: p.value for p in model.metadata_props}
    h.update(_bytes(props.get(META_KEY, "")))
    opsets = sorted((_bytes(o.domain), int(o.version)) for o in model.opset_import)
    h.update(repr((int(model.ir_version), opsets)).encode())
    _graph(h, model.graph)
    return h.hexdigest()


def stamp_digest(model) -> None:
    """Set ``model``'s :data:`DIGEST_KEY` property to its current :func:`onnx_digest`
    (after the last change, just before writing)."""
    digest = onnx_digest(model)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != DIGEST_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (DIGEST_KEY, digest)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def verify_digest(model) -> None:
    """ValueError when ``model`` carries a digest that its content does not match."""
    stored = next((p.value for p in model.metadata_props if p.key == DIGEST_KEY), None)
    if stored is not None and onnx_digest(model) != stored:
        raise ValueError("the export's content does not match its checksum (damaged or edited)")
