"""Presentation updates of a spiking conv net (``HebbianParams.update="presentation"``): the
weights stay fixed while a sample is shown and the summed Hebbian delta of the learning window
is applied once, with eta (torch engine and numpy runtime alike: the runtime's side is
``test_spiking_conv_runtime.test_runtime_learns_like_the_trainer``) or, SpikingJelly style, as
-dW in ``.grad`` for a torch optimizer (``train.hebbian_apply=optimizer``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_spiking_conv import draw, small_net

from spikingjelly_ff.functional.conv import ff_conv_hebbian_deltas
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.learning.conv_engine import SpikingConvTrainer
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.simulation import run_conv_layer

F32 = torch.float32
SPEC = HebbianParams(eta=0.7, eligibility_tau=None, learn_after=4, update="presentation")


def _layer_inputs(over: str, to_numpy: bool, kwta: int | None = None):
    """A layer's weights and one batch of its inputs: the labelled test net's first layer, or
    (``over="competitive"``) a channel-wise competitive net's, with class targets and no label."""
    if over == "competitive":
        from test_spiking_conv_competitive_runtime import _net

        net = _net()
        g = torch.Generator().manual_seed(2)
        x, y = torch.rand(3, 784, generator=g, dtype=F32), torch.randint(0, 10, (3,), generator=g)
        image, code = SpikingConvTrainer(net, SPEC).draw(x, y)
    else:
        net = small_net(over, kwta)
        x, labels, image, code, y = draw(net, 3, 2)
    w, b = net.layers[0].weight.data.clone(), net.layers[0].label_bias.data.clone()
    arrays = [image, code, y, w, b]
    if to_numpy:
        arrays = [a.numpy().copy() for a in arrays]
    return net, arrays


def _step_rule_sum(net, image, code, y, w, b, over, first):
    """The reference: sum over t >= first of the step rule on the trace map after steps 0..t
    (each prefix presented anew from rest with the fixed weights, so the traces come from the
    neuron itself, not from a reconstruction)."""
    d = net.dynamics
    dw_sum, db_sum = 0.0, 0.0
    for t in range(first, image.shape[0]):
        _, tr = run_conv_layer(image[: t + 1], code[: t + 1], w, b, d, over=over)
        dw, db = ff_conv_hebbian_deltas(d.probability, tr, image[t], y, code[t], tuple(w.shape[-2:]), over=over,
                                        goodness_kind=d.goodness)  # fmt: skip
        dw_sum, db_sum = dw_sum + dw, db_sum + db
    return dw_sum, db_sum


@pytest.mark.parametrize("to_numpy", [False, True])
@pytest.mark.parametrize("over,kwta", [("map", None), ("location", None), ("map", 40), ("competitive", None)])
def test_presentation_applies_the_summed_step_rule_once(over, kwta, to_numpy):
    """With eta and no eligibility filter: the layer spikes as it does without learning (the
    weights do not move while the sample is shown) and afterwards W + eta * sum_t dW_t, B +
    eta * sum_t dB_t, on tensors and on numpy arrays; collected instead (``deltas``), the
    weights stay untouched and the list holds those sums."""
    net, (image, code, y, w, b) = _layer_inputs(over, to_numpy, kwta)
    over = net.over
    d, first = net.dynamics, SPEC.learn_after + 1
    want_dw, want_db = _step_rule_sum(net, image, code, y, w, b, over, first)
    still, _ = run_conv_layer(image, code, w, b, d, over=over)
    w0, b0 = w.copy() if to_numpy else w.clone(), b.copy() if to_numpy else b.clone()
    out, _ = run_conv_layer(image, code, w, b, d, over=over, learn=(y, SPEC, 0.7, None, None))
    assert (out == still).all()
    assert _rel(w - w0, 0.7 * want_dw) <= 1e-5 and _rel(b - b0, 0.7 * want_db) <= 1e-5
    assert np.abs(np.asarray(want_dw)).max() > 1e-3  # the window held spikes to learn from
    got: list = []
    w1, b1 = w0.copy() if to_numpy else w0.clone(), b0.copy() if to_numpy else b0.clone()
    run_conv_layer(image, code, w0, b0, d, over=over, learn=(y, SPEC, 0.7, None, None), deltas=got)
    assert (w0 == w1).all() and (b0 == b1).all()  # collected, not applied
    (dw, db), = got  # fmt: skip
    assert _rel(dw, want_dw) <= 1e-5 and _rel(db, want_db) <= 1e-5


def _rel(a, b) -> float:
    """max |a - b| relative to max(1, max |b|) (float32 nets sum in another order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 0.0 if b.size == 0 else float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def test_collected_deltas_need_a_presentation_update():
    net, (image, code, y, w, b) = _layer_inputs("map", False)
    step = replace(SPEC, update="step")
    with pytest.raises(ValueError, match="presentation"):
        run_conv_layer(image, code, w, b, net.dynamics, learn=(y, step, 0.7, None, None), deltas=[])
    with pytest.raises(ValueError, match="presentation"):
        SpikingConvTrainer(net, step, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="update must be one of"):
        HebbianParams(update="batch")
    with pytest.raises(ValueError, match="learn"):
        run_conv_layer(image, code, w, b, net.dynamics, deltas=[])


def test_an_empty_learning_window_is_refused():
    """With learn_after >= T - 1 no step would learn: the trainer and a layer asked for its
    deltas refuse instead of stepping an optimizer on nothing (the weights stay as they were)."""
    net, (image, code, y, w, b) = _layer_inputs("map", False)
    steps = image.shape[0]
    late = replace(SPEC, learn_after=steps - 1)
    w0 = w.clone()
    with pytest.raises(ValueError, match="learning window"):
        run_conv_layer(image, code, w, b, net.dynamics, learn=(y, late, 0.7, None, None), deltas=[])
    assert torch.equal(w, w0)
    x, labels, image, code, y = draw(net, 2, 5)
    params = [p.detach().clone() for p in net.parameters()]
    for update in ("step", "presentation"):
        for optimizer in (None, torch.optim.SGD(net.parameters(), lr=0.1)):
            if optimizer is not None and update == "step":
                continue
            trainer = SpikingConvTrainer(net, replace(SPEC, learn_after=steps - 1, update=update), optimizer=optimizer)
            with pytest.raises(ValueError, match="learning window"):
                trainer.train_batch(x, labels, y, spikes=(image, code))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), params))
    one = SpikingConvTrainer(net, replace(SPEC, learn_after=steps - 2))  # one window step: learns
    one.train_batch(x, labels, y, spikes=(image, code))
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), params))


def test_dense_learners_refuse_presentation_updates(tmp_path):
    """Only spiking conv layers implement presentation updates: the dense spiking engine, the
    analog Hebbian learner, the per-step reference loop, a dense spike artefact and ONNX
    metadata refuse them instead of ignoring them."""
    from test_conv_competitive import _config

    from spikingjelly_ff.export.spike import artifact_from_model
    from spikingjelly_ff.learning.analog_hebbian import AnalogHebbian
    from spikingjelly_ff.learning.engine import SpikingTrainer
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runtime import ArtifactError

    dense = ["model.conv=[]", "model.layers=[20]", "model.probability={kind: symmetric}", "train.negatives=mixed"]
    spiking = build_model(_config(*dense, kind="spiking").model, 784, 10, seed=0)
    analog = build_model(_config(*dense, "model.bias=false").model, 784, 10, seed=0)
    with pytest.raises(ValueError, match="update='step'"):
        SpikingTrainer(spiking, SPEC)
    with pytest.raises(ValueError, match="update='step'"):
        AnalogHebbian(analog, SPEC)
    with pytest.raises(ArtifactError, match="hebbian.update=step"):
        artifact_from_model(spiking, hebbian=SPEC).validate()
    from spikingjelly_ff.learning.reference import ReferenceLoop
    from spikingjelly_ff.runtime.onnx_meta import OnnxMeta

    with pytest.raises(ValueError, match="update='step'"):
        ReferenceLoop(spiking, SPEC)
    import onnx

    from spikingjelly_ff.export.onnx import analog_to_onnx
    from spikingjelly_ff.runtime.onnx_meta import load_onnx_meta

    with pytest.raises(ValueError, match="update='step'"):  # an ONNX runtime learns one delta per batch
        analog_to_onnx(analog, tmp_path / "a.onnx", hebbian=SPEC)
    meta = load_onnx_meta(onnx.load(analog_to_onnx(analog, tmp_path / "a.onnx")))
    broken = meta.to_dict()
    broken["hebbian"] = SPEC.to_dict()
    with pytest.raises(ValueError, match="update='step'"):
        OnnxMeta.from_dict(broken)


def test_an_optimizer_step_is_the_eta_step_it_stands_for():
    """SGD with learning rate lr on -dW / K (K window steps) moves the weights as eta = lr / K
    does without an eligibility filter: the optimizer path writes the Hebbian delta into
    ``.grad`` and nothing else. Two batches, so the second sees the first one's weights."""
    lr, k = 0.3, 9 - SPEC.learn_after - 1
    by_eta, by_sgd = small_net("map"), small_net("map")
    eta = SpikingConvTrainer(by_eta, replace(SPEC, eta=lr / k))
    sgd = SpikingConvTrainer(by_sgd, SPEC, optimizer=torch.optim.SGD(by_sgd.parameters(), lr=1.0),
                             lr_at=lambda progress: lr)  # fmt: skip
    for seed in (3, 4):
        x, labels, image, code, y = draw(by_eta, 4, seed)
        assert torch.equal(eta.train_batch(x, labels, y, spikes=(image, code)),
                           sgd.train_batch(x, labels, y, spikes=(image, code)))  # fmt: skip
    for a, b, start in zip(by_eta.parameters(), by_sgd.parameters(), small_net("map").parameters()):
        assert (a - b).abs().max() <= 1e-12
        assert (a - start).abs().max() > 1e-4
    assert all(p.grad is not None for p in by_sgd.parameters()) and all(p.grad is None for p in by_eta.parameters())


@pytest.mark.parametrize(
    "sets,message",
    [
        (["train.hebbian.update=presentation", "model.conv=[]", "model.layers=[40]",
          "model.probability={kind: symmetric}", "train.negatives=mixed"], "spiking conv nets"),
        (["train.hebbian_apply=optimizer"], "train.hebbian.update=presentation"),
        (["train.hebbian.update=window"], "train.hebbian.update must be one of"),
        (["train.hebbian_apply=adam"], "train.hebbian_apply must be one of"),
    ],
)  # fmt: skip
def test_bad_presentation_settings_are_config_errors(sets, message):
    from test_conv_competitive import _config

    from spikingjelly_ff.runs.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _config(*sets, kind="spiking")


def test_sjff_train_steps_adam_on_hebbian_deltas_and_exports(tmp_path, mini, capsys):
    """``sjff train`` with ``hebbian_apply=optimizer`` (Adam on the Hebbian deltas of a
    competitive spiking conv net, 300 mini-MNIST images): the run learns (well above chance on
    200 test images), its saved config says how it was trained, and the exported artefact's
    runtime scores as the torch scorer and learns on-line (with the step rule at eta)."""
    from test_conv_competitive import _config

    from spikingjelly_ff.cli import main as sjff
    from spikingjelly_ff.learning.conv_engine import SpikingConvScorer
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.train import train

    cfg = _config(
        f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=300", "train.batch_size=5",
        "eval.limit=200", "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 30, kernel: 3, padding: 1}]",
        "train.hebbian={learn_after: 7, update: presentation}", "train.hebbian_apply=optimizer",
        "train.optimizer={kind: adam, lr: 0.003, schedule: cosine}", kind="spiking",
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run", log=lambda s: None, progress=False)
    assert metrics["final"]["test_accuracy"] > 0.2  # chance is 0.1 (0.29 reached)
    net, saved, _ = load_model(tmp_path / "run" / "model")
    assert saved.train.hebbian_apply == "optimizer" and saved.train.hebbian.update == "presentation"
    capsys.readouterr()
    assert sjff(["export", str(tmp_path / "run" / "model"), "--format", "spike", "--out", str(tmp_path / "ex")]) == 0
    assert "learns on-line with the step rule at eta=" in capsys.readouterr().err  # the export says so
    model = load_exported(tmp_path / "ex")
    assert model.learn_spec.update == "step"  # no optimizer in the runtime: on-line, the step rule at eta
    x = load_split(str(mini), "test").images[:100].reshape(100, -1).astype(np.float32) / np.float32(255.0)
    assert np.array_equal(model.predict(x), SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy())
    before = [w.copy() for w in model.weights]
    model.learn(x[:5], np.arange(5), np.ones(5, np.float32))
    assert not np.array_equal(before[0], model.weights[0])


def test_step_settings_serialise_as_before():
    """The default ``update="step"`` is left out of artefact metadata (so earlier runtimes
    still read what this one writes); a presentation update is kept and read back."""
    assert "update" not in HebbianParams().to_dict()
    assert HebbianParams(**SPEC.to_dict()) == SPEC and SPEC.to_dict()["update"] == "presentation"
