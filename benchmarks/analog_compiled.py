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

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402 - the benchmark's model and data
from lit_inputs import timed  # noqa: E402 - the same interleaved timing


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="analog ONNX export (default: serve.py's cached model)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--idle-us", type=float, default=400.0, help="sleep before each call of the idle columns")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per path, batch size and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.calls < 1 or args.rounds < 1 or args.idle_us < 0:
        p.error("--batches, --calls and --rounds must be positive, --idle-us not negative")
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runtime.analog_compiled import COMPILED_MAX_LIT

    path = serve.prepare_model(args.model)
    data, label = serve.dataset()
    split = load_split(data, "test")
    x = split.images.reshape(len(split.images), -1).astype(np.float32) / np.float32(255.0)
    if max(args.batches) >= len(x):
        p.error(f"--batches must stay below the {len(x)} test images")
    graph, compiled = load_pair(path)
    dense = np.random.default_rng(0).random((max(args.batches) * 8, x.shape[1]), dtype=np.float32)
    dense[dense == 0] = 0.5  # every input lit
    print(f"model {path}, {label} test set: {len(x)} images, {np.mean(x > 0):.1%} of the inputs lit; "
          f"COMPILED_MAX_LIT = {COMPILED_MAX_LIT}\n")  # fmt: skip
    cell = f"graph / compiled µs, warm | {args.idle_us:g} µs asleep"
    rounds = " | ".join(f"round {r + 1}: {cell}" for r in range(args.rounds))
    print(
        "| images | batch | lit inputs per batch | largest score difference (relative), labels that differ | "
        + rounds
        + " | compiled / graph, warm | asleep |"
    )
    print("| --- | ---: | ---: | ---: |" + " ---: | ---: |" * args.rounds + " ---: | ---: |")
    fns = {"graph": graph, "compiled": compiled}
    for name, images in (("MNIST", x), ("dense", dense)):
        for batch in args.batches:
            cells, ratios = [], {"warm": [], "idle": []}
            for _ in range(args.rounds):
                for kind, idle in (("warm", 0.0), ("idle", args.idle_us * 1e-6)):
                    t = timed(fns, images, batch, idle, args.calls if batch <= 8 else max(1, args.calls // 4))
                    cells.append(f"{t['graph']:.0f} / {t['compiled']:.0f}")
                    ratios[kind].append(t["compiled"] / t["graph"])
            lit = np.count_nonzero(
                images[: (len(images) // batch) * batch].reshape(-1, batch, images.shape[1]), axis=(1, 2)
            )
            worst, labels = differences(graph, compiled, images, batch)
            ratio = " | ".join(f"{min(v):.2f}-{max(v):.2f}" for v in ratios.values())
            print(
                f"| {name} | {batch} | {int(np.median(lit)):,} | {worst:.1e}, {labels} of {len(images)} | "
                + " | ".join(cells) + f" | {ratio} |",
                flush=True,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
