"""Exports: analog ONNX in onnxruntime, spiking ONNX (Scan) in onnxruntime, and the spike
artefact re-imported into SpikingJelly."""

from __future__ import annotations

import nir
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spikingjelly_ff.export.onnx import analog_to_onnx, spiking_to_onnx
from spikingjelly_ff.export.spike import export_spike, to_spikingjelly
from spikingjelly_ff.learning.engine import SpikingScorer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.config import config_from_dict
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runtime import SpikeModel, read_artifact
from spikingjelly_ff.simulation import rest, run_layer


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_analog_onnx_matches_torch(analog_run, mini, tmp_path):
    net, cfg, _ = load_model(analog_run / "model")
    path = analog_to_onnx(net, tmp_path / "m.onnx", latent=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x, y = load_split(str(mini), "test").to_tensors()
    out = dict(zip([o.name for o in _session(path).get_outputs()], _session(path).run(None, {"images": x.numpy()})))
    with torch.no_grad():
        scores = net.scores(x)
        acts = net.activities(net.embedding.all_labels(x).reshape(-1, net.input_width))
    prob = torch.sigmoid(scores).numpy()
    assert np.abs(out["probability"] - prob).max() <= 1e-6
    np.testing.assert_allclose(out["scores"], scores.numpy(), rtol=1e-4, atol=1e-4)
    assert np.array_equal(out["label"], scores.argmax(1).numpy())
    latent = torch.cat(acts, 1).reshape(10, len(x), -1).transpose(0, 1).numpy()
    np.testing.assert_allclose(out["latent"], latent, rtol=1e-4, atol=1e-5)
    assert out["goodness"].shape == (len(x), 10, 2)
    # dynamic batch: one image and 37 images work with the same graph
    for n in (1, 37):
        assert _session(path).run(["label"], {"images": x[:n].numpy()})[0].shape == (n,)


@pytest.mark.parametrize("embedding", ["pattern", "onehot"])
def test_analog_onnx_first_layer_rounds_like_torch(tmp_path, embedding):
    """With large weights a first-layer unit is a difference of large terms; its float32
    value depends on the matmul's summation order unless the current is accumulated in
    float64 and rounded once, as both torch and the export do. Then the two agree to an ulp
    or two, relative to the unit itself (not to the size of the terms)."""
    cfg = config_from_dict(
        {"model": {"kind": "analog", "layers": [64], "bias": True, "embedding": {"kind": embedding}}}
    )
    net = build_model(cfg.model, 784, 10, 0)
    with torch.no_grad():
        net.layers[0].synapse.weight.mul_(1000.0)
        net.layers[0].synapse.bias.normal_(0.0, 100.0)
    x = torch.rand(50, 784, generator=torch.Generator().manual_seed(1))
    path = analog_to_onnx(net, tmp_path / "big.onnx", latent=True)
    out = dict(zip([o.name for o in _session(path).get_outputs()], _session(path).run(None, {"images": x.numpy()})))
    with torch.no_grad():
        layer0 = net.all_label_activities(x)[0].reshape(10, 50, -1).transpose(0, 1).numpy()
        naive = net.activities(net.embedding.all_labels(x).reshape(500, -1))[0]
        ref64 = net.double().all_label_activities(x.double())[0]
    np.testing.assert_allclose(out["latent"], layer0, rtol=2.5e-7, atol=1e-30)
    assert (out["latent"] > 0).any() and (out["latent"] == 0).any()
    # the naive float32 matmul is further from the float64 value than the rounded-once path
    assert (naive.double() - ref64).abs().max() > (
        torch.from_numpy(layer0).transpose(0, 1).reshape(500, -1).double() - ref64
    ).abs().max()


def test_onehot_and_sigmoid_analog_export(tmp_path):
    cfg = config_from_dict(
        {
            "model": {
                "kind": "analog",
                "layers": [20, 10],
                "embedding": {"kind": "onehot"},
                "probability": {"kind": "sigmoid", "theta": 2.0},
            }
        }
    )
    net = build_model(cfg.model, 784, 10, 0)
    x = torch.rand(9, 784)
    path = analog_to_onnx(net, tmp_path / "o.onnx")
    scores = _session(path).run(["scores"], {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(scores, net.scores(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trace,kwta,soft", [("leaky", None, False), ("count", None, False), ("hard", 7, False),
                                             ("leaky", None, True)])  # fmt: skip
def test_spiking_onnx_scan_matches_torch(tmp_path, trace, kwta, soft):
    cfg = config_from_dict(
        {
            "model": {
                "kind": "spiking",
                "layers": [40, 20],
                "init": "normal",
                "init_std": 0.5,
                "trace": {"kind": trace},
                # soft: a spike lowers V by the threshold, which may leave V to fire at rest
                "neuron": {"kwta": kwta, **({"v_reset": None, "v_threshold": 0.3} if soft else {})},
                "probability": {"kind": "symmetric"},
            },
            "train": {"learner": "hebbian"},
        }
    )
    net = build_model(cfg.model, 784, 10, 0)
    g = torch.Generator().manual_seed(0)
    spikes = net.encode(net.rates(torch.rand(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g)), g)
    v0 = [torch.randn(16, w, generator=g) for w in net.widths]
    path = spiking_to_onnx(net, tmp_path / "s.onnx")
    feeds = {"spikes": spikes.numpy(), **{f"v{i}": v.numpy() for i, v in enumerate(v0)}}
    sess = _session(path)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    pre, traces = spikes, []
    for i, layer in enumerate(net.layers):
        v = v0[i].clone()
        pre, tr = run_layer(pre, layer.weight.data, v, net.dynamics)
        assert np.array_equal(out[f"spikes_{i}"], pre.numpy()), f"layer {i} spikes differ"
        assert np.array_equal(out[f"trace_{i}"], tr.numpy())
        np.testing.assert_allclose(
            out[f"v{i}_out"], rest(v, net.dynamics, net.encoder.rest_steps).numpy(), rtol=1e-5, atol=1e-5
        )
        traces.append(tr)
    assert pre.sum() > 0
    np.testing.assert_allclose(out["logit"], net.pn_logit(traces).numpy(), rtol=1e-5, atol=1e-5)


def test_soft_reset_artifact_keeps_its_neuron_and_refuses_spikingjelly(tmp_path):
    """NIR 1.0's LIF resets to v_reset only: a soft-reset net's artefact marks v_reset NaN in its
    LIF nodes, keeps the exact neuron in its meta (the runtime spikes as torch does), and
    ``to_spikingjelly`` refuses it instead of rebuilding a hard-reset network."""
    cfg = config_from_dict(
        {
            "model": {
                "kind": "spiking",
                "layers": [60],
                "init": "normal",
                "init_std": 0.3,
                "neuron": {"v_reset": None, "v_threshold": 0.4},
                "encoder": {"carry_membrane": False, "coding": "regular"},
            },
            "train": {"learner": "hebbian"},
        }
    )
    net = build_model(cfg.model, 784, 10, 0)
    path = export_spike(net, tmp_path, hebbian=cfg.train.hebbian, evaluation=cfg.eval.params, name=cfg.name)
    art = read_artifact(path)
    assert art.neuron == net.neuron_params and art.neuron.soft_reset
    graph = nir.read(path)
    assert np.isnan(graph.nodes["lif_0"].v_reset).all() and graph.nodes["lif_0"].v_leak.max() == 0.0
    with pytest.raises(ValueError, match="resets softly"):
        to_spikingjelly(path)
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # regular coding draws nothing: the same spikes on both sides
        want = SpikingScorer(net, seed=0).scores(x).numpy()
    got = SpikeModel.load(path).scores(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("form,fire", [("lif", ">="), ("beta", ">")])
def test_spike_artifact_reimports_into_spikingjelly(tmp_path, form, fire):
    cfg = config_from_dict(
        {
            "model": {
                "kind": "spiking",
                "layers": [120, 60],
                "init": "normal",
                "init_std": 0.3,
                "neuron": {"form": form, "tau": 1 / 0.15, "fire": fire},
                "encoder": {"carry_membrane": False},
            },
            "train": {"learner": "hebbian"},
        }
    )
    net = build_model(cfg.model, 784, 10, 0)
    path = export_spike(net, tmp_path, hebbian=cfg.train.hebbian, evaluation=cfg.eval.params, name=cfg.name)
    assert path == tmp_path / "model.nir"
    sj = to_spikingjelly(path)
    g = torch.Generator().manual_seed(0)
    spikes = net.encode(net.rates(torch.rand(32, 784, generator=g), torch.randint(0, 10, (32,), generator=g)), g)
    pre = spikes
    for layer in net.layers:
        pre, _ = run_layer(pre, layer.weight.data, torch.zeros(32, layer.weight.shape[0]), net.dynamics)
    with torch.no_grad():
        out, _ = sj(spikes, None)
    assert pre.sum() > 100
    assert torch.equal(out, pre)


def test_cli_export_refuses_spike_format_for_analog(analog_run, tmp_path, capsys):
    from spikingjelly_ff.cli import main

    assert main(["export", str(analog_run / "model"), "--format", "spike", "--out", str(tmp_path / "x")]) == 2
    assert "needs a spiking model" in capsys.readouterr().err


def test_analog_runtime_scores_with_its_current_weights(analog_run, mini, tmp_path):
    """AnalogModel converts its weights for onnxruntime once per weight version: after a
    Hebbian update, or after new weights are assigned, it scores with the new ones."""
    from spikingjelly_ff.runtime import load_exported

    net, _, _ = load_model(analog_run / "model")
    path = analog_to_onnx(net, tmp_path / "a.onnx")
    model = load_exported(path)
    data = load_split(str(mini), "test")
    x = data.images[:40].astype(np.float32) / np.float32(255.0)
    before = model.run(x)["scores"]
    model.learn(x[:8], data.labels[:8], np.ones(8), eta=0.5)
    after = model.run(x)["scores"]
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, load_exported(model.save(tmp_path / "b.onnx")).run(x)["scores"])
    model.weights = [np.zeros_like(w) for w in model.weights]
    assert np.all(model.run(x)["scores"] == model.run(x)["scores"][0, 0])


def test_weight_only_nodes_run_once_per_version(analog_run, mini, tmp_path):
    """The runtime feeds the weights as inputs; nodes on the weights alone (the label term,
    the weight slices) move to a per-version graph, and the per-call graph answers exactly
    like onnxruntime on the exported file."""
    from spikingjelly_ff.runtime import load_exported
    from spikingjelly_ff.runtime.weight_folding import split_weight_only

    net, _, _ = load_model(analog_run / "model")
    path = analog_to_onnx(net, tmp_path / "a.onnx", latent=True)
    proto = onnx.load(str(path))
    model = load_exported(path)
    served = onnx.ModelProto()
    served.CopyFrom(proto)
    for name in model.weight_names:
        w = next(t for t in proto.graph.initializer if t.name == name)
        served.graph.input.append(onnx.helper.make_tensor_value_info(name, w.data_type, list(w.dims)))
    split = split_weight_only(served, model.weight_names)
    moved = {n.op_type for n in split.derive.graph.node}
    assert {"Slice", "MatMul"} <= moved  # the label term codes @ W[label rows]
    per_call_ops = [n.op_type for n in split.per_call.graph.node]
    assert per_call_ops.count("MatMul") == len(model.weight_names)  # one image matmul per layer
    assert split.derived and set(split.derived) <= {i.name for i in split.per_call.graph.input}
    x = load_split(str(mini), "test").images[:25].astype(np.float32) / np.float32(255.0)
    want = dict(zip([o.name for o in _session(path).get_outputs()], _session(path).run(None, {"images": x})))
    got = model.run(x)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_analog_shift_views_in_torch_and_onnx(tmp_path):
    """shift_views: the classifier sums the scores of the image and of its copies moved one
    pixel down, up, right and left; the ONNX graph makes the same views itself."""
    from spikingjelly_ff.functional.views import translate, view_offsets

    cfg = config_from_dict({"model": {"kind": "analog", "layers": [30, 20], "shift_views": 1}})
    net = build_model(cfg.model, 784, 10, 0)
    net.image_shape = (28, 28)
    x = torch.rand(25, 784, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        manual = sum(net.scores(translate(x, (28, 28), dy, dx)) for dy, dx in view_offsets(1))
        torch.testing.assert_close(net.view_scores(x), manual, rtol=1e-5, atol=1e-5)
        centre = torch.sigmoid(net.scores(x))
    assert len(view_offsets(1)) == 5 and len(view_offsets(2)) == 9
    path = analog_to_onnx(net, tmp_path / "views.onnx", latent=True)
    out = dict(zip([o.name for o in _session(path).get_outputs()], _session(path).run(None, {"images": x.numpy()})))
    np.testing.assert_allclose(out["scores"], manual.numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(out["label"], manual.argmax(1).numpy())
    np.testing.assert_allclose(out["probability"], centre.numpy(), rtol=1e-6, atol=1e-6)
    assert out["latent"].shape == (25, 10, 50)
    net.image_shape = None
    with pytest.raises(ValueError, match="image shape"):
        analog_to_onnx(net, tmp_path / "no-shape.onnx")


def test_translate_moves_pixels_and_fills_zeros():
    """One translation for torch and numpy: the same pixels move, zeros fill in, and a move
    past the edge leaves an empty image."""
    from spikingjelly_ff.functional.views import translate

    img = torch.arange(1, 13, dtype=torch.float32).reshape(1, 12)  # 3 x 4
    down_left = translate(img, (3, 4), 1, -1).reshape(3, 4)
    assert down_left.tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]]
    assert translate(img, (3, 4), -2, 3).reshape(3, 4).tolist() == [[0, 0, 0, 9], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(translate(img, (3, 4), 0, 0), img)
    for dy, dx in [(3, 0), (4, 0), (-5, 0), (0, 4), (0, -7), (9, 9)]:  # out of the frame: nothing left
        assert not translate(img, (3, 4), dy, dx).any() and not translate(img.numpy(), (3, 4), dy, dx).any()
    x = torch.rand(7, 28 * 28, generator=torch.Generator().manual_seed(0))
    for dy, dx in [(1, 0), (-1, 0), (0, 1), (0, -1), (2, -3), (-5, 4)]:
        t = translate(x, (28, 28), dy, dx)
        n = translate(x.numpy(), (28, 28), dy, dx)
        assert isinstance(n, np.ndarray) and n.dtype == np.float32 and n.shape == (7, 784)
        assert np.array_equal(t.numpy(), n)
        pad = torch.nn.functional.pad(x.reshape(7, 28, 28), (5,) * 4)  # the same move by padding
        want = pad[:, 5 - dy : 5 - dy + 28, 5 - dx : 5 - dx + 28].reshape(7, 784)
        assert torch.equal(t, want)
