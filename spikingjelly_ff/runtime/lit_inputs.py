"""Skip the unlit inputs of a first layer: its product over the images' nonzero columns only.

Images are mostly zero (MNIST: 19 % of the pixels are lit), yet the product ``x @ W`` of the
first layer reads every row of ``W [D, H]``, and the rows of unlit pixels add exact zeros.
On a server answering one client, whose CPU sleeps between calls, each call finds ``W`` out of
the core's caches, and reading it is most of what the model costs (the float64 first layer of
the paper's net is 1.25 MB). :func:`gather_lit_inputs` rewrites such a product as

    lit = NonZero(ReduceMax(Abs(x), axis 0) != 0)    # columns lit in any row of the batch
    x[:, lit] @ W[lit, :]

The dropped terms are exact zeros, so each sum holds the same terms as before; only the order
in which the BLAS adds them may change (outputs equal to the full graph's bit for bit over the
MNIST test set at batch sizes 1-64: ``tests/library/test_lit_inputs.py``), with finite weights
(a zero pixel times an infinite weight is NaN in the full product and absent here).

Rewritten: a ``MatMul`` whose left operand depends on the graph's ``images`` alone (and on
constants) and whose right operand is a weight the graph takes as an input, both of rank 2.
A later layer's product, whose left operand depends on weights, stays as it is.
"""

from __future__ import annotations

__all__ = ["gather_lit_inputs"]


def gather_lit_inputs(model, weights: list[str], images: str = "images"):
    """``model`` (an ``onnx.ModelProto``) with each product of image-only data and a weight
    input among ``weights`` computed over the lit columns only (see the module docstring); the
    same object when nothing matches, else a rewritten copy."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consts = {t.name for t in g.initializer}
    image_only = {images}
    for node in g.node:  # topological order: a node's inputs come first
        ins = [i for i in node.input if i]
        if ins and all(i in image_only or i in consts for i in ins):
            image_only.update(o for o in node.output if o)
    fed = set(weights) & {i.name for i in g.input}
    typed = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for v in list(typed.graph.value_info) + list(typed.graph.input):
        t = v.type.tensor_type
        if t.HasField("shape"):
            ranks[v.name] = len(t.shape.dim)
    targets = [
        n
        for n in g.node
        if n.op_type == "MatMul"
        and n.input[0] in image_only
        and n.input[1] in fed
        and ranks.get(n.input[0]) == 2
        and ranks.get(n.input[1]) == 2
    ]
    if not targets:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    taken = consts | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    axis0, flat = "lit_axis0", "lit_flat"
    while axis0 in taken or flat in taken:  # names of our own that the graph does not use
        axis0, flat = axis0 + "_", flat + "_"
    og.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), axis0),
            numpy_helper.from_array(np.array([-1], np.int64), flat),
        ]
    )
    nodes = []
    for node in og.node:
        if not any(node.output[0] == t.output[0] for t in targets):
            nodes.append(node)
            continue
        x, w = node.input
        p = f"{node.output[0]}_lit"
        if opset >= 18:  # axes became an input in opset 18
            colmax = helper.make_node("ReduceMax", [f"{p}_abs", axis0], [f"{p}_max"], keepdims=0)
        else:
            colmax = helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], axes=[0], keepdims=0)
        nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"]),
            colmax,
            helper.make_node("Cast", [f"{p}_max"], [f"{p}_any"], to=TensorProto.BOOL),
            helper.make_node("NonZero", [f"{p}_any"], [f"{p}_nz"]),  # [1, K]
            helper.make_node("Reshape", [f"{p}_nz", flat], [f"{p}_idx"]),
            helper.make_node("Gather", [x, f"{p}_idx"], [f"{p}_x"], axis=1),  # [N, K]
            helper.make_node("Gather", [w, f"{p}_idx"], [f"{p}_w"], axis=0),  # [K, H]
            helper.make_node("MatMul", [f"{p}_x", f"{p}_w"], list(node.output), name=node.name),
        ]
    del og.node[:]
    og.node.extend(nodes)
    return out
