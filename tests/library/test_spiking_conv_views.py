"""Shifted test views of a spiking conv net (``model.shift_views``): the torch scorer sums the
scores of the image and of its translated copies, the spike artefact records the views (format
version 4, which a runtime from before views refuses) and the numpy runtime scores them the same
way; training reports both accuracies and ``sjff eval --views`` reproduces each."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from test_conv_competitive import _config
from test_spiking_conv import small_net
from test_spiking_conv_competitive_runtime import _edit_meta

from spikingjelly_ff.cli import main
from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.functional.views import translate, view_offsets
from spikingjelly_ff.learning.conv_engine import SpikingConvScorer
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import ConfigError, load_config
from spikingjelly_ff.runtime import ArtifactError, SpikeConvModel, load_exported, read_artifact
from spikingjelly_ff.runtime.artifact import (
    CONV_FORMAT_VERSION,
    UNLABELLED_CONV_FORMAT_VERSION,
    VIEWS_CONV_FORMAT_VERSION,
)

F32 = torch.float32
SMALL = "model.conv=[{channels: 20, kernel: 5, pool: max}, {channels: 30, kernel: 3, padding: 1}]"


def _labelled(views: int, coding: str = "regular"):
    net = small_net("location", dtype=F32)
    net.image_shape = (12, 12)
    net.encoder = replace(net.encoder, coding=coding)
    net.shift_views = views
    return net


def _competitive(views: int):
    net = build_model(_config(SMALL, kind="spiking").model, 784, 10, seed=0)
    net.image_shape = (28, 28)
    with torch.no_grad():
        for layer in net.layers:  # kernels scaled up so that the class groups differ on random images
            layer.weight.mul_(3.0)
    net.shift_views = views
    return net


@pytest.mark.parametrize("make", [_labelled, _competitive], ids=["labelled", "competitive"])
def test_scorer_sums_the_scores_of_the_views(make):
    """Regular coding draws nothing, so the scores with views are exactly the sum of the
    scores of each translated batch scored alone, in view_offsets order."""
    net = make(1)
    side = net._hw()
    x = torch.rand(23, side[0] * side[1], generator=torch.Generator().manual_seed(3))
    got = SpikingConvScorer(net).scores(x)
    net.shift_views = 0
    parts = [SpikingConvScorer(net).scores(translate(x, side, dy, dx)) for dy, dx in view_offsets(1)]
    want = parts[0]
    for p in parts[1:]:
        want = want + p
    assert got.shape == (23, 10) and torch.equal(got, want)
    assert not torch.equal(got, parts[0])  # the views change the scores


@pytest.mark.parametrize("make", [_labelled, _competitive], ids=["labelled", "competitive"])
def test_runtime_scores_the_views_like_the_scorer(tmp_path, make):
    """The artefact records the views and is format version 4; the numpy runtime's scores
    equal the torch scorer's (float rounding), with the same labels."""
    net = make(1)
    side = net._hw()
    x = torch.rand(23, side[0] * side[1], generator=torch.Generator().manual_seed(4))
    path = export_spike(net, tmp_path / "m.nir")
    art = read_artifact(path)
    assert art.conv.shift_views == 1 and art.format_version == VIEWS_CONV_FORMAT_VERSION
    model = load_exported(path)
    assert isinstance(model, SpikeConvModel)
    want = SpikingConvScorer(net).scores(x).numpy()
    got = model.scores(x.numpy())
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    net.shift_views = 0  # the same net without views: the old format, other scores
    plain = read_artifact(export_spike(net, tmp_path / "plain.nir"))
    assert plain.conv.shift_views == 0 and plain.format_version in (CONV_FORMAT_VERSION, UNLABELLED_CONV_FORMAT_VERSION)
    assert not np.allclose(load_exported(tmp_path / "plain.nir").scores(x.numpy()), got)


def test_bernoulli_views_draw_in_the_same_order(tmp_path):
    """Bernoulli coding: each view draws its own spikes (chunk by chunk, view by view), so the
    scores with views are reproducible from the seed and change with it, in torch and in the
    runtime (whose generator is numpy's: only the algorithm is shared, not the draws)."""
    net = _labelled(1, coding="bernoulli")
    x = torch.rand(40, 144, generator=torch.Generator().manual_seed(5))
    scorer = SpikingConvScorer(net, seed=2)
    a, b = scorer.scores(x), SpikingConvScorer(net, seed=2).scores(x)
    assert torch.equal(a, b)  # the same seed, the same draws
    assert not torch.equal(a, SpikingConvScorer(net, seed=3).scores(x))
    model = load_exported(export_spike(net, tmp_path / "m.nir"))
    assert np.array_equal(model.scores(x.numpy(), seed=7), model.scores(x.numpy(), seed=7))
    assert not np.array_equal(model.scores(x.numpy(), seed=7), model.scores(x.numpy(), seed=8))


@pytest.mark.parametrize("value", [-1, 1.5, "1", True])
def test_tampered_views_are_an_artifact_error(tmp_path, value):
    net = _labelled(1)
    path = export_spike(net, tmp_path / "m.nir")
    _edit_meta(path, lambda meta: meta["conv"].update(shift_views=value))
    with pytest.raises(ArtifactError, match="shift_views"):
        load_exported(path)


def test_a_views_file_that_claims_the_old_version_is_refused(tmp_path):
    """A runtime before views reads version 2 and would score the image alone: a file with
    views must not claim it."""
    path = export_spike(_labelled(1), tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        f["spikingjelly_ff"].attrs["format_version"] = CONV_FORMAT_VERSION
    with pytest.raises(ArtifactError, match="does not match its content"):
        load_exported(path)


def test_config_takes_views_for_spiking_conv_nets_only():
    cfg = load_config("conv/spiking-soft-mnist", ["model.shift_views=1"])
    net = build_model(cfg.model, 784, 10, seed=0)
    assert net.shift_views == 1
    with pytest.raises(ConfigError, match="analog models and spiking conv models only"):
        load_config("paper/hebbian-online-symmetric", ["model.shift_views=1"])


def test_training_reports_both_accuracies_and_eval_reproduces_them(tmp_path, mini):
    """A spiking conv run with views tests with them and with the image alone; `sjff eval`
    gives each again (`--views 0` for the image alone), and the exported artefact predicts
    every test image as the torch scorer does."""
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.evaluate import evaluate_model
    from spikingjelly_ff.runs.train import train

    cfg = load_config(
        "conv/spiking-soft-mnist",
        [
            f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=40", "eval.limit=30",
            "model.encoder.steps=9", "train.hebbian.learn_after=3", SMALL, "model.score_layers=[1]",
            "model.shift_views=1", "threads=1",
        ],
    )  # fmt: skip
    final = train(cfg, tmp_path / "r", log=lambda s: None, progress=False)["final"]
    assert {"test_accuracy", "test_accuracy_single_view"} <= set(final)
    model = tmp_path / "r" / "model"
    assert evaluate_model(model, limit=30)["accuracy"] == final["test_accuracy"]
    assert evaluate_model(model, limit=30, shift_views=0)["accuracy"] == final["test_accuracy_single_view"]
    assert main(["export", str(model), "--format", "spike", "--out", str(tmp_path / "m.nir")]) == 0
    from spikingjelly_ff.runs.checkpoint import load_model

    net, _, _ = load_model(model)
    x, _ = load_split(str(mini), "test").take(30).to_tensors()
    runtime = load_exported(tmp_path / "m.nir")
    assert runtime.art.conv.shift_views == 1
    torch_labels = SpikingConvScorer(net, seed=cfg.seed + 4).predict(x).numpy()
    assert np.array_equal(runtime.predict(x.numpy()), torch_labels)
