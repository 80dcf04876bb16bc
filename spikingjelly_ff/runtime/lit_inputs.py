"""Skip the unlit inputs of a first layer: its product over the images' nonzero columns only.

Images are mostly zero (MNIST: 81 % of the pixels are 0), yet the first layer's product
``x @ W`` reads every row of ``W [D, H]``, and the rows of unlit pixels add exact zeros. On a
server answering one client, whose CPU sleeps between calls, each call finds ``W`` out of the
core's caches, and reading it is much of what the model costs (the float64 first layer of the
paper's net is 1.25 MB; a lone MNIST image lights about 0.24 MB of it).
:func:`gather_lit_inputs` rewrites such a product as

    lit = NonZero(ReduceMax(Abs(x), axis 0) != 0)    # columns lit in any row of the batch
    x[:, lit] @ W[lit, :]

Rewritten: a float64 ``MatMul`` whose left operand depends on the graph's ``images`` alone
(and on constants: initializers that are not also graph inputs) and whose right operand is a
weight the graph takes as an input, both of rank 2. That is the analog export's separable
first layer, which accumulates in float64 and rounds the sum to float32 once. The dropped
terms are exact zeros, so each sum holds the same terms as before; only the order in which the
BLAS adds them may change, by far less than the float32 rounding that follows (outputs equal
to the full graph's bit for bit over the MNIST test set at batch sizes 1-64:
``benchmarks/lit_inputs.py``). With finite weights: a zero pixel times an infinite weight is
NaN in the full product and absent here. Later layers (their left operand depends on weights)
and float32 products (where the new order could move the last bit) stay as they are.
"""

from __future__ import annotations

__all__ = ["gather_lit_inputs"]


def gather_lit_inputs(model, weights: list[str], images: str = "images"):
    """``model`` (an ``onnx.ModelProto``) with each float64 product of image-only data and a
    weight input among ``weights`` computed over the lit columns only (see the module
    docstring); the same object when nothing matches, else a rewritten copy."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inputs = {i.name for i in g.input}
    consts = {t.name for t in g.initializer} - inputs  # an initializer that is also an input may be fed
    image_only = {images}
    for node in g.node:  # topological order: a node's inputs come first
        ins = [i for i in node.input if i]
        if ins and all(i in image_only or i in consts for i in ins):
            image_only.update(o for o in node.output if o)
    fed = set(weights) & inputs
    typed = onnx.shape_inference.infer_shapes(model)
    types = {}  # name -> (elem_type, rank)
    for v in list(typed.graph.value_info) + list(typed.graph.input):
        t = v.type.tensor_type
        if t.HasField("shape"):
            types[v.name] = (t.elem_type, len(t.shape.dim))
    f64 = (TensorProto.DOUBLE, 2)
    targets = {
        n.output[0]
        for n in g.node
        if n.op_type == "MatMul"
        and n.input[0] in image_only
        and n.input[1] in fed
        and types.get(n.input[0]) == f64
        and types.get(n.input[1]) == f64
    }
    if not targets:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    taken = inputs | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}

    def fresh(name: str) -> str:  # a tensor name the graph does not use yet
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    flat = fresh("lit_flat")
    og.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), flat))
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        axis0 = fresh("lit_axis0")
        og.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axis0))
    nodes = []
    for node in og.node:
        if node.op_type != "MatMul" or node.output[0] not in targets:
            nodes.append(node)
            continue
        x, w = node.input
        t = {k: fresh(f"{node.output[0]}_lit_{k}") for k in ("abs", "max", "any", "nz", "idx", "x", "w")}
        if opset >= 18:
            colmax = helper.make_node("ReduceMax", [t["abs"], axis0], [t["max"]], keepdims=0)
        else:
            colmax = helper.make_node("ReduceMax", [t["abs"]], [t["max"]], axes=[0], keepdims=0)
        nodes += [
            helper.make_node("Abs", [x], [t["abs"]]),
            colmax,
            helper.make_node("Cast", [t["max"]], [t["any"]], to=TensorProto.BOOL),
            helper.make_node("NonZero", [t["any"]], [t["nz"]]),  # [1, K]
            helper.make_node("Reshape", [t["nz"], flat], [t["idx"]]),
            helper.make_node("Gather", [x, t["idx"]], [t["x"]], axis=1),  # [N, K]
            helper.make_node("Gather", [w, t["idx"]], [t["w"]], axis=0),  # [K, H]
            helper.make_node("MatMul", [t["x"], t["w"]], list(node.output), name=node.name),
        ]
    del og.node[:]
    og.node.extend(nodes)
    return out
