"""benchmarks/analog_compiled.py and lit_inputs.py: the tables the docs quote, on a one-layer
export; the graph columns run onnxruntime, whatever the compiled scoring would take."""

from __future__ import annotations

import os
import sys

import pytest
import serving_utils as su

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.kernels import numba_online
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict

sys.path.insert(0, str(su.ROOT / "benchmarks"))
import analog_compiled  # noqa: E402
import lit_inputs  # noqa: E402

# CI installs numba (extra [fast], in dev) and sets SJFF_REQUIRE_NUMBA=1: there these tests
# run or fail, never skip (test_numba_online checks numba is installed)
pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and os.environ.get("SJFF_REQUIRE_NUMBA") != "1",
    reason="numba not installed (extra [fast])",
)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """An untrained 784 -> 40 export the compiled scoring covers (the paper's net's shape)."""
    cfg = config_from_dict({"model": {"kind": "analog", "layers": [40]}})
    net = build_model(cfg.model, 784, 10, 0)
    net.image_shape = (28, 28)
    return str(analog_to_onnx(net, tmp_path_factory.mktemp("bench") / "m.onnx"))


def _rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]  # without the header


def test_analog_compiled_prints_both_paths_per_batch(one_layer, capsys):
    assert analog_compiled.main(["--model", one_layer, "--batches", "1", "3", "--calls", "2", "--rounds", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(r[0], r[1]) for r in rows] == [("MNIST", "1"), ("MNIST", "3"), ("dense", "1"), ("dense", "3")]
    assert [r[2] for r in rows[2:]] == ["784", "2,352"]  # dense: every input lit
    for r in rows:
        worst, labels = r[3].split(", ")
        assert float(worst) < 1e-5 and labels.startswith("0 of ")
        assert len(r) == 8  # two timing cells, two ratio ranges


def test_lit_inputs_compares_two_graphs(one_layer):
    full, lit = lit_inputs.load_pair(one_layer)
    assert full.graph.compiled is None and lit.graph.compiled is None
    assert full.graph.small is full.graph.session and lit.graph.session is lit.graph.small
