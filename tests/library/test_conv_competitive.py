"""Channel-wise competitive conv FF (``probability.kind: competitive``): the probability's
modulation and the Hebbian conv theorem, the nets and their training, the ONNX export and the
torch-free runtime's on-line learning, and the settings that must be refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from edit_utils import edit_h5, save_edited

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.export.spike import artifact_from_model
from spikingjelly_ff.functional.conv import conv_goodness, ff_conv_hebbian_deltas, length_normalize_map
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import class_margin
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.runs.analysis import analyze_model, latents
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import save_model
from spikingjelly_ff.runs.config import ConfigError, load_config
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.train import train
from spikingjelly_ff.runtime import load_exported

CONV = "[{channels: 10, kernel: 5, pool: max}, {channels: 20, kernel: 3, padding: 1}]"


def _config(*sets: str, kind: str = "analog"):
    base = [
        "model.layers=[]",
        f"model.kind={kind}",
        "model.probability={kind: competitive, temperature: 0.2, eps: 1.0e-8}",
        "model.goodness_over=group:10",
        "model.goodness=mean_squares",
        f"model.conv={CONV}",
        "train.negatives=none",
    ]
    if kind == "spiking":  # the shipped spiking conv settings (conv/spiking-mnist)
        base += [
            "train.learner=hebbian",
            "model.goodness=sum_squares",
            "model.neuron={form: beta, beta: 0.85, v_threshold: 0.001, fire: '>', kwta: null}",
            "model.trace={kind: leaky, decay: 0.85}",
            "model.encoder={gain: 0.5, steps: 23, rest_steps: 0, carry_membrane: false, coding: regular}",
        ]
    return load_config(None, [*base, *sets])


def _net(*sets: str, seed: int = 0, scale: float = 3.0):
    """An analog competitive net whose kernels are scaled up so that every class group is
    active on real digits (the default init leaves G tiny, the scores near uniform)."""
    net = build_model(_config(*sets).model, 784, 10, seed=seed)
    net.image_shape = (28, 28)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(scale)
    return net


def _images(mini, n: int = 12, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    split = load_split(str(mini), "test")
    x = split.images[offset : offset + n].reshape(n, -1).astype(np.float32) / np.float32(255.0)
    return x, split.labels[offset : offset + n]


# -- the math ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_modulation_is_minus_the_loss_gradient_in_torch_and_numpy(temperature):
    prob = Probability("competitive", temperature=temperature, eps=0.01)
    g = torch.rand(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    g.requires_grad_(True)
    labels = torch.tensor([0, 3, 9, 2, 2, 7])
    prob.loss(g, labels).backward()  # mean over the 6 samples
    m = prob.modulation(g.detach(), labels)
    torch.testing.assert_close(m, -g.grad * 6)
    np.testing.assert_allclose(prob.modulation(g.detach().numpy(), labels.numpy()), m.numpy(), rtol=1e-12)
    log_p = prob.logit(g.detach())
    np.testing.assert_allclose(prob.logit(g.detach().numpy()), log_p.numpy(), rtol=1e-12)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(6, dtype=torch.float64))
    assert prob.competitive and not prob.split


@pytest.mark.parametrize("goodness_kind", ["sum_squares", "mean_squares"])
@pytest.mark.parametrize("seed,stride,padding", [(0, 1, 0), (1, 2, 1), (2, 1, 2)])
def test_hebbian_conv_delta_equals_minus_the_competitive_gradient(goodness_kind, seed, stride, padding):
    """The theorem for competitive conv layers: with ReLU and a quadratic goodness per class
    group, the modulated Hebbian correlation is -dL/dW (and -dL/dB for label weights)."""
    g = torch.Generator().manual_seed(seed)
    prob = Probability("competitive", temperature=0.3, eps=0.01)
    x = torch.rand(5, 3, 9, 9, dtype=torch.float64, generator=g)
    w = (torch.randn(20, 3, 3, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    z = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
    code = torch.rand(5, 4, dtype=torch.float64, generator=g)
    b = (torch.randn(4, *z.shape[1:], dtype=torch.float64, generator=g) * 0.5).requires_grad_(True)
    labels = torch.randint(0, 10, (5,), generator=g)
    act = torch.relu(z + torch.einsum("nl,lchw->nchw", code, b))
    assert 0 < float((act > 0).double().mean()) < 1  # some units off: ReLU matters
    prob.loss(conv_goodness(act, goodness_kind, over="group:10"), labels).backward()
    dw, db = ff_conv_hebbian_deltas(
        prob, act.detach(), x, labels, code, 3, stride, padding, goodness_kind, "group:10"
    )  # fmt: skip
    torch.testing.assert_close(dw, -w.grad)
    torch.testing.assert_close(db, -b.grad)
    assert float(dw.abs().max()) > 1e-3


# -- config and nets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets,message",
    [
        (["model.conv=[]", "model.layers=[20]"], "needs a conv net"),
        (["train.negatives=paired"], "go together"),
        (["model.goodness_over=location"], "one channel group per class"),
        (["model.probability.temperature=0"], "temperature > 0"),
    ],
)
def test_config_refuses_what_a_competitive_net_cannot_do(sets, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        _config(*sets)


def test_negatives_none_needs_the_competitive_probability():
    with pytest.raises(ConfigError, match="go together"):
        load_config("conv/analog-mnist", ["train.negatives=none"])


def test_a_group_count_other_than_the_classes_is_refused_when_built():
    cfg = _config("model.goodness_over=group:5")
    with pytest.raises(ValueError, match="group:10"):
        build_model(cfg.model, 784, 10, seed=0)


def test_the_net_sees_no_label_and_scores_in_one_pass(mini):
    net = _net()
    assert all(layer.label_bias is None for layer in net.layers)
    x, _ = _images(mini, 8)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        scores = net.scores(xt)
        acts = net.activities(xt)
        by_layer = [net.probability.logit(net.layer_goodness(a)) for a in acts]
    torch.testing.assert_close(scores, sum(by_layer[i] for i in net.score_layers))
    assert scores.shape == (8, 10)
    with pytest.raises(TypeError, match="judges classes"):
        net.pn_logit(acts)


# -- training ----------------------------------------------------------------------------------


def test_analog_competitive_net_learns_the_subset(tmp_path, mini):
    cfg = _config(
        f"data.dataset={mini}", "data.download=false", "train.epochs=3", "train.batch_size=5",
        "train.optimizer.lr=0.003", "train.augment_shift=1",
        "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 40, kernel: 3, padding: 1}]",
    )  # fmt: skip
    metrics = train(cfg, tmp_path, log=lambda s: None, progress=False)
    assert metrics["final"]["test_accuracy"] > 0.5  # chance is 0.1; 0.674 on this machine
    assert metrics["epochs"][-1]["train_pn_accuracy"] > 0.5  # the true class won in training


def test_analyze_counts_the_silent_channels_of_a_saved_conv_model(tmp_path, mini):
    cfg = _config(f"data.dataset={mini}", "data.download=false")
    net = _net()
    before = analyze_model(save_model(tmp_path / "alive", net, cfg), limit=40)
    assert before["silent"] == [0, 0] and before["widths"] == [10, 20]
    with torch.no_grad():  # inputs and pooled ReLU maps are >= 0: negative kernels never open
        net.layers[0].weight[3] = -net.layers[0].weight[3].abs()
        net.layers[1].weight[[0, 7]] = -net.layers[1].weight[[0, 7]].abs()
    after = analyze_model(save_model(tmp_path / "dark", net, cfg), limit=40)
    assert after["silent"] == [1, 2] and after["n"] == 40
    # the latent: each channel's mean over its map, the competitive net shown the plain image
    x, y = (torch.from_numpy(a) for a in _images(mini, 40))
    z = latents(net, x, y)
    torch.testing.assert_close(z, torch.cat([m.mean(dim=(2, 3)) for m in net.activities(x)], dim=1))
    assert z.shape == (40, 30) and not z[:, [3, 10, 17]].any()
    spiking = build_model(_config(kind="spiking").model, 784, 10, seed=0)
    with pytest.raises(ValueError, match="spiking conv model has none yet"):
        latents(spiking, x, y)


# -- export and runtime ------------------------------------------------------------------------


def _session_outputs(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": x})))


@pytest.mark.parametrize("views", [0, 1])
def test_onnx_export_matches_torch(tmp_path, mini, views):
    net = _net("model.score_layers=[0, 1]")
    net.shift_views = views
    x, _ = _images(mini)
    out = _session_outputs(analog_to_onnx(net, tmp_path / "c.onnx"), x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        acts = net.activities(xt)
        total = sum(net.probability.logit(net.layer_goodness(a)) for a in acts)
        ref = {
            "scores": net.view_scores(xt).numpy(),
            "probability": torch.softmax(total, 1).numpy(),
            "goodness": torch.stack([net.layer_goodness(a) for a in acts], 2).numpy(),
        }
    for key, value in ref.items():
        tol = 1e-5 + 4e-6 * float(np.abs(value).max())
        np.testing.assert_allclose(out[key], value, rtol=0, atol=tol, err_msg=key)
    assert np.array_equal(out["label"], net.predict(xt).numpy())
    # the scores are no constant: they differ between classes and between images
    assert np.ptp(out["scores"], axis=1).min() > 0.1 and np.ptp(out["scores"], axis=0).max() > 0.1


def _torch_competitive_step(net, xt, labels, eta, tau, elig) -> list[torch.Tensor]:
    """The reference update on the torch net: each layer's Hebbian delta from the torch
    activities (``ff_conv_hebbian_deltas``), applied with ``apply_delta``."""
    with torch.no_grad():
        acts = net.activities(xt)
        inp = xt.reshape(len(xt), 1, 28, 28)
        for i, (layer, spec, act) in enumerate(zip(net.layers, net.specs, acts)):
            pre = length_normalize_map(inp, layer.normalize_input) if layer.normalize_input else inp
            dw, _ = ff_conv_hebbian_deltas(
                net.probability, act, pre, labels, None, spec.kernel, spec.stride, spec.padding, net.goodness_kind,
                net.over,
            )  # fmt: skip
            apply_delta(layer.weight.data, dw, eta, tau, elig[i])
            inp = layer.pool(act)
    return acts


@pytest.mark.parametrize("tau", [None, 0.3], ids=["no-trace", "trace"])
def test_runtime_learns_as_torch_does(tmp_path, mini, tau):
    eta = 0.05
    net = _net()
    model = load_exported(analog_to_onnx(net, tmp_path / "c.onnx", hebbian=HebbianParams(eta=eta, eligibility_tau=tau)))
    start = [layer.weight.detach().clone() for layer in net.layers]
    elig = [torch.zeros_like(layer.weight) for layer in net.layers]
    x_all, y_all = _images(mini, 24)
    for step in range(3):
        x, labels = x_all[step * 8 : (step + 1) * 8], y_all[step * 8 : (step + 1) * 8]
        model = model.copy()  # as the server learns: on a copy of the published model
        got = model.learn(x, labels, np.ones(len(x), dtype=np.float32))
        acts = _torch_competitive_step(net, torch.from_numpy(x), torch.from_numpy(labels), eta, tau, elig)
        with torch.no_grad():
            want = class_margin(net.score_activities(acts), torch.from_numpy(labels))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-4)
        for i, layer in enumerate(net.layers):
            np.testing.assert_allclose(model.weights[i], layer.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
    moved = [float((layer.weight.detach() - w0).abs().max()) for layer, w0 in zip(net.layers, start)]
    assert min(moved) > 1e-4, moved
    x, _ = _images(mini, 6, offset=30)
    with torch.no_grad():
        ref = net.view_scores(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.scores(x), ref, rtol=0, atol=1e-5 + 4e-6 * float(np.abs(ref).max()))


def test_runtime_refuses_negatives_and_bad_labels_and_loses_nothing(tmp_path, mini):
    model = load_exported(analog_to_onnx(_net(), tmp_path / "c.onnx"))
    before = [w.copy() for w in model.weights]
    x, labels = _images(mini, 4)
    with pytest.raises(ValueError, match="true labels only"):
        model.learn(x, labels, np.array([1, 0, 1, 1], dtype=np.float32))
    with pytest.raises(ValueError, match="label"):
        model.learn(x, np.array([0, 1, 2, 10]), np.ones(4, dtype=np.float32))
    for w, w0 in zip(model.weights, before):
        np.testing.assert_array_equal(w, w0)


# -- spiking -----------------------------------------------------------------------------------


def test_spiking_competitive_net_learns_without_labels_in_its_input(tmp_path, mini):
    """The Hebbian conv rule with the competitive modulation (no autograd): no label weights,
    one presentation per image in training and one per image in scoring."""
    from spikingjelly_ff.learning.conv_engine import SpikingConvTrainer

    cfg = _config(
        f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.batch_size=10",
        "train.hebbian={eta: 0.002, eligibility_tau: 0.1, learn_after: 7, schedule: cosine}",
        "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 40, kernel: 3}]", kind="spiking",
    )  # fmt: skip
    net = build_model(cfg.model, 784, 10, seed=0)
    assert net.label_width == 0 and all(layer.label_bias.shape[0] == 0 for layer in net.layers)
    trainer = SpikingConvTrainer(net, cfg.train.hebbian, 10, seed=3)
    x = torch.rand(4, 784)
    image, code = trainer.draw(x, torch.tensor([0, 1, 2, 3]))
    assert code.shape == (23, 4, 0)
    w0 = [layer.weight.detach().clone() for layer in net.layers]
    right = trainer.train_batch(x, torch.tensor([0, 1, 2, 3]), torch.ones(4))
    assert right.dtype == torch.bool and right.shape == (4,)
    assert all(float((layer.weight.detach() - w).abs().max()) > 0 for layer, w in zip(net.layers, w0))
    metrics = train(cfg, tmp_path, log=lambda s: None, progress=False)
    assert metrics["final"]["test_accuracy"] > 0.3  # chance is 0.1
    art = artifact_from_model(net)  # the spike artefact holds it without label input
    assert not art.conv.labelled and [w.shape[0] for w in art.weights[2:]] == [0, 0]


# -- refusals, batch independence, per-sample draws, reloads ----------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [({"clip": 0.1}, "no clamp"), ({"eps": 0.0}, "eps > 0"), ({"temperature": -1.0}, "temperature > 0")],
)
def test_probability_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Probability("competitive", **kwargs)


@pytest.mark.parametrize(
    "g,labels,message",
    [
        (torch.rand(3), None, r"class goodnesses \[N, C\]"),
        (torch.rand(3, 10), torch.tensor([0, 1, 10]), r"lie in \[0, 10\)"),
        (torch.rand(3, 10), torch.tensor([-1, 0, 0]), r"lie in \[0, 10\)"),
        (torch.rand(3, 10), torch.tensor([0.0, 1.0, 2.0]), "must be integers"),
        (torch.rand(3, 10), torch.tensor([0, 1]), r"shape \[3\]"),
    ],
)
def test_class_goodnesses_and_labels_are_checked(g, labels, message):
    prob = Probability("competitive", temperature=0.2)
    with pytest.raises(ValueError, match=message):
        prob.logit(g) if labels is None else prob.modulation(g, labels)


def test_dense_nets_refuse_the_competitive_probability():
    from spikingjelly_ff.nn.embedding import build_embedding
    from spikingjelly_ff.nn.models import AnalogFFNet

    emb = build_embedding("onehot", 10, 0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="needs a conv net"):
        AnalogFFNet(784, [20, 20], emb, Probability("competitive"))


def test_an_image_scores_the_same_in_any_batch(mini):
    net = _net()
    x, _ = _images(mini, 9)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        torch.testing.assert_close(net.scores(xt[:1]), net.scores(xt)[:1])
        torch.testing.assert_close(net.scores(xt[4:7]), net.scores(xt)[4:7])


def test_per_sample_draws_show_every_row_once_with_its_class():
    from spikingjelly_ff.runs import draws

    labels, index = torch.tensor([3, 1, 4, 1]), torch.tensor([10, 11, 12, 13])
    rows, shown, y, keys = draws.make_samples(labels, index, "none", 10, seed=0, epoch=1)
    assert rows.tolist() == [0, 1, 2, 3] and shown.tolist() == [3, 1, 4, 1] and y.tolist() == [1, 1, 1, 1]
    assert keys.tolist() == [20, 22, 24, 26]


def test_per_sample_training_gives_the_stream_free_result_and_learns(tmp_path, mini):
    sets = (f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.batch_size=5",
            "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 40, kernel: 3, padding: 1}]")  # fmt: skip
    metrics = train(_config(*sets, "train.draws=per-sample"), tmp_path, log=lambda s: None, progress=False)
    assert metrics["final"]["test_accuracy"] > 0.25  # one pass over 2,000 images; chance is 0.1


def test_tampered_onnx_metadata_is_refused_on_load(tmp_path):
    import json

    import onnx

    from spikingjelly_ff.runtime.onnx_meta import META_KEY

    path = analog_to_onnx(_net(), tmp_path / "c.onnx")
    for change, message in [
        (lambda m: m["conv"].update(over="group:5"), "one channel group per class"),
        (lambda m: m.pop("conv"), "one channel group per class"),
        (lambda m: m["conv"]["layers"][0].update(label_weight="w0"), "no label weights"),
    ]:
        proto = onnx.load(str(path))
        prop = next(p for p in proto.metadata_props if p.key == META_KEY)
        meta = json.loads(prop.value)
        change(meta)
        prop.value = json.dumps(meta)
        save_edited(proto, tmp_path / "bad.onnx")
        with pytest.raises(ValueError, match=message):
            load_exported(tmp_path / "bad.onnx")


def test_other_kinds_record_no_temperature():
    assert "temperature" not in Probability("symmetric").to_dict()
    assert Probability("competitive", temperature=0.3).to_dict()["temperature"] == 0.3


def test_a_saved_spiking_competitive_run_reloads_and_evaluates(tmp_path, mini, capsys):
    import json

    from spikingjelly_ff.cli import main as sjff
    from spikingjelly_ff.learning.conv_engine import SpikingConvScorer
    from spikingjelly_ff.runs.checkpoint import load_model

    cfg = _config(
        f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=300", "eval.limit=100",
        "train.hebbian={eta: 0.002, eligibility_tau: 0.1, learn_after: 7, schedule: cosine}", kind="spiking",
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run", log=lambda s: None, progress=False)
    loaded = load_model(tmp_path / "run" / "model")
    net = loaded[0] if isinstance(loaded, tuple) else loaded
    assert net.competitive and net.label_width == 0
    x, _ = _images(mini, 100)
    xt = torch.from_numpy(x)
    once = SpikingConvScorer(net, seed=4, repeats=1).scores(xt)
    # regular coding draws nothing: two presentations give twice the scores of one
    torch.testing.assert_close(SpikingConvScorer(net, seed=4, repeats=2).scores(xt), 2 * once)
    assert float(once.std(0).max()) > 0  # the scores differ between images
    capsys.readouterr()
    assert sjff(["eval", str(tmp_path / "run" / "model"), "--dataset", str(mini), "--limit", "100", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == metrics["final"]["test_accuracy"]  # the reloaded net scores as the trained one


def test_a_labelled_spike_artefact_claiming_a_competitive_model_is_refused(tmp_path):
    """A label-scored net's file edited to say competitive is refused on load, not scored
    without its labels (test_spiking_conv_competitive_runtime has the real competitive files)."""
    import json

    import h5py
    from test_conv_groups import small_group_net

    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runtime.artifact import ArtifactError

    path = export_spike(small_group_net(), tmp_path / "m.nir")
    assert load_exported(path).num_classes == 10  # the untouched file loads
    with edit_h5(path) as f:
        ours = f["spikingjelly_ff"]
        meta = json.loads(ours["meta"][()])
        meta["probability"] = {"kind": "competitive", "eps": 0.01, "temperature": 0.2}
        del ours["meta"]
        ours.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
    with pytest.raises(ArtifactError, match="one channel group per class"):
        load_exported(path)


@pytest.mark.parametrize("labels", [[1.5, 2, 3], [float("nan"), 2, 3], [True, False, True], ["1", "2", "3"]])
def test_runtime_refuses_labels_that_are_no_integers_and_learns_nothing(tmp_path, labels):
    """A fractional, NaN, boolean or text label is refused, not rounded to some class."""
    model = load_exported(analog_to_onnx(_net(), tmp_path / "c.onnx"))
    before = [w.copy() for w in model.weights]
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        model.learn(x, labels, np.ones(3, dtype=np.float32))
    assert all(np.array_equal(w, w0) for w, w0 in zip(model.weights, before))
    model.learn(x, np.array([1.0, 2.0, 3.0]), np.ones(3, dtype=np.float32))  # whole numbers as floats are labels
