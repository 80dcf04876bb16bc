"""runtime.analog_compiled: a one-layer analog export scored by the compiled kernel, with the
graph's answers (to float32 rounding), and the graph wherever the kernel does not apply."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.kernels import numba_online
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.runtime.analog_compiled import COMPILED_MAX_LIT

# CI installs numba (extra [fast], in dev) and sets SJFF_REQUIRE_NUMBA=1: there these tests
# run or fail, never skip (test_numba_online checks numba is installed)
pytestmark = pytest.mark.skipif(
    not numba_online.AVAILABLE and os.environ.get("SJFF_REQUIRE_NUMBA") != "1",
    reason="numba not installed (extra [fast])",
)


def _export(tmp_path_factory, latent: bool = False, seed: int = 0, **model) -> str:
    cfg = config_from_dict({"model": {"kind": "analog", "layers": [40], **model}})
    net = build_model(cfg.model, 784, 10, seed)
    net.image_shape = (28, 28)
    return analog_to_onnx(net, tmp_path_factory.mktemp("compiled") / "m.onnx", latent=latent)


def _images(mini, n: int) -> np.ndarray:
    x = load_split(str(mini), "test").images[:n].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x.reshape(n, -1))


def _graph(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs in onnxruntime, whatever the batch."""
    feeds = {"images": x, **model.weight_feeds()}
    return dict(zip(model.graph.output_names, model.graph.run(None, feeds)))


def _assert_same_answers(got: dict, want: dict) -> None:
    """Equal outputs to float32 rounding; equal labels wherever the best score leads the next
    by more than that rounding."""
    assert set(got) == set(want)
    for name in ("scores", "probability", "goodness"):
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        scale = float(np.abs(want[name]).max()) or 1.0
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6 * scale, err_msg=name)
    assert got["label"].dtype == want["label"].dtype == np.int64
    clear = _clear(want)
    np.testing.assert_array_equal(got["label"][clear], want["label"][clear])


def _clear(out: dict) -> np.ndarray:
    """Images whose best score leads the next by far more (100 ulp) than float32 rounding."""
    top2 = np.sort(out["scores"], axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > 1e-5 * np.maximum(1.0, np.abs(top2[:, 1]))


SETTINGS = [
    {},  # the paper's: symmetric probability, sum of squares, log-odds score, label pattern appended
    {"probability": {"kind": "sigmoid", "alpha": 0.5, "theta": 3.0}},
    {"probability": {"kind": "polar", "alpha": 0.1, "theta": -1.0}, "goodness": "mean_squares"},
    {"goodness": "l1", "score": "goodness"},
    {"probability": {"kind": "sigmoid"}, "goodness": "mean_squares", "score": "goodness"},
    {"embedding": {"kind": "onehot"}},  # the label written over the image's first inputs
    {"probability": {"kind": "symmetric", "eps": 0.5}, "embedding": {"scale": 2.0}, "layers": [6]},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) or "paper" for s in SETTINGS])
def test_the_kernel_answers_as_the_graph(settings, mini, tmp_path_factory):
    model = load_exported(_export(tmp_path_factory, **settings))
    assert model.graph.compiled is not None
    x = _images(mini, 40)
    x[3] = 0.0  # a blank image
    x[5] = 1.0  # every input lit
    assert _clear(_graph(model, x)).mean() > 0.9  # the label check sees most images
    for batch in (1, 2, 7, 20):
        for j in range(0, len(x) - batch + 1, batch):
            xb = x[j : j + batch]
            assert np.count_nonzero(xb) <= COMPILED_MAX_LIT
            _assert_same_answers(model.run(xb), _graph(model, xb))


def test_read_only_and_strided_images_take_the_warmed_kernel(mini, tmp_path_factory):
    """A request's images are a read-only view of its bytes, which numba compiles apart:
    ``warm_up`` compiles both, so no request waits for a compile; strided images are made
    contiguous first (one compiled layout)."""
    from spikingjelly_ff.kernels import numba_analog

    model = load_exported(_export(tmp_path_factory))
    assert numba_analog.warm_up()
    compiled = len(numba_analog._score.signatures)
    x = _images(mini, 6)
    ro = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    strided = np.concatenate([x, x], axis=1)[:, ::2]  # every other column
    strided[:] = x
    assert not ro.flags.writeable and not strided.flags.c_contiguous
    for images in (x, ro, strided):
        _assert_same_answers(model.run(images), _graph(model, x))
        np.testing.assert_array_equal(model.forward(images)["scores"], model.forward(x)["scores"])
    assert len(numba_analog._score.signatures) == compiled


def test_a_batch_with_many_lit_inputs_runs_the_graph(mini, tmp_path_factory):
    """The kernel takes a batch of at most COMPILED_MAX_LIT lit inputs; beyond, the graph runs
    (its BLAS product is faster on dense work), with the same answers."""
    model = load_exported(_export(tmp_path_factory))
    compiled = model.graph.compiled
    calls = []

    class Counting:  # the kernel's scoring, counted
        def __getattr__(self, name):
            return getattr(compiled, name)

        def score(self, x, terms):
            calls.append(len(x))
            return compiled.score(x, terms)

    counted = type(model)(dataclasses.replace(model.graph, compiled=Counting()), model.weights)
    x = _images(mini, 200)
    lit = np.cumsum(np.count_nonzero(x, axis=1))
    fits = int(np.searchsorted(lit, COMPILED_MAX_LIT, side="right"))  # the most leading images that fit
    assert 1 < fits < len(x)
    _assert_same_answers(counted.run(x[:fits]), _graph(model, x[:fits]))
    assert calls == [fits]
    _assert_same_answers(counted.run(x[: fits + 1]), _graph(model, x[: fits + 1]))
    assert calls == [fits]  # the larger batch did not reach the kernel


def test_learning_and_new_weights_reach_the_kernel(mini, tmp_path_factory):
    """The kernel's weight terms are derived once per weight version: after a Hebbian update,
    or weights assigned, it answers with the new weights."""
    model = load_exported(_export(tmp_path_factory))
    x = _images(mini, 16)
    before = model.run(x[:4])["scores"]
    model.learn(x, np.arange(16) % 10, np.ones(16), eta=0.5)
    after = model.run(x[:4])
    assert not np.allclose(after["scores"], before)
    _assert_same_answers(after, _graph(model, x[:4]))
    model.weights = [w * np.float32(0.5) for w in model.weights]
    _assert_same_answers(model.run(x[:4]), _graph(model, x[:4]))


@pytest.mark.parametrize(
    "settings",
    [
        {"layers": [40, 20]},  # a second layer
        {"shift_views": 1},  # translated views
        {"bias": True},
        {"latent": True},  # a latent output
    ],
    ids=["two-layers", "views", "bias", "latent"],
)
def test_exports_the_kernel_does_not_cover_run_the_graph(settings, tmp_path_factory):
    model = load_exported(_export(tmp_path_factory, **settings))
    assert model.graph.compiled is None


def test_a_float32_first_weight_runs_the_graph(tmp_path_factory):
    """An export whose first layer is not the separable float64 one (older files multiply
    every label's embedded input in float32) is left to its graph."""
    from spikingjelly_ff.runtime.analog_compiled import CompiledScoring

    graph = load_exported(_export(tmp_path_factory)).graph
    assert CompiledScoring.for_export(graph.meta, graph.output_names, np.float64) is not None
    assert CompiledScoring.for_export(graph.meta, graph.output_names, np.float32) is None


def test_switched_off_the_graph_runs(monkeypatch, tmp_path_factory):
    """SJFF_COMPILED=0 (the compiled kernels' common switch) keeps the graph."""
    path = _export(tmp_path_factory)
    monkeypatch.setenv("SJFF_COMPILED", "0")
    assert load_exported(path).graph.compiled is None


def test_tied_scores_answer_the_first_label(mini, tmp_path_factory):
    """With all weights zero every label scores the same: the label is the first, as the
    graph's ArgMax answers."""
    model = load_exported(_export(tmp_path_factory))
    model.weights = [np.zeros_like(w) for w in model.weights]
    x = _images(mini, 3)
    got, want = model.run(x), _graph(model, x)
    assert (want["scores"] == want["scores"][:, :1]).all()
    np.testing.assert_array_equal(got["scores"], want["scores"])
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["label"], 0)
