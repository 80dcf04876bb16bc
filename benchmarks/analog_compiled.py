"""The compiled scoring of a one-layer analog export (``runtime.analog_compiled``) against its graph.

    python benchmarks/analog_compiled.py [--model M] [--batches 1 2 4 8 16 32 64]
                                         [--idle-us 400] [--calls 1000] [--rounds 2]

Loads the model (default: serve.py's, the paper's analog net 784 -> 200) and scores the MNIST
test set (or the shipped subset) both ways at each batch size: onnxruntime's graph (one thread,
the lit-input graph where ``runtime.analog`` picks it) and the compiled kernel, always. It
reports how far apart the answers are (largest difference of the scores relative to their
size, labels that differ) and times both, interleaved call by call, back to back (warm caches)
and each call after ``--idle-us`` asleep (what a lone client's call finds), on the MNIST images
and on dense ones (every input lit, uniform in [0, 1]): the kernel's work grows with the lit
inputs, the graph's BLAS product with the batch. ``COMPILED_MAX_LIT`` is where the kernel stops
being faster warm.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lit_inputs import parse_timing_args, round_columns, time_rounds  # noqa: E402 - the same timing


def load_pair(path: Path):
    """(graph, compiled): functions of a batch, onnxruntime's graph and the kernel, on one
    loaded model's weights."""
    from spikingjelly_ff.runtime import load_exported
    from spikingjelly_ff.runtime.analog import AnalogModel

    model = load_exported(path, threads=1)
    compiled = model.graph.compiled
    if compiled is None:
        raise SystemExit(f"{path}: the compiled kernel does not cover this export (runtime.analog_compiled)")
    graph_only = AnalogModel(dataclasses.replace(model.graph, compiled=None), model.weights)
    terms = model.compiled_terms()
    return graph_only.forward, lambda x: compiled.score(x, terms)


def differences(graph, compiled, x: np.ndarray, batch: int) -> tuple[float, int]:
    """(largest |score difference| / largest |score| of its image, labels that differ) over
    ``x`` in batches."""
    worst, labels = 0.0, 0
    for j in range(0, len(x), batch):
        a, b = graph(x[j : j + batch]), compiled(x[j : j + batch])
        scale = np.maximum(np.abs(a["scores"]).max(axis=1, keepdims=True), 1e-30)
        worst = max(worst, float((np.abs(a["scores"] - b["scores"]) / scale).max()))
        labels += int((a["label"] != b["label"]).sum())
    return worst, labels


def main(argv: list[str] | None = None) -> int:
    from spikingjelly_ff.runtime.analog_compiled import COMPILED_MAX_LIT

    args = parse_timing_args(__doc__, argv)
    x = args.images
    graph, compiled = load_pair(args.path)
    dense = np.random.default_rng(0).random((max(args.batches) * 8, x.shape[1]), dtype=np.float32)
    dense[dense == 0] = 0.5  # every input lit
    print(f"model {args.path}, {args.label} test set: {len(x)} images, {np.mean(x > 0):.1%} of the inputs lit; "
          f"COMPILED_MAX_LIT = {COMPILED_MAX_LIT}\n")  # fmt: skip
    print(
        "| images | batch | lit inputs per batch | largest score difference (relative), labels that differ | "
        + round_columns(args, "graph", "compiled")
    )
    print("| --- | ---: | ---: | ---: |" + " ---: | ---: |" * args.rounds + " ---: | ---: |")
    fns = {"graph": graph, "compiled": compiled}
    for name, images in (("MNIST", x), ("dense", dense)):
        for batch in args.batches:
            whole = images[: (len(images) // batch) * batch].reshape(-1, batch, images.shape[1])
            lit = int(np.median(np.count_nonzero(whole, axis=(1, 2))))
            worst, labels = differences(graph, compiled, images, batch)
            cells = time_rounds(fns, images, batch, args)
            print(f"| {name} | {batch} | {lit:,} | {worst:.1e}, {labels} of {len(images)} | {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
