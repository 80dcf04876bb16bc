"""Damaged model files against the loaders: what each kind of file does when bytes change.

    python benchmarks/fuzz_files.py [--flips 300] [--seed 0]
        [--kinds analog analog-conv spiking spiking-conv spiking-legacy spiking-conv-legacy]

For each kind (a small analog or analog conv ONNX export, a small dense or conv spike
artefact, and the latter two as files written before artefacts carried a checksum line:
HDF5 parses those unchecked, in a child process first) this writes the file, then damages
copies of it one way each: ``--flips`` single bytes XORed with a random non-zero mask at
random offsets, truncations at 40 lengths, 16-byte ranges zeroed at 40 offsets, appended
garbage, an empty file. A worker process loads each copy (``load_exported``) and, where it
loads, scores three images and learns once, comparing with the undamaged file. Outcomes:

- ``refused``: ``ValueError`` (``ArtifactError`` included) with a message: what must happen
  (for a file without the checksum line, counted apart where the HDF5 library crashed or
  looped on it in the child process that parses such a file first);
- ``same``: loaded and gave bit-identical scores, log-odds and weights (bytes no reader uses:
  HDF5 padding, the user block's zero padding, ONNX doc strings);
- ``DIFFERENT``: loaded and gave other results (a checksum missed it);
- ``other exception``, ``crash`` (the worker died: a signal), ``hang`` (no answer in 20 s).

Only ``refused`` and ``same`` are right. Every figure is counted in this run (seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

from spikingjelly_ff.cli import _count as count  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("analog", "analog-conv", "spiking", "spiking-conv", "spiking-legacy", "spiking-conv-legacy")
HANG_S = 20.0
PROBE_S = "5"  # SJFF_PROBE_SECONDS of the worker: a legacy file the HDF5 library loops on is refused in time

WORKER = r"""
import json, sys
import numpy as np
from spikingjelly_ff.runtime import load_exported
x = np.random.default_rng(1).uniform(size=(3, int(sys.argv[1]))).astype(np.float32)
def outcome(path):
    m = load_exported(path)
    s = np.asarray(m.scores(x, seed=0), np.float64)
    lo = np.asarray(m.learn(x, np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]), seed=0), np.float64)
    return [s.tolist(), lo.tolist(), [np.asarray(w, np.float64).ravel().tolist() for w in m.weights]]
base = outcome(sys.argv[2])
print("READY", flush=True)
for line in sys.stdin:
    try:
        got = "same" if outcome(line.strip()) == base else "DIFFERENT"
    except ValueError as exc:  # by the child that parsed an unchecked file first, or otherwise
        probe = "crashed the HDF5 library" in str(exc) or "did not finish in" in str(exc)
        got = "refused by the probe" if probe else "refused"
    except Exception as exc:
        got = "other exception: " + type(exc).__name__
    print("RESULT", json.dumps(got), flush=True)
"""


def write_model(kind: str, out: Path) -> Path:
    """A small export of ``kind`` (144 inputs, 10 classes), as the runtime tests build them."""
    import torch

    from spikingjelly_ff.export.onnx import analog_to_onnx
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.functional.params import HebbianParams
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import config_from_dict

    if kind.endswith("-legacy"):
        return _unstamped(write_model(kind.removesuffix("-legacy"), out))
    torch.manual_seed(0)
    spec = HebbianParams(eta=0.5, eligibility_tau=None, learn_after=2)
    conv = [{"channels": 4, "kernel": 3, "pool": "max"}, {"channels": 6, "kernel": 3}]
    rest = {"steps": 6, "carry_membrane": False}  # a conv net starts every presentation from rest
    model = {
        "analog": {"kind": "analog", "layers": [12, 8]},
        "analog-conv": {"kind": "analog", "layers": [], "conv": conv, "embedding": {"kind": "onehot"}},
        "spiking": {"kind": "spiking", "layers": [12, 8], "encoder": {"steps": 6}},
        "spiking-conv": {"kind": "spiking", "layers": [], "conv": conv, "encoder": rest},
    }[kind]
    train = {"learner": "hebbian", "hebbian": {"learn_after": 2}} if kind.startswith("spiking") else {}
    net = build_model(config_from_dict({"model": model, "train": train}).model, 144, 10, 0, image_shape=(12, 12))
    net.image_shape = (12, 12)
    if kind.startswith("spiking"):
        return export_spike(net, out / "m.nir", (12, 12), hebbian=spec)
    return analog_to_onnx(net, out / "m.onnx", hebbian=spec)


def _unstamped(path: Path) -> Path:
    """``path`` rewritten as a spike artefact was written before it carried its checksum line
    (HDF5 data from byte 0, no user block)."""
    from unittest import mock

    from spikingjelly_ff.runtime import artifact

    art = artifact.read_artifact(path)
    with mock.patch.object(artifact, "USERBLOCK", 0), mock.patch.object(artifact, "stamp_userblock", lambda _: None):
        return artifact.write_artifact(path, art)


def damages(data: bytes, flips: int, rng: np.random.Generator):
    """(category, bytes) of every damaged copy."""
    n = len(data)
    for off in rng.integers(0, n, flips):
        b = bytearray(data)
        b[off] ^= int(rng.integers(1, 256))
        yield "byte flipped", bytes(b)
    for cut in sorted({*rng.integers(1, n, 36).tolist(), 1, n // 2, n - 1, n - 16}):
        yield "truncated", data[:cut]
    for off in rng.integers(0, n - 16, 40):
        yield "16 bytes zeroed", data[:off] + bytes(16) + data[off + 16 :]
    for tail in (b"\0" * 64, bytes(rng.integers(0, 256, 300, dtype=np.uint8)), b"garbage"):
        yield "garbage appended", data + tail
    yield "empty", b""


class Worker:
    """A process that loads damaged copies one at a time; restarted after a crash or hang."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc = None

    def start(self) -> None:
        cmd = [sys.executable, "-c", WORKER, "144", str(self.base)]
        env = {**os.environ, "SJFF_PROBE_SECONDS": PROBE_S}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "READY"

    def load(self, path: Path) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        end = time.monotonic() + HANG_S
        while True:  # a native library may print lines of its own
            answer = _readline(self.proc, end - time.monotonic())
            if answer is None or answer.startswith("RESULT "):
                break
        if answer is None:
            hung = self.proc.poll() is None
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return "hang" if hung else "crash"
        return json.loads(answer[len("RESULT ") :])

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(max(timeout, 0.0))
    sel.close()
    line = proc.stdout.readline() if ready else ""
    return line or None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=count, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    args = ap.parse_args(argv)
    rows, wrong = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            d = Path(tmp) / kind
            d.mkdir()
            base = write_model(kind, d)
            data = base.read_bytes()
            worker = Worker(base)
            counts: dict[str, Counter] = {}
            try:
                rng = np.random.default_rng([args.seed, KINDS.index(kind)])
                bad = d / ("bad" + base.suffix)
                for category, damaged in damages(data, args.flips, rng):
                    bad.write_bytes(damaged)
                    counts.setdefault(category, Counter())[worker.load(bad)] += 1
            finally:
                worker.close()
            right = ("refused", "refused by the probe", "same")
            for category, c in counts.items():
                other = sum(v for k, v in c.items() if k not in right)
                wrong += other
                odd = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in right)
                refused = c["refused"] + c["refused by the probe"]
                rows.append([kind, category, str(sum(c.values())), str(refused), str(c["refused by the probe"]),
                             str(c["same"]), odd or "none"])  # fmt: skip
    print_table(
        f"Damaged model files (seed {args.seed})",
        ["file", "damage", "copies", "refused", "of which the reader crashed or looped in the child", "same results",
         "anything else"],  # fmt: skip
        rows,
        f"{wrong} copies did something other than refuse or give the same results",
    )


if __name__ == "__main__":
    main()
