"""Rerun one spiking row of arXiv 2406.16479's public notebook with the notebook's own code.

The notebook (github.com/erikberter/Hebbian_FFA, ``*.ipynb``) is not ours and is not copied
here: download it, then

    python scripts/notebook_rerun.py PATH/TO/notebook.ipynb --row online-sigmoid [--seed 0]
        [--epochs 10] [--limit N] [--emit program.py]

This assembles a program from the notebook's own cells (settings, traces, probabilities, the
LIF layer, its train and test loops; found by what they define, run unchanged) and a driver
of ours that builds the row as the notebook's model-loading cell configures it and trains it
for ``--epochs`` epochs, printing the test accuracy after each. What the driver changes, none
of which touches the method:

* MNIST comes from our loader (``spikingjelly_ff.runs.data``, the same IDX files) instead of
  torchvision; train batches shuffled, test batches in order, as the notebook's loader cell;
* the label patterns are passed to the train and test loops (its 10-epoch cell forgets them);
* the probability objects' two history lists, which the loops append a tensor to on every
  update and never read, are replaced by lists that keep nothing (they grow to tens of GB);
* ``torch.manual_seed(seed)``, one thread, and a silent stand-in for tqdm.

One online epoch takes 11 to 16 minutes on one core here (docs/reproduction.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# which notebook cells the program needs, found by a line each defines
CELLS = [
    ("settings", "torch.set_grad_enabled(False)"),
    ("steps", "num_steps = "),
    ("traces", "class ReLU_Trace"),
    ("probabilities", "class Standard_Probability:"),
    ("layer", "class LIF_Layer"),
    ("loops", "def train_network(layer, labels, use_eval"),
]

# the four spiking rows as the notebook's model-loading cell configures them
ROWS = {
    "batched-symmetric": (
        50,
        "Symmetric_Probability(28*28 + 100, num_neurons, nu=1, tau=0.1)",
        "ReLU_Trace(50, num_neurons)",
    ),
    "batched-sigmoid": (
        50,
        "Standard_Probability(28*28 + 100, num_neurons, nu=10, tau=0.1)",
        "LI_Trace(50, num_neurons)",
    ),
    "online-symmetric": (
        1,
        "Symmetric_Probability(28*28 + 100, num_neurons, nu=1, tau=0.1)",
        "LI_Trace(1, num_neurons)",
    ),
    "online-sigmoid": (1, "Standard_Probability(28*28 + 100, num_neurons, nu=1, tau=0.1)", "LI_Trace(1, num_neurons)"),
}

HEADER = """\
import os, sys
import numpy as np
import torch
import torch.nn.functional as F


class tqdm:  # silent stand-in: the loops only iterate and set a description
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_description(self, s):
        pass


MAXI = {limit}
torch.set_num_threads({threads})
"""

# the notebook's hyper-parameter cell also builds a model of its own; only its two constants
HYPER = """
num_neurons = 200
INPUT_STRENGTH = 0.25
"""

DRIVER = """
from spikingjelly_ff.runs.data import load_split

torch.manual_seed({seed})
batch_size = {batch}
tr, te = load_split("mnist", "train"), load_split("mnist", "test")


def loader(split, shuffle):
    x = torch.tensor(split.images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(split.labels, dtype=torch.long)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


train_loader, test_loader = loader(tr, True), loader(te, False)
config = [{probability}, {trace}, 200]


class _Keep_Nothing(list):
    def append(self, x):
        pass


for name in ("trace_history", "neuromodulation_history"):
    if hasattr(config[0], name):
        setattr(config[0], name, _Keep_Nothing())
layer = LIF_Layer(batch_size, 28*28 + 100, num_neurons, topk=config[2], tau=0.85)
layer.set_out_trace(config[1])
layer.set_probabilities(config[0])
labels = torch.bernoulli(torch.ones((10, 100)) * 0.3).long()
"""

EPOCHS = """
for ep in range({epochs}):
    layer = train_network(layer, labels, use_eval=False, max_i=MAXI)
    cor, tot = test(layer, max_i=MAXI)
    print(f"epoch {{ep + 1}}: test accuracy {{float(cor / tot):.4f}}", flush=True)
"""

# benchmarks/notebook_speed.py: the notebook's own train and test calls, timed (``max_i`` stops
# its loops after max_i + 1 batches)
TIMING = """
import json, time
t0 = time.perf_counter()
layer = train_network(layer, labels, use_eval=False, max_i={train_batches} - 1)
t1 = time.perf_counter()
cor, tot = test(layer, max_i={test_batches} - 1)
t2 = time.perf_counter()
print("SJFF_TIMING " + json.dumps({{"train_samples": {train_batches} * batch_size, "train_seconds": t1 - t0,
      "test_images": int(tot), "test_seconds": t2 - t1, "threads": torch.get_num_threads()}}), flush=True)
"""


def notebook_cells(path: Path) -> dict[str, str]:
    """The source of each cell in :data:`CELLS`, from the notebook at ``path``."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read the notebook ({exc})") from None
    code = ["".join(c["source"]) for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    found = {}
    for name, marker in CELLS:
        hits = [src for src in code if marker in src]
        if not hits:
            raise SystemExit(f"{path}: no code cell contains {marker!r}; is this the paper's notebook?")
        found[name] = hits[0]
    return found


def program(
    path: Path,
    row: str,
    seed: int,
    epochs: int,
    limit: int | None,
    threads: int = 1,
    timing: tuple[int, int] | None = None,
) -> str:
    """The notebook's cells and our driver as one program: ``epochs`` epochs with the test
    accuracy after each, or with ``timing = (train_batches, test_batches)`` one timed call of
    its train loop and of its test loop (a ``SJFF_TIMING {json}`` line)."""
    cells = notebook_cells(path)
    batch, probability, trace = ROWS[row]
    parts = [HEADER.format(limit=limit if limit else 10**8, threads=threads)]
    for name, src in cells.items():
        parts.append(f"# ---- notebook cell: {name}\n{src}\n")
        if name == "steps":
            parts.append(HYPER)
    parts.append(DRIVER.format(seed=seed, batch=batch, probability=probability, trace=trace))
    if timing is None:
        parts.append(EPOCHS.format(epochs=epochs))
    else:
        parts.append(TIMING.format(train_batches=timing[0], test_batches=timing[1]))
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path, help="the paper's .ipynb")
    ap.add_argument("--row", choices=sorted(ROWS), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--limit", type=int, help="train and test on the first N batches only (a quick check)")
    ap.add_argument("--emit", type=Path, help="write the program here instead of running it")
    args = ap.parse_args()
    src = program(args.notebook, args.row, args.seed, args.epochs, args.limit)
    if args.emit:
        args.emit.write_text(src)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "notebook_row.py"
        prog.write_text(src)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.call([sys.executable, str(prog)], env=env)


if __name__ == "__main__":
    sys.exit(main())
