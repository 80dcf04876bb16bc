"""An analog conv FF net served over real gRPC on loopback: saved as a run's model, exported
with ``sjff export``, loaded by a real server process; ModelInfer gives the torch net's
labels, and a Learn bumps the version and serves the learned weights."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import serving_utils as su
import torch
from sjff_client import Client
from sjff_server.harness import ServerProcess

from spikingjelly_ff.cli import main as sjff
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import save_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runtime import load_exported

SMALL = "model.conv=[{channels: 4, kernel: 5, pool: max}, {channels: 6, kernel: 3, padding: 1}]"


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory):
    """(the torch net, its ONNX export via ``sjff export``) of a small untrained conv net with
    random label weights (so that its labels vary); learning eta 0.05 from the config."""
    d = tmp_path_factory.mktemp("conv")
    cfg = load_config("conv/analog-mnist", [SMALL, "model.goodness_over=location", "train.hebbian.eta=0.05"])
    net = build_model(cfg.model, 784, 10, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers:
            layer.label_bias.copy_(torch.randn(layer.label_bias.shape, generator=g) * 0.1)
    save_model(d / "run" / "model", net, cfg)
    assert sjff(["export", str(d / "run" / "model"), "--format", "onnx", "--out", str(d / "conv.onnx")]) == 0
    return net, d / "conv.onnx"


def _learn_and_compare(c, local, x, labels, model: str):
    """Learn the first six samples through the server and on ``local`` (the export loaded
    here): the same log-odds back, version 1 served with the same scores. Returns the Learn's
    reply and the inference after it."""
    r = c.learn(x[:6], labels[:6], model=model)
    assert r.version == 1 and r.log_odds.shape == (6,)
    lo = local.learn(x[:6], labels[:6], np.ones(6, np.float32))
    np.testing.assert_allclose(r.log_odds, lo, rtol=1e-6, atol=1e-5)
    after = c.infer(x, model=model)
    assert after.version == 1
    np.testing.assert_allclose(after.scores, local.scores(x), rtol=1e-6, atol=1e-5)
    return r, after


def test_serves_and_learns_a_conv_model(conv_export, tmp_path, token_path, mnist_samples):
    net, path = conv_export
    images, labels = mnist_samples
    x = su.as_float(images[:40])
    repo = su.make_repository(tmp_path / "repo", {"conv": path})
    local = load_exported(path, threads=1)
    assert local.settings.conv is not None and local.eta == pytest.approx(0.05)
    with torch.no_grad():
        want = net.predict(torch.from_numpy(x)).numpy()
    assert len(set(want.tolist())) > 1  # the check below tells labels apart
    args = ["--max-eta", "1", "--snapshot-interval", "0"]
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            got = c.infer(x, model="conv")
            assert got.version == 0
            assert np.array_equal(got.label, want)
            # the same graph and weights (the server's thread count may change the float32 order)
            np.testing.assert_allclose(got.scores, local.scores(x), rtol=1e-6, atol=1e-5)
            assert got.outputs["goodness"].shape == (40, 10, 2)

            _, after = _learn_and_compare(c, local, x, labels, "conv")
            assert np.abs(after.scores - got.scores).max() > 1e-3  # the update reached inference
        assert srv.stop() == 0


def test_row_macs_of_a_conv_export_count_every_label_pass(tmp_path):
    """The event-loop cost estimate of a conv export: every view and label runs every conv
    layer (C I K^2 multiply-adds per output location) and adds its label term (one add per
    unit; code @ B itself depends on the weights alone and runs once per version)."""
    from sjff_server.inference.engine import analog_row_macs

    from spikingjelly_ff.export.onnx import analog_to_onnx

    cfg = load_config("conv/analog-mnist", [SMALL, "model.shift_views=1"])
    net = build_model(cfg.model, 784, 10, seed=0)
    net.image_shape = (28, 28)
    model = load_exported(analog_to_onnx(net, tmp_path / "conv.onnx"), threads=1)
    # the label weights feed only the part of the graph that runs once per weight version
    label_weights = [c.label_weight for c in model.settings.conv.layers]
    assert len(label_weights) == 2 and set(label_weights) <= set(model.graph.derive_inputs)
    # 28 x 28 -> conv 5x5, 4 channels -> 24 x 24, max-pooled to 12 x 12 -> conv 3x3 (padding 1), 6 channels -> 12 x 12
    per_label = (4 * 1 * 5 * 5 * 24 * 24 + 4 * 24 * 24) + (6 * 4 * 3 * 3 * 12 * 12 + 6 * 12 * 12)
    views = 4 * 1 + 1
    assert analog_row_macs(model) == views * 10 * per_label


def test_serves_and_learns_a_competitive_conv_model(tmp_path, token_path, mnist_samples):
    """A competitive conv export (no label input, one pass scores every class): served labels
    are the torch net's, a Learn with true labels is durable and versioned, a negative sample
    is refused with INVALID_ARGUMENT and changes nothing, and the cost estimate counts one
    pass per view."""
    from sjff_server.inference.engine import analog_row_macs

    cfg = load_config(
        None,
        [
            "model.layers=[]", "model.goodness_over=group:10", "train.negatives=none",
            "model.probability={kind: competitive, temperature: 0.2, eps: 1.0e-8}", "train.hebbian.eta=0.05",
            "model.conv=[{channels: 10, kernel: 5, pool: max}, {channels: 20, kernel: 3, padding: 1}]",
        ],
    )  # fmt: skip
    net = build_model(cfg.model, 784, 10, seed=0)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(3.0)  # every class group active on real digits
    save_model(tmp_path / "run" / "model", net, cfg)
    path = tmp_path / "comp.onnx"
    assert sjff(["export", str(tmp_path / "run" / "model"), "--format", "onnx", "--out", str(path)]) == 0
    local = load_exported(path, threads=1)
    per_pass = (10 * 1 * 5 * 5 * 24 * 24) + (20 * 10 * 3 * 3 * 12 * 12)
    assert analog_row_macs(local) == per_pass
    images, labels = mnist_samples
    x = su.as_float(images[:30])
    with torch.no_grad():
        want = net.predict(torch.from_numpy(x)).numpy()
    repo = su.make_repository(tmp_path / "repo", {"comp": path})
    args = ["--max-eta", "1", "--snapshot-interval", "0"]
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            got = c.infer(x, model="comp")
            assert np.array_equal(got.label, want)
            np.testing.assert_allclose(got.outputs["probability"].sum(1), 1.0, rtol=1e-5)
            with pytest.raises(grpc.RpcError) as err:
                c.learn(x[:4], labels[:4], positive=[1, 0, 1, 1], model="comp")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "true labels only" in err.value.details()
            assert c.infer(x, model="comp").version == 0  # the refused update changed nothing
            r, _ = _learn_and_compare(c, local, x, labels, "comp")
            # the returned margins > 0 where the label won: the on-line accuracy counts them
            right = float(np.mean(r.log_odds > 0))
            assert 0 < right < 1  # both kinds among the six, so the count is tested
            stats = {m.model_name: m for m in c.stats().models}["comp"]
            assert stats.online_accuracy == pytest.approx(right)
        assert srv.stop() == 0
    # the acknowledged update survives a restart: the recovered model serves the learned weights
    with ServerProcess(repo, state_dir=tmp_path / "state", token_file=token_path, extra_args=args) as srv:
        with Client(srv.target, token_file=token_path) as c:
            again = c.infer(x, model="comp")
            assert again.version == 1
            np.testing.assert_allclose(again.scores, local.scores(x), rtol=1e-6, atol=1e-5)
        assert srv.stop() == 0
