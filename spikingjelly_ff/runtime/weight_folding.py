"""Split an ONNX graph whose weights are inputs into a per-version part and a per-call part.

onnxruntime folds constants only when they are initializers. Our served graphs take the
weights as inputs (so an update swaps arrays instead of rebuilding the session), which hides
from it every node that depends on the weights alone, for example the label term
``codes @ W[label rows]`` of an analog export: it would run on every call although it only
changes when the weights do. :func:`split_weight_only` moves those nodes into a second graph
that runs once per weight version; the per-call graph takes their results as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WeightSplit", "split_weight_only"]

_NOT_PURE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_SUBGRAPH = (5, 10)  # AttributeProto.GRAPH, AttributeProto.GRAPHS


@dataclass
class WeightSplit:
    """``derive`` (or None when nothing depends on the weights alone) maps the weights to
    ``derived`` tensors; ``per_call`` takes the images, ``direct`` weights and ``derived``."""

    per_call: object  # onnx.ModelProto
    derive: object | None  # onnx.ModelProto
    direct: list[str]  # weights the per-call graph still reads itself
    derived: list[str]  # tensors the derive graph computes for the per-call graph


def split_weight_only(model, weights: list[str]) -> WeightSplit:
    """Split ``model`` (an ``onnx.ModelProto`` that declares ``weights`` among its inputs).

    A node is weight-only when all its inputs are initializers, weights or outputs of
    weight-only nodes, and at least one of them comes from a weight (nodes on initializers
    alone are onnxruntime's to fold). Returns a :class:`WeightSplit`.
    """
    import onnx
    from onnx import helper

    g = model.graph
    init_names = {t.name for t in g.initializer}
    from_weights = set(weights)  # tensors that depend on the weights only (and on constants)
    weight_only = []
    for node in g.node:  # ONNX nodes are stored in topological order
        ins = [i for i in node.input if i]
        if node.op_type in _NOT_PURE or any(a.type in _SUBGRAPH for a in node.attribute):
            continue  # random, or a subgraph that may read outer tensors its inputs do not name
        if ins and all(i in from_weights or i in init_names for i in ins) and any(i in from_weights for i in ins):
            weight_only.append(node)
            from_weights.update(o for o in node.output if o)
    if not weight_only:
        return WeightSplit(model, None, list(weights), [])
    moved = {id(n) for n in weight_only}
    per_call_nodes = [n for n in g.node if id(n) not in moved]
    graph_outputs = {o.name for o in g.output}
    needed = {i for n in per_call_nodes for i in n.input if i} | graph_outputs
    derived = [o for n in weight_only for o in n.output if o and o in needed]
    direct = [w for w in weights if w in needed]
    if graph_outputs & set(derived):  # a weight-only output: rare, and simplest left whole
        return WeightSplit(model, None, list(weights), [])

    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in list(typed.graph.value_info) + list(typed.graph.output) + list(typed.graph.input)}
    missing = [d for d in derived if d not in types or not types[d].type.tensor_type.elem_type]
    if missing:  # without a type the per-call graph cannot declare them: keep the graph whole
        return WeightSplit(model, None, list(weights), [])

    def value_info(name: str):
        v = onnx.ValueInfoProto()
        v.CopyFrom(types[name])
        return v

    used_by_derive = {i for n in weight_only for i in n.input}
    derive_graph = helper.make_graph(
        weight_only,
        f"{g.name}_per_version",
        [value_info(w) for w in weights if w in used_by_derive],
        [value_info(d) for d in derived],
        [t for t in g.initializer if t.name in used_by_derive and t.name not in weights],
    )
    derive = helper.make_model(derive_graph, opset_imports=model.opset_import, ir_version=model.ir_version)

    per_call = onnx.ModelProto()
    per_call.CopyFrom(model)
    pg = per_call.graph
    del pg.node[:]
    pg.node.extend(per_call_nodes)
    keep_inputs = [i for i in pg.input if i.name not in set(weights) or i.name in direct]
    del pg.input[:]
    pg.input.extend(keep_inputs)
    pg.input.extend(value_info(d) for d in derived)
    still_used = {i for n in per_call_nodes for i in n.input}
    kept_init = [t for t in pg.initializer if t.name in still_used]
    del pg.initializer[:]
    pg.initializer.extend(kept_init)
    return WeightSplit(per_call, derive, direct, derived)
