"""A spiking conv FF net served over real gRPC on loopback: saved as a run's model, exported
with ``sjff export --format spike``, loaded by a real server process; ModelInfer gives the
numpy runtime's (and the torch scorer's) labels, and a Learn bumps the version and serves the
learned weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import serving_utils as su
import torch
from sjff_client import Client
from sjff_server.harness import ServerProcess

from spikingjelly_ff.cli import main as sjff
from spikingjelly_ff.learning.conv_engine import SpikingConvScorer, SpikingConvTrainer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import save_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runtime import SpikeConvModel, load_exported

# a small net with deterministic (regular) spike coding, so that torch and numpy draw alike
SPIKING_CONV = [
    "model.kind=spiking", "model.layers=[]", "model.goodness_over=location",
    "model.conv=[{channels: 4, kernel: 5, pool: max}, {channels: 6, kernel: 3, padding: 1}]",
    "model.probability={kind: symmetric, eps: 0.01}", "model.embedding={kind: pattern, bits: 20, density: 0.3}",
    "model.neuron={form: beta, beta: 0.85, v_threshold: 0.001}", "model.trace={kind: leaky, decay: 0.85}",
    "model.encoder={gain: 0.5, steps: 12, rest_steps: 0, carry_membrane: false, coding: regular}",
    "train.learner=hebbian", "train.hebbian={eta: 0.05, eligibility_tau: 0.1, learn_after: 5}",
]  # fmt: skip


#: SpikingJelly's soft reset (a spike lowers V by the threshold) instead of V <- 0
SOFT = ["model.neuron={form: beta, beta: 0.85, v_threshold: 0.05, v_reset: null}"]


@pytest.fixture(scope="module", params=["hard-reset", "soft-reset"])
def spiking_conv_export(tmp_path_factory, request):
    """(the torch net, its spike export via ``sjff export``) of a small untrained spiking conv
    net with random label weights (so that its labels vary), with either reset."""
    d = tmp_path_factory.mktemp("spiking_conv")
    cfg = load_config(None, SPIKING_CONV + (SOFT if request.param == "soft-reset" else []))
    assert cfg.model.neuron.soft_reset == (request.param == "soft-reset")
    net = build_model(cfg.model, 784, 10, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers:
            layer.label_bias.copy_(torch.randn(layer.label_bias.shape, generator=g) * 0.1)
    save_model(d / "run" / "model", net, cfg)
    assert sjff(["export", str(d / "run" / "model"), "--format", "spike", "--out", str(d / "export")]) == 0
    return net, d / "export" / "model.nir"


def _learn_and_compare(c, local, x, labels, model: str, before) -> None:
    """Learn the first six samples through the server and on ``local`` (the export loaded
    here), seed 5: the same log-odds back, version 1 served with the same scores, which differ
    from ``before``'s (the update reached inference)."""
    r = c.learn(x[:6], labels[:6], model=model, seed=5)
    assert r.version == 1 and r.log_odds.shape == (6,)
    lo = local.learn(x[:6], labels[:6], np.ones(6, np.float32), seed=5)
    np.testing.assert_allclose(r.log_odds, lo, rtol=1e-5, atol=1e-4)
    after = c.infer(x, model=model)
    assert after.version == 1
    np.testing.assert_allclose(after.scores, local.scores(x, seed=0), rtol=1e-5, atol=1e-4)
    assert np.abs(after.scores - before.scores).max() > 1e-3


def test_serves_and_learns_a_spiking_conv_model(spiking_conv_export, tmp_path, token_path, mnist_samples):
    net, path = spiking_conv_export
    images, labels = mnist_samples
    x = su.as_float(images[:20])
    repo = su.make_repository(tmp_path / "repo", {"sconv": path})
    local = load_exported(path)
    assert isinstance(local, SpikeConvModel) and local.eta == pytest.approx(0.05)
    want = SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy()
    assert len(set(want.tolist())) > 1  # the check below tells labels apart
    args = ["--max-eta", "1", "--snapshot-interval", "0"]
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            meta = c.model_metadata("sconv")
            assert meta.platform == "spikingjelly_ff_spike"
            latent = next(o for o in meta.outputs if o.name == "latent")
            assert list(latent.shape) == [-1, local.latent_width]
            got = c.infer(x, model="sconv")
            assert got.version == 0
            assert np.array_equal(got.label, want)
            np.testing.assert_allclose(got.scores, local.scores(x, seed=0), rtol=1e-5, atol=1e-4)
            lat = c.infer(x[:2], model="sconv", return_latent=True).outputs["latent"]
            assert lat.shape == (2, local.latent_width) and lat.sum() > 0

            _learn_and_compare(c, local, x, labels, "sconv", got)
        assert srv.stop() == 0


def _competitive_net(mnist_samples, *extra: str):
    """(config, net) of a small channel-wise competitive spiking conv net, trained a little on
    digits 20-254 so that its labels on the first 20 vary; ``extra``: more config settings."""
    sets = [s for s in SPIKING_CONV if not s.startswith(("model.goodness_over", "model.probability", "model.conv"))]
    cfg = load_config(None, [
        *sets, "model.goodness_over=group:10", "train.negatives=none",
        "model.probability={kind: competitive, temperature: 0.2, eps: 1.0e-8}",
        "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 30, kernel: 3, padding: 1}]", *extra,
    ])  # fmt: skip
    net = build_model(cfg.model, 784, 10, seed=0)
    images, labels = mnist_samples
    trainer = SpikingConvTrainer(net, replace(cfg.train.hebbian, eta=0.002))
    for i in range(20, 255, 5):
        trainer.train_batch(torch.from_numpy(su.as_float(images[i : i + 5])), torch.from_numpy(labels[i : i + 5]), None)
    return cfg, net


def _export(net, cfg, tmp_path):
    """``net`` saved as a run's model and exported by ``sjff export --format spike``; the folder."""
    save_model(tmp_path / "run" / "model", net, cfg)
    path = tmp_path / "export"
    assert sjff(["export", str(tmp_path / "run" / "model"), "--format", "spike", "--out", str(path)]) == 0
    return path


def test_serves_and_learns_a_competitive_spiking_conv_model(tmp_path, token_path, mnist_samples):
    """A channel-wise competitive spiking conv export (no label input, one presentation scores
    every class): served labels are the torch scorer's, a Learn with true labels returns the
    runtime's class margins and is durable and versioned, and a negative sample is refused
    with INVALID_ARGUMENT and changes nothing."""
    import grpc

    cfg, net = _competitive_net(mnist_samples)
    images, labels = mnist_samples
    x = su.as_float(images[:20])
    path = _export(net, cfg, tmp_path)
    local = load_exported(path)
    assert isinstance(local, SpikeConvModel) and local.competitive
    want = SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy()
    assert len(set(want.tolist())) > 1  # the check below tells labels apart
    repo = su.make_repository(tmp_path / "repo", {"comp": path / "model.nir"})
    # a digest of the state with every update, stats and a snapshot: each hashes or writes the
    # empty label weights and their eligibility
    args = ["--max-eta", "1", "--snapshot-interval", "0", "--digest-every", "1"]
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            got = c.infer(x, model="comp")
            assert got.version == 0 and np.array_equal(got.label, want)
            with pytest.raises(grpc.RpcError) as err:
                c.learn(x[:4], labels[:4], positive=[1, 0, 1, 1], model="comp")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "true labels only" in err.value.details()
            assert c.infer(x, model="comp").version == 0  # the refused update changed nothing
            _learn_and_compare(c, local, x, labels, "comp", got)  # the runtime's class margins back
            r = c.learn(x[6:9], labels[6:9], model="comp", seed=6)
            assert r.version == 2
            local.learn(x[6:9], labels[6:9], np.ones(3, np.float32), seed=6)
            stats = c.stats(model="comp").models[0]
            assert stats.learning_version == 2 and stats.updates_refused == 1
            snap = c.snapshot(model="comp", export=True)
            assert snap.version == 2 and snap.bytes > 0
            exported = load_exported(snap.artifact_path)  # the served state as a spike artefact
            assert exported.competitive
            for a, b in zip(exported.weights + exported.eligibility, local.weights + local.eligibility):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert srv.stop() == 0
    # the acknowledged updates survive a restart
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            again = c.infer(x, model="comp")
            assert again.version == 2
            np.testing.assert_allclose(again.scores, local.scores(x, seed=0), rtol=1e-5, atol=1e-4)
        assert srv.stop() == 0


def test_state_digest_of_empty_arrays():
    """A competitive net's label weights are [0, C, OH, OW]: the digest hashes their dtype and
    shape (an empty view cannot be cast to bytes), and tells shapes apart."""
    from sjff_server.storage.snapshots import state_digest

    w = [np.ones((2, 1, 3, 3), np.float32), np.zeros((0, 2, 4, 4), np.float32)]
    e = [np.zeros_like(a) for a in w]
    digest = state_digest(w, e)
    assert digest == state_digest([a.copy() for a in w], e)
    assert digest != state_digest([w[0], np.zeros((0, 2, 4, 5), np.float32)], e)
    assert digest != state_digest([w[0] * 2, w[1]], e)


def test_serves_a_spiking_conv_model_with_a_readout(tmp_path, token_path, mnist_samples):
    """A competitive spiking conv net with a linear readout (``train.readout``), exported: the
    server answers the readout's classes (the torch scorer's with its readout and the runtime's,
    not the goodness score's), a Learn changes the conv kernels and returns the readout's class
    margins, and the served state exported as a snapshot keeps the readout as it was."""
    from spikingjelly_ff.runs.readout import train_readout

    cfg, net = _competitive_net(mnist_samples, "train.readout={enabled: true, layers: [0, 1], epochs: 5, lr: 0.003}")
    images, labels = mnist_samples
    x = su.as_float(images[:20])
    fit = torch.from_numpy(su.as_float(images[20:255]))
    train_readout(net, cfg.train.readout, 0, fit, torch.from_numpy(labels[20:255]).long(), "cpu", log=lambda s: None)
    path = _export(net, cfg, tmp_path)
    local = load_exported(path)
    assert local.art.readout is not None
    want = SpikingConvScorer(net, readout=True).predict(torch.from_numpy(x)).numpy()
    goodness = SpikingConvScorer(net).predict(torch.from_numpy(x)).numpy()
    assert not np.array_equal(want, goodness) and len(set(want.tolist())) > 1  # the check tells them apart
    repo = su.make_repository(tmp_path / "repo", {"ro": path / "model.nir"})
    args = ["--max-eta", "1", "--snapshot-interval", "0"]
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            got = c.infer(x, model="ro")
            assert got.version == 0 and np.array_equal(got.label, want)
            kernels = [k.copy() for k in local.kernels]
            _learn_and_compare(c, local, x, labels, "ro", got)  # the readout's class margins back
            assert any(np.abs(a - b).max() > 0 for a, b in zip(local.kernels, kernels))
            snap = c.snapshot(model="ro", export=True)
            exported = load_exported(snap.artifact_path)
            for a, b in zip(exported.art.readout, local.art.readout):
                assert np.array_equal(a, b)
            for a, b in zip(exported.weights, local.weights):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert srv.stop() == 0
