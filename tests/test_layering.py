"""The layering contracts (`.importlinter`) hold, and they fail on a forbidden import.

`lint-imports` reads imports as written, inside functions too, so a layer cannot reach up even
lazily. The second test plants a forbidden import in a copy of the tree and checks that the
contract that forbids it breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(tree / p) for p in (".", "server", "clients/python"))
    env["COLUMNS"] = "400"  # one line per contract in the report
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def copy_tree(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for part in ("spikingjelly_ff", "server/sjff_server", "clients/python/sjff_client"):
        shutil.copytree(ROOT / part, dst / part, ignore=ignore)
    shutil.copy(ROOT / ".importlinter", dst / ".importlinter")
    return dst


def test_the_tree_keeps_its_layers():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ", 0 broken." in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("spikingjelly_ff/runtime/artifact.py", "import torch", "never import torch"),
        ("spikingjelly_ff/functional/goodness.py", "from spikingjelly_ff.runs import config", "layered"),
        ("spikingjelly_ff/nn/models.py", "import sjff_server", "never imports the server"),
        ("server/sjff_server/storage/state.py", "import grpc", "knows neither gRPC"),
        ("server/sjff_server/storage/snapshots.py", "from spikingjelly_ff.runs import outputs", "never imports torch"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    tree = copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")
    out = lint(tree)
    assert out.returncode != 0, out.stdout
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), out.stdout
