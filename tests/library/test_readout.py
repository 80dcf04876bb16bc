"""The linear softmax readout (``train.readout``): its closed-form gradient against autograd, its
input from conv trace maps, and a competitive spiking conv net with a readout from training
through checkpoint and the spike artefact to the numpy runtime."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import MINI
from edit_utils import edit_h5
from test_conv_competitive import _config
from test_runtime import _run_without_torch

from spikingjelly_ff.cli import main as sjff
from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.functional.readout import (
    fold_standardization,
    map_latent,
    readout_grad,
    readout_grid,
    readout_logits,
)
from spikingjelly_ff.learning.conv_engine import SpikingConvScorer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.config import ConfigError
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.readout import train_readout
from spikingjelly_ff.runs.train import train
from spikingjelly_ff.runtime import ArtifactError, load_exported, read_artifact

SMALL = "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 30, kernel: 3, padding: 1}]"
# a competitive spiking conv net with a readout on both layers, on the MNIST subset
READOUT_RUN = [
    SMALL, f"data.dataset={MINI}", "data.download=false", "train.epochs=1", "train.limit=300", "eval.limit=200",
    "train.hebbian={eta: 0.002, eligibility_tau: 0.1, learn_after: 7, update: presentation}",
    "train.hebbian_apply=optimizer", "train.optimizer={kind: adam, lr: 0.001}", "train.batch_size=10",
    "train.readout={enabled: true, layers: [0, 1], epochs: 3, lr: 0.001, weight_decay: 0.001, schedule: cosine}",
]  # fmt: skip


def test_readout_gradient_is_the_autograd_gradient_of_its_loss():
    """For random latents, weights and labels (float64), the closed form (softmax - onehot)^T h / N
    equals autograd's gradient of the mean cross-entropy, in torch and in numpy."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(9, 14, generator=g, dtype=torch.float64)
    w = torch.randn(5, 14, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 2, 1])
    z = readout_logits(h, w, b)
    torch.nn.functional.cross_entropy(z, y).backward()
    dw, db = readout_grad(h, z.detach().clone(), y)
    torch.testing.assert_close(dw, w.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(db, b.grad, rtol=1e-12, atol=1e-12)
    dwn, dbn = readout_grad(h.numpy(), z.detach().numpy().copy(), y.numpy())
    np.testing.assert_allclose(dwn, w.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbn, b.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_map_latent_averages_each_map_on_its_grid():
    """Each chosen map is averaged over the windows of a g x g tiling (avg_pool2d with the window
    side OH / g), in the chosen order; numpy gives the same; a standardised readout folded into
    its weights gives the same logits on raw latents."""
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(3, 4, 12, 12, generator=g), torch.rand(3, 2, 6, 6, generator=g)]
    got = map_latent(maps, [1, 0], 3)
    want = torch.cat([torch.nn.functional.avg_pool2d(maps[1], 2).flatten(1),
                      torch.nn.functional.avg_pool2d(maps[0], 4).flatten(1)], 1)  # fmt: skip
    torch.testing.assert_close(got, want)
    np.testing.assert_allclose(map_latent([m.numpy() for m in maps], [1, 0], 3), want.numpy(), rtol=1e-6)
    mean, std = got.mean(0), got.std(0) + 0.1
    w, b = torch.randn(10, got.shape[1], generator=g), torch.randn(10, generator=g)
    wf, bf = fold_standardization(w, b, mean, std)
    torch.testing.assert_close(readout_logits(got, wf, bf), readout_logits((got - mean) / std, w, b))


def test_readout_grid_defaults_to_the_smallest_map_and_must_tile():
    shapes = [(30, 24, 24), (60, 12, 12), (120, 6, 6)]
    assert readout_grid(shapes, [0, 1, 2], None) == 6
    assert readout_grid(shapes, [0, 1], None) == 12
    assert readout_grid(shapes, [0, 1, 2], 3) == 3
    with pytest.raises(ValueError, match="must divide both sides"):
        readout_grid(shapes, [0, 1, 2], 4)
    with pytest.raises(ValueError, match="out of range"):
        readout_grid(shapes, [3], None)
    with pytest.raises(ValueError, match="integer >= 1"):
        readout_grid(shapes, [0], 0)


@pytest.fixture(scope="module")
def readout_run(tmp_path_factory):
    """A competitive spiking conv net trained one epoch on 300 subset images, then its readout:
    (run directory, metrics)."""
    out = tmp_path_factory.mktemp("readout_run")
    metrics = train(_config(*READOUT_RUN, kind="spiking"), out, log=lambda s: None, progress=False)
    return out, metrics


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The same run without the readout: (run directory, metrics)."""
    out = tmp_path_factory.mktemp("plain_run")
    cfg = _config(*READOUT_RUN, "train.readout.enabled=false", kind="spiking")
    return out, train(cfg, out, log=lambda s: None, progress=False)


def test_training_with_a_readout_keeps_the_ff_weights_and_classifies_better(readout_run, plain_run):
    """The readout is trained after the FF layers and leaves them as a run without it trains
    them (bit for bit); on the subset it classifies better than the goodness score after this
    short run; the model directory reloads with its readout and its scorer gives the readout's
    accuracy."""
    out, metrics = readout_run
    plain = plain_run[1]
    net, _, meta = load_model(out / "model")
    ref, _, _ = load_model(plain_run[0] / "model")
    assert meta["readout_layers"] == [0, 1] and ref.readout is None
    for a, b in zip(net.layers, ref.layers):
        assert torch.equal(a.weight, b.weight)
    assert metrics["final"]["test_accuracy"] == plain["final"]["test_accuracy"]
    got = metrics["final"]["readout_test_accuracy"]
    assert got > metrics["final"]["test_accuracy"] + 0.05
    assert net.readout_grid == 12 and net.readout.weight.shape == (10, (20 + 30) * 144)
    data = load_split(str(MINI), "test").take(200)
    x, y = data.to_tensors("cpu")
    pred = SpikingConvScorer(net, readout=True).predict(x)
    assert float((pred == y).float().mean()) == pytest.approx(got)


def test_sjff_readout_fits_the_readout_training_would(readout_run, plain_run, tmp_path, capsys):
    """``sjff readout`` on the model trained without a readout, with the run's readout settings,
    gives the readout and the test accuracy of training with it, bit for bit; ``sjff eval``
    then reports that accuracy; a key outside train.readout is refused."""
    sets = [s for s in READOUT_RUN if s.startswith("train.readout=")][0].split("=", 1)[1]
    args = ["readout", str(plain_run[0] / "model"), "--out", str(tmp_path / "ro"), "--json"]
    keys = ["train.readout.layers=[0, 1]", "train.readout.epochs=3", "train.readout.lr=0.001",
            "train.readout.weight_decay=0.001", "train.readout.schedule=cosine"]  # fmt: skip
    assert all(k.split("=")[0].rsplit(".", 1)[1] in sets for k in keys)
    assert sjff(args + [x for k in keys for x in ("--set", k)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["test_accuracy"] == readout_run[1]["final"]["readout_test_accuracy"]
    a, _, _ = load_model(tmp_path / "ro" / "model")
    b, _, _ = load_model(readout_run[0] / "model")
    assert torch.equal(a.readout.weight, b.readout.weight) and torch.equal(a.readout.bias, b.readout.bias)
    assert sjff(["eval", str(tmp_path / "ro" / "model"), "--limit", "200", "--json"]) == 0  # eval.limit
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == got["test_accuracy"]
    assert sjff(["readout", str(plain_run[0] / "model"), "--out", str(tmp_path / "x"), "--set", "seed=3"]) == 2
    assert "train.readout.* keys only" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_exported_readout_scores_in_the_runtime_as_in_torch(readout_run, tmp_path):
    """The spike artefact (format version 5) holds the readout; the numpy runtime scores with it
    as the torch scorer does (same spikes: regular coding), also without torch; on-line
    learning changes the conv kernels and leaves the readout as exported."""
    out, _ = readout_run
    net, cfg, _ = load_model(out / "model")
    path = export_spike(net, tmp_path / "m.nir", hebbian=cfg.train.hebbian)
    art = read_artifact(path)
    assert art.format_version == 5 and art.conv.readout.layers == (0, 1) and art.conv.readout.grid == 12
    model = load_exported(path)
    x = torch.from_numpy(load_split(str(MINI), "test").take(40).images.astype(np.float32) / 255.0)
    want = SpikingConvScorer(net, readout=True).scores(x).numpy()
    got = model.scores(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    goodness = SpikingConvScorer(net).scores(x).numpy()
    assert not np.allclose(got, goodness)  # the readout's logits, not the goodness scores
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys, numpy as np\n"
        "from spikingjelly_ff.runtime import load_exported\n"
        "np.save(sys.argv[3], load_exported(sys.argv[1]).scores(np.load(sys.argv[2])))\n"
    )
    proc = _run_without_torch(code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "s.npy"))
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "s.npy"), got)
    kernels = [k.copy() for k in model.kernels]
    readout = [a.copy() for a in model.art.readout]
    margin = model.learn(x[:5].numpy(), np.arange(5), np.ones(5, np.float32), seed=1)
    assert margin.shape == (5,)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.kernels, kernels))
    saved = read_artifact(model.save(tmp_path / "learned.nir"))
    for a, b in zip(saved.readout, readout):
        assert np.array_equal(a, b)


def test_a_tampered_readout_is_refused(readout_run, tmp_path):
    """A readout of the wrong width, settings without arrays, or a grid that does not tile the
    maps: each is an ArtifactError naming it, not other answers."""
    out, _ = readout_run
    net, _, _ = load_model(out / "model")
    path = export_spike(net, tmp_path / "m.nir")
    with edit_h5(path) as f:
        del f["spikingjelly_ff/readout/weight"]
        f["spikingjelly_ff/readout"].create_dataset("weight", data=np.zeros((10, 7), np.float32))
    with pytest.raises(ArtifactError, match="readout weight"):
        read_artifact(path)
    path = export_spike(net, tmp_path / "m2.nir")
    with edit_h5(path) as f:
        del f["spikingjelly_ff/readout"]
    with pytest.raises(ArtifactError, match="come together"):
        read_artifact(path)
    path = export_spike(net, tmp_path / "m3.nir")
    with edit_h5(path) as f:
        meta = json.loads(f["spikingjelly_ff/meta"][()])
        meta["conv"]["readout"]["grid"] = 5
        del f["spikingjelly_ff/meta"]
        f["spikingjelly_ff"].create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
    with pytest.raises(ArtifactError, match="readout grid 5"):
        read_artifact(path)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.readout.grid=5"], "the readout grid 5 must divide"),
        (["train.readout.layers=[2]"], "must name existing layers"),
        (["train.readout.lr=0"], "lr > 0"),
        (["model.probability={kind: symmetric, eps: 0.01}", "model.goodness_over=location", "train.negatives=mixed"],
         "needs a spiking competitive net"),
    ],
)  # fmt: skip
def test_bad_readout_settings_fail_before_training(sets, message, tmp_path):
    """Each is a ConfigError raised before the first batch (the grid once the net is built)."""
    with pytest.raises(ConfigError, match=message):
        train(_config(*READOUT_RUN, *sets, kind="spiking"), tmp_path, log=lambda s: None, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_onnx_export_refuses_a_model_with_a_readout(tmp_path):
    """The ONNX graph classifies by goodness: a model whose class is its readout's is refused,
    not exported to answer other classes."""
    from conftest import mini_config

    cfg = mini_config("analog", **{"train.limit": 200, "eval.limit": 50, "train.readout.enabled": "true"})
    train(cfg, tmp_path, log=lambda s: None, progress=False)
    assert sjff(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_a_labelled_spiking_conv_net_gets_no_readout():
    """Its activity depends on the label shown: there is no label-free activity to read."""
    cfg = _config("model.probability={kind: symmetric, eps: 0.01}", "model.goodness_over=location",
                  "train.negatives=mixed", kind="spiking")  # fmt: skip
    labelled = build_model(cfg.model, 784, 10, seed=0)
    with pytest.raises(ValueError, match="needs a competitive net"):
        train_readout(labelled, cfg.train.readout, 0, torch.rand(4, 784), torch.arange(4), "cpu", log=lambda s: None)


def test_sjff_readout_always_enables_the_readout(plain_run, tmp_path, capsys):
    """``--set train.readout.enabled=false`` cannot write a model whose config says it has no
    readout while its weights hold one; and a readout needs at least two training images."""
    args = ["readout", str(plain_run[0] / "model"), "--out", str(tmp_path / "ro")]
    args += ["--set", "train.readout.enabled=false", "--set", "train.readout.epochs=1"]
    assert sjff(args) == 0
    net, cfg, _ = load_model(tmp_path / "ro" / "model")
    assert cfg.train.readout.enabled and net.readout is not None
    with pytest.raises(ValueError, match="at least 2 images"):
        train_readout(net, cfg.train.readout, 0, torch.rand(1, 784), torch.zeros(1, dtype=torch.long), "cpu")
