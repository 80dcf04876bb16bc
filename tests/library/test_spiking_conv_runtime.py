"""The spiking conv net outside torch: ``simulation.conv`` gives the same spikes on numpy
arrays as on tensors, the spike artefact records the conv layers as a valid NIR graph, and the
numpy runtime (``SpikeConvModel``) learns and scores as the torch trainer and scorer do."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from edit_utils import edit_h5
from test_runtime import _run_without_torch
from test_spiking_conv import SPIKING_CONV, draw, small_net

from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.functional.conv import conv2d, pool2d
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams
from spikingjelly_ff.learning.conv_engine import SpikingConvScorer, SpikingConvTrainer, conv_layouts
from spikingjelly_ff.runtime import (
    ArtifactError,
    SpikeConvModel,
    SpikeModel,
    load_exported,
    read_artifact,
    write_artifact,
)
from spikingjelly_ff.runtime.conv_artifact import label_to_nir
from spikingjelly_ff.simulation import conv_current, present_conv, run_conv_layer, score_conv_labels
from spikingjelly_ff.simulation.conv import CONV_PASS, SCORE_CHUNK

F32 = torch.float32
SPEC = HebbianParams(eta=0.7, eligibility_tau=0.3, learn_after=4)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _net_arrays(net) -> list[torch.Tensor]:
    return [la.weight for la in net.layers] + [la.label_bias for la in net.layers]


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)])
def test_conv2d_and_pool2d_agree_on_numpy_and_torch(stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 11, 9, generator=g)
    w = torch.randn(4, 2, 3, 3, generator=g)
    want = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
    got = conv2d(x.numpy(), w.numpy(), stride, padding)
    assert got.shape == tuple(want.shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(conv2d(x, w, stride, padding), want)
    frames = torch.rand(2, 3, 4, 7, 9, generator=g)  # [T, N, C, H, W]; 7 x 9 leaves partial windows
    for kind, size in [("max", 2), ("avg", 2), ("max", 3), ("avg", 3)]:
        # torch's own pools are the reference: pool2d sums a window in their order
        torch_pool = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
        want = torch_pool(frames.reshape(6, 4, 7, 9), size).reshape(2, 3, 4, 7 // size, 9 // size)
        assert torch.equal(pool2d(frames, kind, size), want)
        np.testing.assert_array_equal(pool2d(frames.numpy(), kind, size), want.numpy())
    grad = frames.clone().requires_grad_()  # autograd goes to torch's pools
    pooled = pool2d(grad, "max", 2)
    pooled.sum().backward()
    assert torch.equal(pooled.detach(), pool2d(frames, "max", 2)) and grad.grad.sum() == pooled.numel()
    frames_np = frames.numpy()
    assert pool2d(frames_np, None, 2) is frames_np and pool2d(frames, None, 2) is frames
    with pytest.raises(ValueError, match="pooling"):
        pool2d(frames.numpy(), "min", 2)


@pytest.mark.parametrize("over,kwta", [("map", None), ("location", None), ("map", 40)])
def test_a_layer_spikes_alike_on_numpy_and_torch(over, kwta):
    """One learning presentation of the first layer through ``simulation.run_conv_layer``, on
    float32 tensors and on numpy copies: identical spikes, weights within 1e-5."""
    net = small_net(over, kwta, dtype=F32)
    _, _, image, code, y = draw(net, 5, 1, dtype=F32)
    layer = net.layers[0]
    w, b = layer.weight.data.clone(), layer.label_bias.data.clone()
    wn, bn = _np(w), _np(b)
    e = (torch.zeros_like(w), torch.zeros_like(b))
    en = (np.zeros_like(wn), np.zeros_like(bn))
    d = net.dynamics
    out_t, tr_t = run_conv_layer(image, code, w, b, d, 1, 0, over, "torch", (y, SPEC, 0.7, *e))
    out_n, tr_n = run_conv_layer(
        image.numpy(), code.numpy(), wn, bn, d, 1, 0, over, "numpy", (y.numpy(), SPEC, 0.7, *en)
    )
    assert out_t.sum() > 0 and np.array_equal(out_n, out_t.numpy())
    np.testing.assert_allclose(tr_n, tr_t.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(wn - _np(layer.weight)).max() > 1e-3  # it learned
    np.testing.assert_allclose(wn, w.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(bn, b.numpy(), atol=1e-5, rtol=0)


#: a neuron that resets softly (V - v_threshold after a spike), SpikingJelly's v_reset=None
SOFT = NeuronParams(beta=0.85, v_threshold=0.05, v_reset=None)


@pytest.mark.parametrize(
    "over,update,neuron",
    [("map", "step", None), ("location", "step", None), ("location", "presentation", None),
     ("location", "presentation", SOFT)],
)  # fmt: skip
def test_runtime_learns_like_the_trainer(over, update, neuron, tmp_path):
    """Batches of given spikes: ``SpikeConvModel.learn_spikes`` leaves the trainer's weights,
    label weights and eligibility traces (1e-5), judges the samples alike, and the artefact it
    saves holds its learned state; with updates after every step of the window or once per
    presentation (the artefact records which), and for a neuron with a soft reset."""
    spec = replace(SPEC, update=update)
    net = small_net(over, dtype=F32, neuron=neuron)
    net.image_shape = (12, 12)
    model = load_exported(export_spike(net, tmp_path / "m.nir", hebbian=spec))
    assert isinstance(model, SpikeConvModel) and model.eta == pytest.approx(0.7)
    assert model.learn_spec.update == update
    trainer = SpikingConvTrainer(net, spec)
    for step in range(3):
        x, labels, image, code, y = draw(net, 4, 10 + step, dtype=F32)
        judged = trainer.train_batch(x, labels, y, spikes=(image, code))
        log_odds = model.learn_spikes(image.numpy(), code.numpy(), y.numpy())
        assert np.array_equal(log_odds > 0, judged.numpy())
    want = [_np(t) for t in _net_arrays(net)]
    want_e = [_np(e[0]) for e in trainer.eligibility] + [_np(e[1]) for e in trainer.eligibility]
    assert max(np.abs(a - b).max() for a, b in zip(model.weights, want)) <= 1e-5
    assert max(np.abs(a - b).max() for a, b in zip(model.eligibility, want_e)) <= 1e-5
    assert np.abs(want_e[0]).max() > 1e-4  # the traces hold something
    again = SpikeConvModel.load(model.save(tmp_path / "learned.nir"))
    assert again.learn_spec.update == update
    for a, b in zip(again.weights + again.eligibility, model.weights + model.eligibility):
        assert np.array_equal(a, b)
    other = model.copy()
    other.learn(np.full((2, 144), 0.5, np.float32), np.array([1, 2]), np.array([1.0, 0.0]), seed=3)
    assert np.array_equal(again.weights[0], model.weights[0]) and not np.array_equal(other.weights[0], model.weights[0])


@pytest.mark.parametrize("neuron", [None, SOFT], ids=["hard-reset", "soft-reset"])
def test_runtime_scores_like_the_scorer(tmp_path, neuron):
    """Regular coding draws no random numbers: the runtime's ``scores`` equal the torch
    scorer's. Bernoulli spikes given to both: the same scores (the runtime's numpy score vs
    the net's ``score_activities``)."""
    net = small_net("location", dtype=F32, neuron=neuron)
    net.image_shape = (12, 12)
    net.encoder = replace(net.encoder, coding="regular")
    x = torch.rand(23, 144, generator=torch.Generator().manual_seed(3))
    model = load_exported(export_spike(net, tmp_path / "m.nir"))
    want = SpikingConvScorer(net).scores(x).numpy()
    got = model.scores(x.numpy())
    assert got.shape == (23, 10) and np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(model.predict(x.numpy()), got.argmax(1))

    _, _, image, code, _ = draw(net, 7, 4, dtype=F32)
    codes = [code[:, k : k + 1] for k in range(4)]  # 4 candidates, [T, 1, L] each
    w, b = [la.weight.data for la in net.layers], [la.label_bias.data for la in net.layers]
    with torch.no_grad():
        want = score_conv_labels(image, codes, w, b, conv_layouts(net), net.dynamics, net.score_activities, net.over)
    got = model.scores_from_spikes(image.numpy(), [c.numpy() for c in codes])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_artifact_is_a_nir_conv_graph(tmp_path):
    """Conv2d -> LIF -> SumPool2d + Threshold (max pooling) per layer, the label weights as the
    kernel of a Conv2d on the label input (it gives code @ B); the metadata records the
    layers; bad shapes are refused; dense artefacts stay at format version 1."""
    import nir

    net = small_net("map", dtype=F32)
    net.image_shape = (12, 12)
    path = export_spike(net, tmp_path / "m.nir")
    graph = nir.read(str(path))
    types = {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert types["conv_0"] == types["label_0"] == types["conv_1"] == "Conv2d"
    assert types["lif_0"] == "LIF" and types["pool_0"] == "SumPool2d" and types["max_0"] == "Threshold"
    assert "pool_1" not in types and ("lif_1", "output") in graph.edges
    assert graph.nodes["lif_0"].tau.shape == (4, 10, 10)
    b = _np(net.layers[0].label_bias)  # [L, C, OH, OW]
    code = np.random.default_rng(0).uniform(size=(2, b.shape[0])).astype(np.float32)
    via_nir = conv2d(code[:, :, None, None], label_to_nir(b), 1, (b.shape[2] - 1, b.shape[3] - 1))
    np.testing.assert_allclose(via_nir, np.tensordot(code, b, 1), rtol=1e-5, atol=1e-6)

    with h5py.File(path) as f:
        meta = json.loads(f["spikingjelly_ff/meta"][()])
        assert f["spikingjelly_ff"].attrs["format_version"] == 2
    layers = meta["conv"]["layers"]
    assert meta["conv"]["over"] == "map" and [la["map_shape"] for la in layers] == [[4, 10, 10], [6, 5, 5]]
    assert layers[0]["pool"] == "max" and layers[0]["kernel"] == 3 and layers[1]["padding"] == 1
    assert layers[0]["nodes"]["label_weights"] == "label_0"
    art = read_artifact(path)
    for a, t in zip(art.weights, _net_arrays(net)):
        assert np.array_equal(a, _np(t))
    bad = replace(art, weights=[*art.weights[:3], art.weights[3][:, :, :4]])
    with pytest.raises(ArtifactError, match="label weight shape"):
        write_artifact(tmp_path / "bad.nir", bad)
    with pytest.raises(ArtifactError, match="image_shape"):
        write_artifact(tmp_path / "bad.nir", replace(art, image_shape=None))
    with pytest.raises(ArtifactError, match="not a spiking conv"):
        SpikeConvModel(replace(art, conv=None))
    with pytest.raises(ValueError, match="load_exported"):  # the dense runtime says where it runs
        SpikeModel(art)


def test_runtime_runs_without_torch(tmp_path):
    net = small_net("map", dtype=F32)
    net.image_shape = (12, 12)
    path = export_spike(net, tmp_path / "m.nir", hebbian=SPEC)
    code = """
import sys, json
import numpy as np
from spikingjelly_ff.runtime import load_exported
m = load_exported(sys.argv[1])
x = np.random.default_rng(0).uniform(size=(3, 144)).astype(np.float32)
s = m.scores(x)
before = m.weights[0].copy()
m.learn(x, np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]))
print(json.dumps({"kind": type(m).__name__, "shape": list(s.shape), "learned": bool((m.weights[0] != before).any()),
                  "torch": "torch" in sys.modules}))
"""
    proc = _run_without_torch(code, str(path))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == {"kind": "SpikeConvModel", "shape": [3, 10], "learned": True, "torch": False}


def test_exported_trained_model_matches_torch_on_mnist(tmp_path, mini):
    """``sjff train`` briefly (SPIKING_CONV, 300 images), ``sjff export --format spike``: on 200
    test images the runtime's accuracy equals the torch scorer's, and a learn step on the
    trained model leaves the trainer's weights (1e-5)."""
    from spikingjelly_ff.cli import main as sjff
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.config import load_config
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.train import train

    sets = [f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=300", "eval.limit=50"]
    train(load_config(None, [*SPIKING_CONV, *sets, "threads=1"]), tmp_path, log=lambda s: None, progress=False)
    assert sjff(["export", str(tmp_path / "model"), "--format", "spike", "--out", str(tmp_path / "export")]) == 0
    # ONNX has no spiking conv export: one clear line, exit 2
    assert sjff(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()
    model = load_exported(tmp_path / "export")
    net, cfg, _ = load_model(tmp_path / "model")
    assert isinstance(model, SpikeConvModel) and model.eta == pytest.approx(cfg.train.hebbian.eta)
    test = load_split(str(mini), "test")
    x, labels = test.images[:200].astype(np.float32) / 255.0, test.labels[:200]
    acc_runtime = float((model.predict(x) == labels).mean())
    acc_torch = float((SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy() == labels).mean())
    assert abs(acc_runtime - acc_torch) <= 0.01 and acc_torch > 0.2, (acc_runtime, acc_torch)

    trainer = SpikingConvTrainer(net, cfg.train.hebbian)
    image, code = trainer.draw(torch.from_numpy(x[:10]), torch.from_numpy(labels[:10]))
    y = torch.ones(10)
    judged = trainer.train_batch(None, None, y, spikes=(image, code))
    log_odds = model.learn_spikes(image.numpy(), code.numpy(), y.numpy())
    assert np.array_equal(log_odds > 0, judged.numpy())
    # 1e-5 of the weights' scale (at least 1): a float32 ulp of a weight above 100 exceeds 1e-5
    diffs = [float(np.abs(a - _np(t)).max() / max(1.0, float(np.abs(_np(t)).max()))) for a, t in
             zip(model.weights, _net_arrays(net))]  # fmt: skip
    assert max(diffs) <= 1e-5, diffs


@pytest.mark.parametrize(
    "field,value",
    [("stride", 0), ("pool_size", 0), ("pool_size", "2"), ("channels", 0), ("kernel", True), ("padding", -1),
     ("stride", 1.5)],
)  # fmt: skip
def test_tampered_conv_settings_are_an_artifact_error(tmp_path, field, value):
    """A layer setting that no layer can have is refused as an ``ArtifactError`` that names it,
    not a ZeroDivisionError or TypeError out of the shape checks."""
    net = small_net("map", dtype=F32)
    net.image_shape = (12, 12)
    path = export_spike(net, tmp_path / "m.nir")
    with edit_h5(path) as f:
        ours = f["spikingjelly_ff"]
        meta = json.loads(ours["meta"][()])
        meta["conv"]["layers"][0][field] = value
        del ours["meta"]
        ours.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
    with pytest.raises(ArtifactError, match=field):
        load_exported(path)


def test_a_precomputed_current_cannot_learn():
    """The conv current given to a layer (or to the first layer of a stack) is stale after the
    first update: learning with one is refused, and nothing learns."""
    net = small_net("map", dtype=F32)
    _, _, image, code, y = draw(net, 3, 1, dtype=F32)
    w, b = [la.weight.data.clone() for la in net.layers], [la.label_bias.data.clone() for la in net.layers]
    before = [t.clone() for t in w + b]
    learns = [(y, SPEC, 0.7, torch.zeros_like(wi), torch.zeros_like(bi)) for wi, bi in zip(w, b)]
    current = conv_current(image, w[0])
    with pytest.raises(ValueError, match="image_current"):
        run_conv_layer(image, code, w[0], b[0], net.dynamics, learn=learns[0], image_current=current)
    with pytest.raises(ValueError, match="first_current"):
        present_conv(image, code, w, b, conv_layouts(net), net.dynamics, learns=learns, first_current=current)
    assert all(torch.equal(t, t0) for t, t0 in zip(w + b, before))
    # without learning the given current is the one computed inside
    out, _ = run_conv_layer(image, code, w[0], b[0], net.dynamics, image_current=current)
    assert torch.equal(out, run_conv_layer(image, code, w[0], b[0], net.dynamics)[0])


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_conv_currents_in_passes_equal_one_convolution(backend):
    """More than CONV_PASS frames are convolved in passes; the currents are those of one call,
    bit for bit, in torch and numpy (a partial last pass included)."""
    g = torch.Generator().manual_seed(3)
    pre = (torch.rand(7, 2 * CONV_PASS // 7 + 3, 2, 9, 9, generator=g) < 0.3).float()  # T * N > 2 passes
    w = torch.randn(4, 2, 3, 3, generator=g)
    if backend == "numpy":
        pre, w = pre.numpy(), w.numpy()
    got = conv_current(pre, w, stride=1, padding=1)
    one = conv2d(pre.reshape(-1, 2, 9, 9), w, 1, 1).reshape(7, pre.shape[1], -1)
    assert pre.shape[0] * pre.shape[1] > 2 * CONV_PASS and (got == one).all()


def test_torch_and_numpy_share_the_images_of_a_label_draw():
    """Images of one scoring chunk share one label draw: the scorer and the runtime chunk alike."""
    assert SpikingConvScorer.chunk == SpikeConvModel.chunk == SCORE_CHUNK
