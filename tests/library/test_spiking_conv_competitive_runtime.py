"""A channel-wise competitive spiking conv net outside torch: the spike artefact holds it as a
NIR graph without label input, and the numpy runtime (``SpikeConvModel``) scores every class in
one presentation and learns from true labels as the torch trainer and scorer do."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from edit_utils import edit_h5
from test_conv_competitive import _config
from test_runtime import _run_without_torch

from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.functional.params import EncoderParams, HebbianParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.learning.conv_engine import SpikingConvScorer, SpikingConvTrainer, conv_layouts
from spikingjelly_ff.nn.embedding import build_embedding
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import ConvLayerConfig
from spikingjelly_ff.runtime import ArtifactError, SpikeConvModel, load_exported, read_artifact
from spikingjelly_ff.simulation import present_conv

SMALL = "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 30, kernel: 3, padding: 1}]"
SPEC = HebbianParams(eta=0.05, eligibility_tau=0.3, learn_after=7)


def _net():
    """A small competitive spiking net (regular coding: torch and numpy draw nothing) with its
    kernels scaled up so that the class groups differ on random images."""
    net = build_model(_config(SMALL, kind="spiking").model, 784, 10, seed=0)
    net.image_shape = (28, 28)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(3.0)
    return net


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def test_runtime_learns_and_scores_like_torch(tmp_path):
    """Three learning batches of given spikes: the runtime leaves the trainer's kernels and
    eligibility traces (1e-5 of their scale), its class margins are > 0 exactly where the
    trainer judged the class right, and it scores as the torch scorer before and after."""
    net = _net()
    model = load_exported(export_spike(net, tmp_path / "m.nir", hebbian=SPEC))
    assert isinstance(model, SpikeConvModel) and model.competitive
    assert [w.shape[0] for w in model.label_weights] == [0, 0]
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 784, generator=g)
    before = SpikingConvScorer(net).scores(x).numpy()
    got = model.scores(x.numpy())
    assert got.shape == (16, 10) and _rel(got, before) <= 1e-5
    assert np.array_equal(model.predict(x.numpy()), before.argmax(1))

    trainer = SpikingConvTrainer(net, SPEC)
    for step in range(3):
        xb, labels = x[4 * step : 4 * step + 8], torch.randint(0, 10, (8,), generator=g)
        image, code = trainer.draw(xb, labels)
        assert code.shape == (23, 8, 0)
        judged = trainer.train_batch(xb, labels, torch.ones(8), spikes=(image, code))
        margin = model.learn_spikes(image.numpy(), code.numpy(), labels.numpy())
        assert margin.shape == (8,) and np.array_equal(margin > 0, judged.numpy())
    for a, layer in zip(model.kernels, net.layers):
        assert _rel(a, _np(layer.weight)) <= 1e-5
    for a, (e_w, _) in zip(model.eligibility, trainer.eligibility):
        assert _rel(a, _np(e_w)) <= 1e-5 and np.abs(a).max() > 1e-6  # the traces hold something
    after = SpikingConvScorer(net).scores(x).numpy()
    assert np.abs(after - before).max() > 1e-3  # learning changed the scores
    assert _rel(model.scores(x.numpy()), after) <= 1e-5

    # one presentation's class scores equal the net's own score of the same activities
    image, code = trainer.draw(x[:5], torch.zeros(5, dtype=torch.long))
    w, b = [la.weight.data for la in net.layers], [la.label_bias.data for la in net.layers]
    acts = present_conv(image, code, w, b, conv_layouts(net), net.dynamics, net.over)
    want = net.score_activities(acts).numpy()
    assert _rel(model.class_scores_from_spikes(image.numpy()), want) <= 1e-5
    with pytest.raises(TypeError, match="class_scores_from_spikes"):
        model.scores_from_spikes(image.numpy(), [code.numpy()])


def test_artifact_is_a_nir_graph_without_label_input(tmp_path):
    """No ``label`` input and no ``label_i`` nodes; the metadata says ``labelled: false``; the
    empty label weights and the learned eligibility survive a save and a load; a copy learns
    alone."""
    import nir

    net = _net()
    path = export_spike(net, tmp_path / "m.nir", hebbian=SPEC)
    graph = nir.read(str(path))
    assert "label" not in graph.nodes and not any(k.startswith("label_") for k in graph.nodes)
    assert type(graph.nodes["conv_1"]).__name__ == "Conv2d" and ("lif_1", "output") in graph.edges
    assert not any("label" in a or "label" in b for a, b in graph.edges)
    with h5py.File(path) as f:
        meta = json.loads(f["spikingjelly_ff/meta"][()])
    assert meta["conv"]["labelled"] is False and meta["layers"] == ["conv_0", "conv_1"]
    assert meta["probability"]["kind"] == "competitive" and meta["conv"]["over"] == "group:10"
    assert all(la["nodes"]["label_weights"] is None for la in meta["conv"]["layers"])

    model = SpikeConvModel.load(path)
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    model.learn(x, np.array([1, 2, 3, 4]), np.ones(4, np.float32), seed=1)
    again = SpikeConvModel.load(model.save(tmp_path / "learned.nir"))
    assert [w.shape for w in again.weights] == [w.shape for w in model.weights]
    for a, b in zip(again.weights + again.eligibility, model.weights + model.eligibility):
        assert np.array_equal(a, b)
    other = model.copy()
    other.learn(x[:2], np.array([5, 6]), np.ones(2, np.float32), seed=3)
    assert np.array_equal(again.weights[0], model.weights[0]) and not np.array_equal(other.weights[0], model.weights[0])


def test_negatives_and_bad_labels_are_refused_and_change_nothing(tmp_path):
    model = load_exported(export_spike(_net(), tmp_path / "m.nir", hebbian=SPEC))
    before = [w.copy() for w in model.weights + model.eligibility]
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    cases = [
        (np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]), "true labels only"),
        (np.array([1, 2, 10]), np.ones(3, np.float32), "labels"),
        (np.array([1.5, 2, 3]), np.ones(3, np.float32), "labels must be 3 integers"),
    ]
    for labels, positive, message in cases:
        with pytest.raises(ValueError, match=message):
            model.learn(x, labels, positive)
    image, code = model.draw(x, np.array([4, 5, 6]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="integer class labels"):  # 0/1 targets are not classes
        model.learn_spikes(image, code, np.array([1.0, 0.0, 1.0], np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(model.weights + model.eligibility, before))


def _edit_meta(path, edit) -> None:
    """Edit an artefact's metadata by hand, as in a file written before artefacts carried a
    checksum (which an edit would no longer match): the checks after it are the reader's own."""
    with edit_h5(path) as f:
        ours = f["spikingjelly_ff"]
        if "sha256" in ours.attrs:
            del ours.attrs["sha256"]
        meta = json.loads(ours["meta"][()])
        edit(meta)
        del ours["meta"]
        ours.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["conv"].update(labelled=True), "lacks layer"),  # label nodes named but absent
        (lambda m: m["conv"].update(over="group:5"), "one channel group per class"),
        (lambda m: m["conv"].update(labelled="no"), "labelled must be true or false"),
        (lambda m: m.update(probability={"kind": "symmetric", "eps": 0.01}), "needs the competitive probability"),
    ],
    ids=["labelled", "groups", "labelled-type", "not-competitive"],
)
def test_tampered_competitive_artefacts_are_refused(tmp_path, edit, message):
    path = export_spike(_net(), tmp_path / "m.nir")
    assert read_artifact(path).probability.competitive  # the untouched file loads
    _edit_meta(path, edit)
    with pytest.raises(ArtifactError, match=message):
        load_exported(path)


def test_label_nodes_and_a_wrong_format_version_are_refused(tmp_path):
    """A competitive file (format version 3) that holds label nodes (weights a runtime would
    drop, an input other NIR readers would see), or that claims version 2, is refused."""
    path = export_spike(_net(), tmp_path / "m.nir")
    with h5py.File(path) as f:
        assert f["spikingjelly_ff"].attrs["format_version"] == 3
    stray = tmp_path / "stray.nir"
    stray.write_bytes(path.read_bytes())
    with edit_h5(stray) as f:
        f["node/nodes"].create_group("label_0")
    with pytest.raises(ArtifactError, match="label nodes: label_0"):
        load_exported(stray)
    with edit_h5(path) as f:
        f["spikingjelly_ff"].attrs["format_version"] = 2
    with pytest.raises(ArtifactError, match="format version 2 does not match"):
        load_exported(path)


def test_a_labelled_file_claiming_the_competitive_probability_is_refused(tmp_path):
    """A label-scored net with one channel group per class, its file edited to say
    competitive: refused (it has a label input), not scored without its labels."""
    torch.manual_seed(0)
    net = SpikingConvFFNet(
        144, [ConvLayerConfig(20, 3, pool="max", pool_size=2)], build_embedding("pattern", 10, 20, 0.3, 0, 1.0),
        Probability("symmetric", eps=0.01), neuron=NeuronParams(), trace=TraceParams("leaky", 0.85),
        encoder=EncoderParams(gain=0.6, steps=9, carry_membrane=False), over="group:10", image_shape=(12, 12),
    )  # fmt: skip
    path = export_spike(net, tmp_path / "m.nir")
    assert not read_artifact(path).probability.competitive  # the untouched file loads
    _edit_meta(path, lambda m: m.update(probability={"kind": "competitive", "eps": 1e-8, "temperature": 0.2}))
    with pytest.raises(ArtifactError, match="a competitive conv net has no label input"):
        load_exported(path)


def test_runtime_runs_without_torch(tmp_path):
    path = export_spike(_net(), tmp_path / "m.nir", hebbian=SPEC)
    code = """
import sys, json
import numpy as np
from spikingjelly_ff.runtime import load_exported
m = load_exported(sys.argv[1])
x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
s = m.scores(x)
before = m.weights[0].copy()
margin = m.learn(x, np.array([1, 2, 3]), np.ones(3, np.float32))
print(json.dumps({"kind": type(m).__name__, "shape": list(s.shape), "margin": list(margin.shape),
                  "learned": bool((m.weights[0] != before).any()), "torch": "torch" in sys.modules}))
"""
    proc = _run_without_torch(code, str(path))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == {"kind": "SpikeConvModel", "shape": [3, 10], "margin": [3], "learned": True, "torch": False}


def test_a_trained_run_exports_and_the_runtime_agrees_with_torch(tmp_path, mini):
    """``sjff train`` (300 images) then ``sjff export --format spike``: on 200 test images the
    runtime's labels are the torch scorer's, and its accuracy is the run's own evaluation."""
    from spikingjelly_ff.cli import main as sjff
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.train import train

    cfg = _config(
        f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=300", "train.batch_size=5",
        "eval.limit=200",
        "train.hebbian={eta: 0.002, eligibility_tau: 0.1, learn_after: 7, schedule: cosine}", SMALL, kind="spiking",
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run", log=lambda s: None, progress=False)
    assert sjff(["export", str(tmp_path / "run" / "model"), "--format", "spike", "--out", str(tmp_path / "ex")]) == 0
    model = load_exported(tmp_path / "ex")
    net, _, _ = load_model(tmp_path / "run" / "model")
    test = load_split(str(mini), "test")
    x, labels = test.images[:200].reshape(200, -1).astype(np.float32) / np.float32(255.0), test.labels[:200]
    got = model.predict(x)
    assert np.array_equal(got, SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy())
    assert float((got == labels).mean()) == pytest.approx(metrics["final"]["test_accuracy"])
    assert metrics["final"]["test_accuracy"] > 0.2  # chance is 0.1 (0.33 reached)
