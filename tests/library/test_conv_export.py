"""The analog conv FF net exported to ONNX: onnxruntime's outputs against the torch net, and
the torch-free runtime's on-line conv rule against the same update computed with torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edit_utils import save_edited

from spikingjelly_ff.export.onnx import analog_to_onnx, conv_to_onnx
from spikingjelly_ff.functional.conv import ff_conv_hebbian_delta, length_normalize_map
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.runtime.onnx_meta import META_KEY, load_onnx_meta

# Float32 rounding, not the graph, bounds the agreement: the outputs are float32 sums of
# thousands of terms (a map's G+ and G- are sums of ~1000 squares of size O(100); a
# location score sums a log-odds per location and reaches O(1000)), in other orders in torch
# and onnxruntime, and a split score is a difference of such sums. Both sides stay a few
# float32 ulps of the largest value from a float64 reference (onnxruntime's reductions a few
# times more than torch's), so the bound is ATOL plus REL of that value; scores of O(1)
# (over="map", symmetric) agree to ~1e-6 and the labels exactly.
ATOL, REL = 1e-5, 4e-6


def _close(actual: np.ndarray, desired: np.ndarray, what: str) -> None:
    tol = ATOL + REL * float(np.abs(desired).max())
    np.testing.assert_allclose(actual, desired, rtol=0, atol=tol, err_msg=what)


def _net(over: str, pool: str, prob: str = "symmetric", *sets: str, seed: int = 0):
    """A 2-layer conv net (4 then 6 channels) on 28 x 28 images with random label weights."""
    cfg = load_config(
        None,
        [
            "model.layers=[]",
            "model.embedding.kind=onehot",
            f"model.probability={{kind: {prob}}}",
            f"model.goodness_over={over}",
            f"model.conv=[{{channels: 4, kernel: 5, pool: {pool}}}, {{channels: 6, kernel: 3, padding: 1}}]",
            *sets,
        ],
    )
    net = build_model(cfg.model, 784, 10, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in net.layers:
            layer.label_bias.copy_(torch.randn(layer.label_bias.shape, generator=g) * 0.1)
    return net


def _images(mini, n: int = 12) -> np.ndarray:
    return load_split(str(mini), "test").images[:n].reshape(n, -1).astype(np.float32) / np.float32(255.0)


def _outputs(path, x: np.ndarray) -> dict[str, np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": x})))


def _torch_outputs(net, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the export should give, from the net's own methods."""
    c, n = net.num_classes, len(x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        acts = net.all_label_activities(xt)
        goods = torch.stack([net._layer(a, "goodness") for a in acts], 1)  # [C*N, L]
        return {
            "scores": net.view_scores(xt).numpy(),
            "label": net.predict(xt).numpy(),
            "probability": torch.sigmoid(net.pn_logit(acts)).reshape(c, n).T.numpy(),
            "goodness": goods.reshape(c, n, -1).transpose(0, 1).numpy(),
        }


CASES = {  # name: (over, pool, probability, extra config)
    "map/max": ("map", "max", "symmetric", ()),
    "map/avg": ("map", "avg", "symmetric", ()),
    "location/max": ("location", "max", "symmetric", ()),
    "location/avg": ("location", "avg", "symmetric", ()),
    # other scores and goodness, a strided last layer, all layers voting or one
    "location/sigmoid/goodness/stride": (
        "location", "avg", "sigmoid", (
            "model.score=goodness", "model.goodness=mean_squares", "model.score_layers=[1]",
            "model.conv=[{channels: 4, kernel: 5, pool: avg}, {channels: 6, kernel: 3, padding: 1, stride: 2}]",
        ),
    ),
    "map/polar/bias": ("map", "max", "polar", ("model.bias=true",)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_conv_onnx_matches_torch(tmp_path, mini, case):
    over, pool, prob, sets = CASES[case]
    net = _net(over, pool, prob, *sets)
    path = analog_to_onnx(net, tmp_path / "conv.onnx")  # routed to conv_to_onnx
    x = _images(mini)
    out, ref = _outputs(path, x), _torch_outputs(net, x)
    for key in ("scores", "probability", "goodness"):
        _close(out[key], ref[key], key)
    assert np.array_equal(out["label"], ref["label"])
    assert out["goodness"].shape == (len(x), 10, 2)
    meta = load_onnx_meta(onnx.load(str(path)))
    assert meta.conv.over == over and meta.image_shape == (28, 28)
    assert [c.map_shape for c in meta.conv.layers] == net.map_shapes()
    assert meta.conv.layers[1].in_shape == (4, 12, 12)
    # dynamic batch
    assert _outputs(path, x[:1])["label"].shape == (1,)


def test_conv_onnx_shift_views_and_refusals(tmp_path, mini):
    net = _net("location", "max")
    net.shift_views, net.image_shape = 1, (28, 28)
    x = _images(mini, 5)
    out, ref = _outputs(conv_to_onnx(net, tmp_path / "views.onnx"), x), _torch_outputs(net, x)
    _close(out["scores"], ref["scores"], "scores")
    assert np.array_equal(out["label"], ref["label"])
    _close(out["goodness"], ref["goodness"], "goodness")  # the image itself
    with pytest.raises(ValueError, match="no latent"):
        conv_to_onnx(net, tmp_path / "latent.onnx", latent=True)
    net.image_shape = None
    with pytest.raises(ValueError, match="image shape"):
        conv_to_onnx(net, tmp_path / "no-shape.onnx")


def _torch_step(net, xt, labels, y, eta, tau, elig) -> list[torch.Tensor]:
    """The reference update on the torch net: kernels from ``ff_conv_hebbian_delta`` of the
    torch activities, label weights from autograd of each layer's local loss, applied with
    ``apply_delta``; returns the activities before the update."""
    emb = net.embedding(xt, torch.from_numpy(labels))
    code = net.label_code(emb)
    with torch.no_grad():
        acts = net.activities(emb)
    inp = emb.reshape(len(xt), 1, 28, 28)
    deltas = []
    for layer, spec, act in zip(net.layers, net.specs, acts):
        pre = length_normalize_map(inp, net.over) if layer.normalize_input else inp
        dw = ff_conv_hebbian_delta(
            net.probability, act, pre, y, spec.kernel, spec.stride, spec.padding, net.goodness_kind, net.over
        )
        loss = net.layer_loss(layer.activity(inp, code), y)
        deltas.append((dw, -torch.autograd.grad(loss, layer.label_bias)[0]))
        inp = layer.pool(act)
    with torch.no_grad():
        for i, (layer, (dw, db)) in enumerate(zip(net.layers, deltas)):
            apply_delta(layer.weight.data, dw, eta, tau, elig[i])
            apply_delta(layer.label_bias.data, db, eta, tau, elig[len(net.layers) + i])
    return acts


@pytest.mark.parametrize("tau", [None, 0.3], ids=["no-trace", "trace"])
@pytest.mark.parametrize("over", ["map", "location"])
def test_runtime_conv_learn_equals_torch(tmp_path, mini, over, tau):
    eta = 0.05
    net = _net(over, "max" if over == "map" else "avg")
    model = load_exported(
        analog_to_onnx(net, tmp_path / "conv.onnx", hebbian=HebbianParams(eta=eta, eligibility_tau=tau))
    )
    params = [layer.weight for layer in net.layers] + [layer.label_bias for layer in net.layers]
    assert [w.shape for w in model.weights] == [tuple(p.shape) for p in params]
    start = [p.detach().clone() for p in params]
    elig = [torch.zeros_like(p) for p in params]
    images = _images(mini, 24)
    rng = np.random.default_rng(0)
    for step in range(3):
        x = images[step * 8 : (step + 1) * 8]
        labels = rng.integers(0, 10, len(x))
        positive = rng.random(len(x)) < 0.5
        model = model.copy()  # as the server learns: on a copy of the published model
        log_odds = model.learn(x, labels, positive)
        acts = _torch_step(net, torch.from_numpy(x), labels, torch.from_numpy(positive).float(), eta, tau, elig)
        with torch.no_grad():
            _close(log_odds, net.pn_logit(acts).numpy(), "log-odds")
        for i, p in enumerate(params):
            np.testing.assert_allclose(model.weights[i], p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{i}")
            np.testing.assert_allclose(model.eligibility[i], elig[i].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"e{i}")
    moved = [float((p.detach() - p0).abs().max()) for p, p0 in zip(params, start)]
    assert min(moved) > 1e-4, moved  # every kernel and label weight learned, far beyond the tolerance
    # the session scores with the learned weights, as the updated torch net does
    x = images[-6:]
    ref = _torch_outputs(net, x)
    _close(model.scores(x), ref["scores"], "scores after learning")
    assert np.array_equal(model.predict(x), ref["label"])
    # and save() writes them into the ONNX file
    again = load_exported(model.save(tmp_path / "learned.onnx"))
    np.testing.assert_array_equal(again.scores(x), model.scores(x))


def test_runtime_conv_learn_refuses_bias(tmp_path, mini):
    model = load_exported(analog_to_onnx(_net("map", "max", "symmetric", "model.bias=true"), tmp_path / "b.onnx"))
    x = _images(mini, 2)
    assert model.scores(x).shape == (2, 10)
    with pytest.raises(ValueError, match="bias-free"):
        model.learn(x, np.array([1, 2]), np.array([True, False]))


def test_runtime_learn_log_odds_follow_the_graph_with_repeated_score_layers(tmp_path, mini):
    """A voting layer named twice counts twice in torch, in the ONNX graph and in the runtime's
    learn log-odds alike (one summed score for all three)."""
    net = _net("map", "max")  # log-odds of O(1): the graph's probability tells them apart
    net.score_layers = [1, 1]
    model = load_exported(analog_to_onnx(net, tmp_path / "dup.onnx"))
    x, labels = _images(mini, 6), np.arange(6)
    log_odds = model.copy().learn(x, labels, np.ones(6), eta=0.0)
    with torch.no_grad():
        want = net.pn_logit(net.activities(net.embedding(torch.from_numpy(x), torch.from_numpy(labels)))).numpy()
    _close(log_odds, want, "log-odds")
    graph = _outputs(tmp_path / "dup.onnx", x)["probability"][np.arange(6), labels]
    _close(1.0 / (1.0 + np.exp(-log_odds)), graph, "the graph's probability")


@pytest.mark.parametrize(
    "field,value",
    [("stride", 0), ("pool_size", 0), ("pool_size", "2"), ("kernel", True), ("padding", -1), ("kernel", 2.5),
     ("map_shape", [6, 12]), ("in_shape", None)],
)  # fmt: skip
def test_tampered_conv_metadata_is_refused_on_load(tmp_path, field, value):
    """Bad layer settings in the metadata are refused when the export loads, saying which,
    instead of failing later inside a division or the convolution."""
    path = analog_to_onnx(_net("map", "max"), tmp_path / "conv.onnx")
    proto = onnx.load(str(path))
    prop = next(p for p in proto.metadata_props if p.key == META_KEY)
    meta = json.loads(prop.value)
    meta["conv"]["layers"][0][field] = value
    prop.value = json.dumps(meta)
    save_edited(proto, tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=field):
        load_exported(tmp_path / "bad.onnx")
