"""Shifted test views of a spiking conv net (``model.shift_views``): the torch scorer sums the
scores of the image and of its translated copies, the spike artefact records the views (format
version 4, which a runtime from before views refuses) and the numpy runtime scores them the same
way; training reports both accuracies and ``sjff eval --views`` reproduces each."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from edit_utils import edit_h5
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


def _images(net, n: int, seed: int) -> torch.Tensor:
    h, w = net._hw()
    return torch.rand(n, h * w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [_labelled, _competitive], ids=["labelled", "competitive"])
def test_scorer_sums_the_scores_of_the_views(make):
    """Regular coding draws nothing, so the scores with views are exactly the sum of the
    scores of each translated batch scored alone, in view_offsets order (230 images: three
    chunks); the scorer hard negatives are mined with (``views=False``) scores the image alone."""
    net = make(1)
    x = _images(net, 230, 3)
    got = SpikingConvScorer(net).scores(x)
    alone = SpikingConvScorer(net, views=False).scores(x)
    net.shift_views = 0
    parts = [SpikingConvScorer(net).scores(translate(x, net._hw(), dy, dx)) for dy, dx in view_offsets(1)]
    want = parts[0]
    for p in parts[1:]:
        want = want + p
    assert got.shape == (230, 10) and torch.equal(got, want)
    assert torch.equal(alone, parts[0]) and not torch.equal(got, alone)


@pytest.mark.parametrize(
    "make,plain_version",
    [(_labelled, CONV_FORMAT_VERSION), (_competitive, UNLABELLED_CONV_FORMAT_VERSION)],
    ids=["labelled", "competitive"],
)
def test_runtime_scores_the_views_like_the_scorer(tmp_path, make, plain_version):
    """The artefact records the views and is format version 4; the numpy runtime's scores
    equal the torch scorer's (float rounding), with the same labels. Without views the file
    keeps its old version; one written before views (no ``shift_views`` key) loads as such."""
    net = make(1)
    x = _images(net, 230, 4)
    path = export_spike(net, tmp_path / "m.nir")
    art = read_artifact(path)
    assert art.conv.shift_views == 1 and art.format_version == VIEWS_CONV_FORMAT_VERSION
    model = load_exported(path)
    assert isinstance(model, SpikeConvModel)
    want = SpikingConvScorer(net).scores(x).numpy()
    got = model.scores(x.numpy())
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    net.shift_views = 0  # the same net without views: the old format, the image's scores
    plain_path = export_spike(net, tmp_path / "plain.nir")
    assert read_artifact(plain_path).conv.shift_views == 0
    assert read_artifact(plain_path).format_version == plain_version
    plain = load_exported(plain_path).scores(x.numpy())
    assert not np.allclose(plain, got)
    _edit_meta(plain_path, lambda meta: meta["conv"].pop("shift_views"))  # as written before views
    assert read_artifact(plain_path).conv.shift_views == 0
    assert np.array_equal(load_exported(plain_path).scores(x.numpy()), plain)


def test_bernoulli_views_draw_chunk_by_chunk_then_view_by_view(tmp_path):
    """Bernoulli coding: each view draws its own spikes, chunk by chunk and within a chunk view
    by view, in torch and in the runtime (each with its own generator); the other order gives
    other scores, so the test sees it."""
    net = _labelled(1, coding="bernoulli")
    x = _images(net, 230, 5)
    offsets, side = view_offsets(1), net._hw()

    def by_hand(score, xs, chunk: int, view_major: bool = False):
        chunks = [xs[i : i + chunk] for i in range(0, len(xs), chunk)]
        if view_major:  # every chunk's first view, then every chunk's second, ...
            per = [[score(translate(c, side, dy, dx)) for c in chunks] for dy, dx in offsets]
            return [sum(p[i] for p in per[1:]) + per[0][i] for i in range(len(chunks))]
        out = []
        for c in chunks:
            total = score(c)
            for dy, dx in offsets[1:]:
                total += score(translate(c, side, dy, dx))
            out.append(total)
        return out

    got = SpikingConvScorer(net, seed=2).scores(x)
    s = SpikingConvScorer(net, seed=2)
    assert torch.equal(got, torch.cat(by_hand(s._scores, x, s.chunk)))
    s = SpikingConvScorer(net, seed=2)
    assert not torch.equal(got, torch.cat(by_hand(s._scores, x, s.chunk, view_major=True)))
    model = load_exported(export_spike(net, tmp_path / "m.nir"))
    got = model.scores(x.numpy(), seed=7)
    rng = np.random.default_rng(7)
    want = by_hand(lambda c: model._scores(c, rng, 1), x.numpy(), model.chunk)
    assert np.array_equal(got, np.concatenate(want))
    rng = np.random.default_rng(7)
    other = by_hand(lambda c: model._scores(c, rng, 1), x.numpy(), model.chunk, view_major=True)
    assert not np.array_equal(got, np.concatenate(other))


def test_views_must_leave_part_of_the_image(tmp_path):
    """A move of the image's side or more leaves nothing: refused by the net, by `sjff eval`'s
    override and in an artefact (a tampered file cannot ask for a million views)."""
    with pytest.raises(ConfigError, match="model.shift_views 28 must be below the image's smaller side"):
        load_config("conv/spiking-soft-mnist", ["model.shift_views=28"])  # MNIST's side is known
    cfg = load_config("conv/spiking-soft-mnist")
    cfg.model.shift_views = 28
    with pytest.raises(ValueError, match="below the image's smaller side"):
        build_model(cfg.model, 784, 10, seed=0, image_shape=(28, 28))
    path = export_spike(_labelled(1), tmp_path / "m.nir")
    _edit_meta(path, lambda meta: meta["conv"].update(shift_views=1_000_000))
    with pytest.raises(ArtifactError, match="below the image's smaller side"):
        load_exported(path)


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
    with edit_h5(path) as f:
        f["spikingjelly_ff"].attrs["format_version"] = CONV_FORMAT_VERSION
    with pytest.raises(ArtifactError, match="does not match its content"):
        load_exported(path)


def test_config_takes_views_for_spiking_conv_nets_only():
    cfg = load_config("conv/spiking-soft-mnist", ["model.shift_views=1"])
    net = build_model(cfg.model, 784, 10, seed=0)
    assert net.shift_views == 1
    with pytest.raises(ConfigError, match="analog models and spiking conv models only"):
        load_config("paper/hebbian-online-symmetric", ["model.shift_views=1"])


@pytest.mark.parametrize("coding", ["regular", "bernoulli"])
def test_training_reports_both_accuracies_and_eval_reproduces_them(tmp_path, mini, coding):
    """A spiking conv run with views tests with them and with the image alone; `sjff eval`
    gives each again (`--views 0` for the image alone; with Bernoulli spikes too, each pass
    drawing as a fresh scorer does), and the exported artefact predicts every test image as
    the torch scorer does (regular coding: no draws to differ)."""
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.evaluate import evaluate_model
    from spikingjelly_ff.runs.train import train

    cfg = load_config(
        "conv/spiking-soft-mnist",
        [
            f"data.dataset={mini}", "data.download=false", "train.epochs=1", "train.limit=40", "eval.limit=30",
            "model.encoder.steps=9", "train.hebbian.learn_after=3", SMALL, "model.score_layers=[1]",
            "model.shift_views=1", "threads=1", f"model.encoder.coding={coding}",
        ],
    )  # fmt: skip
    final = train(cfg, tmp_path / "r", log=lambda s: None, progress=False)["final"]
    assert {"test_accuracy", "test_accuracy_single_view"} <= set(final)
    model = tmp_path / "r" / "model"
    assert evaluate_model(model, limit=30)["accuracy"] == final["test_accuracy"]
    assert evaluate_model(model, limit=30, shift_views=0)["accuracy"] == final["test_accuracy_single_view"]
    if coding == "bernoulli":  # torch and numpy draw from their own generators
        return
    assert main(["export", str(model), "--format", "spike", "--out", str(tmp_path / "m.nir")]) == 0
    from spikingjelly_ff.runs.checkpoint import load_model

    net, _, _ = load_model(model)
    x, _ = load_split(str(mini), "test").take(30).to_tensors()
    runtime = load_exported(tmp_path / "m.nir")
    assert runtime.art.conv.shift_views == 1
    torch_labels = SpikingConvScorer(net, seed=cfg.seed + 4).predict(x).numpy()
    assert np.array_equal(runtime.predict(x.numpy()), torch_labels)
    # `sjff export --views` sets the views the artefact scores with (0: the image alone)
    assert main(["export", str(model), "--format", "spike", "--views", "0", "--out", str(tmp_path / "one.nir")]) == 0
    single = load_exported(tmp_path / "one.nir")
    assert single.art.conv.shift_views == 0 and single.art.format_version == UNLABELLED_CONV_FORMAT_VERSION
    net.shift_views = 0
    assert np.array_equal(single.predict(x.numpy()), SpikingConvScorer(net, seed=cfg.seed + 4).predict(x).numpy())
    assert main(["export", str(model), "--format", "spike", "--views", "28", "--out", str(tmp_path / "x.nir")]) == 2
    assert not (tmp_path / "x.nir").exists()
