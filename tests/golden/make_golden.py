"""Rewrite the golden fixtures: ``golden.json``, ``golden.npz`` and ``saved/``.

    python tests/golden/make_golden.py [--keep-saved]

RERUN ONLY DELIBERATELY. These files pin the library's behaviour bit for bit (see
``tests/test_golden.py``); regenerating them after a change makes the test pass whatever the
change did. They were first made before the issue-13 refactor, and re-made with
``--keep-saved`` when the fingerprint came to name the CPU core (the values of the commit
named in ``golden.json``, on that machine); rerun only for an intended change of results, or
to move the exact check to another CPU, and say so in the commit.

``golden.json`` holds, per value, the sha256 of its raw bytes, its shape and dtype, and the
numeric fingerprint of the machine; ``golden.npz`` holds the values themselves (every
``stride``-th element of the large ones) so that a mismatch can report its size, and so that
another CPU can be checked with a tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden import cases  # noqa: E402

MAX_STORED = 4096  # elements kept in golden.npz per value


def stride(a: np.ndarray) -> int:
    """Keep every ``stride``-th element of ``a.ravel()``: at most MAX_STORED of them."""
    return max(1, -(-a.size // MAX_STORED))


def main() -> None:
    import spikingjelly_ff

    print(f"library: {spikingjelly_ff.__file__}")
    # --keep-saved: the committed model files stay as they are (they pin an older file format)
    with tempfile.TemporaryDirectory() as tmp:
        values = cases.compute(Path(tmp), write_saved_files="--keep-saved" not in sys.argv)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(spikingjelly_ff.__file__).parent, capture_output=True, text=True
    ).stdout.strip()
    record = {
        "about": "written by tests/golden/make_golden.py; rerun only deliberately",
        "commit": commit,
        "fingerprint": cases.fingerprint(),
        "values": {
            k: {"sha256": cases.sha256(a), "shape": list(a.shape), "dtype": str(a.dtype), "stride": stride(a)}
            for k, a in sorted((k, np.asarray(v)) for k, v in values.items())
        },
    }
    stored = {k: np.asarray(v).ravel()[:: stride(np.asarray(v))] for k, v in values.items()}
    np.savez_compressed(cases.HERE / "golden.npz", **stored)
    (cases.HERE / "golden.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(values)} values from commit {commit or '?'} to {cases.HERE}")


if __name__ == "__main__":
    main()
