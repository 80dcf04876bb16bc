"""The shared conventions: one label code (torch modules and numpy agree), one summed score,
one way to apply a Hebbian delta, settings that are the typed parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import HebbianParams, NeuronParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import summed_score
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.nn.embedding import OneHotOverlay, PatternEmbedding
from spikingjelly_ff.runs.config import ConfigError, config_from_dict
from spikingjelly_ff.simulation import learns_online


@pytest.mark.parametrize("emb", [PatternEmbedding(10, bits=12, seed=3, scale=2.0), OneHotOverlay(10, scale=0.5)])
def test_label_code_embeds_as_the_torch_module(emb):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 30, generator=g)
    labels = torch.tensor([0, 3, 9, 3, 1])
    code = emb.label_code
    assert np.array_equal(code.embed(x.numpy(), labels.numpy()), emb(x, labels).numpy())
    assert code.input_width(30) == emb.out_features(30)
    assert np.array_equal(code.codes(), emb.code(torch.arange(10)).numpy())
    rates = code.rates(x.numpy(), labels.numpy(), gain=0.7)
    assert np.array_equal(rates, (emb(x, labels) * 0.7).clamp(0.0, 1.0).numpy())
    img, lab = code.image_slice(30), code.label_slice(30)
    assert (lab.stop - lab.start) == code.width and (img.stop - img.start) + code.width == code.input_width(30)


def test_label_code_refuses_bad_labels_and_patterns():
    code = LabelCode("pattern", 3, np.eye(3, 4), 1.0)
    with pytest.raises(ValueError, match=r"labels must be 2 integers in \[0, 3\)"):
        code.embed(np.zeros((2, 5), np.float32), [0, 3])
    with pytest.raises(ValueError, match="shape"):
        LabelCode("pattern", 4, np.eye(3, 4))
    with pytest.raises(ValueError, match="0 and 1"):
        LabelCode("pattern", 3, np.full((3, 4), 0.5))
    with pytest.raises(ValueError, match="one-hot overlay needs at least"):
        LabelCode("onehot", 10).input_width(5)


def test_summed_score_is_the_same_for_torch_and_numpy():
    prob = Probability("symmetric", eps=0.01)
    rng = np.random.default_rng(0)
    acts = [rng.random((4, 6), dtype=np.float32) for _ in range(3)]
    a = summed_score(acts, [0, 2], prob, "sum_squares")
    b = summed_score([torch.from_numpy(x) for x in acts], [0, 2], prob, "sum_squares").numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    goodness = summed_score(acts, [1], prob, "sum_squares", score="goodness")
    np.testing.assert_allclose(goodness, (acts[1][:, :3] ** 2).sum(1) - (acts[1][:, 3:] ** 2).sum(1), rtol=1e-6)


def test_apply_delta_with_and_without_eligibility():
    w, dw, e = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32), np.ones((2, 3), np.float32)
    apply_delta(w, dw, 0.5)
    assert np.allclose(w, 2.0)
    apply_delta(w, dw, 0.5, 0.25, e)  # e = 0.75 * 1 + 0.25 * 2 = 1.25; w += 0.5 * 1.25
    assert np.allclose(e, 1.25) and np.allclose(w, 2.625)
    wt, et = torch.ones(2, 3), torch.ones(2, 3)
    apply_delta(wt, torch.from_numpy(dw), 0.5, 0.25, et)
    assert torch.allclose(et, torch.full((2, 3), 1.25)) and torch.allclose(wt, torch.full((2, 3), 1.625))


def test_online_learning_is_decided_in_one_place():
    spec = HebbianParams(0.1, 0.1, 3)
    assert learns_online(1, spec, NeuronParams())
    assert not learns_online(2, spec, NeuronParams())
    assert not learns_online(1, spec, NeuronParams(), on_cpu=False)
    assert not learns_online(1, HebbianParams(0.1, None, 3), NeuronParams())
    assert not learns_online(1, spec, NeuronParams(kwta=2))


def test_config_sections_are_the_parameter_classes():
    cfg = config_from_dict({"model": {"trace": {"kind": "none"}}, "train": {"hebbian": {"eta": 0.2}}})
    assert cfg.train.hebbian == HebbianParams(eta=0.2)
    assert cfg.model.trace.kind == "none"  # the choices come from params.TRACE_KINDS
    with pytest.raises(ConfigError, match="model.encoder: steps must lie in 1..100000"):
        config_from_dict({"model": {"encoder": {"steps": 0}}})
    with pytest.raises(ConfigError, match="train.hebbian.schedule must be one of"):
        config_from_dict({"train": {"hebbian": {"schedule": "step"}}})


def test_runtime_models_copy_without_sharing_state(tmp_path):
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runtime import SpikeModel
    from spikingjelly_ff.runtime.protocol import RuntimeModel

    cfg = config_from_dict(
        {
            "model": {"kind": "spiking", "layers": [8], "init": "normal", "embedding": {"bits": 6}},
            "train": {"learner": "hebbian", "hebbian": {"eta": 0.3}},
        }
    )
    model = SpikeModel.load(
        export_spike(
            build_model(cfg.model, 12, 10, 0),
            tmp_path / "m.nir",
            hebbian=cfg.train.hebbian,
            evaluation=cfg.eval.params,
            name=cfg.name,
        )
    )
    assert isinstance(model, RuntimeModel) and model.kind == "spiking" and model.eta == pytest.approx(0.3)
    clone = model.copy()
    x = np.random.default_rng(0).random((1, 12), dtype=np.float32)
    clone.learn(x, np.array([2]), np.array([1.0]), seed=1)
    assert not np.array_equal(clone.weights[0], model.weights[0])
    assert np.array_equal(model.weights[0], model.art.weights[0])
    assert model.with_steps(5).steps == 5 and model.steps == cfg.model.encoder.steps


def test_torch_embedding_neutral_and_all_labels_follow_the_code():
    x = torch.rand(4, 30, generator=torch.Generator().manual_seed(1))
    pat = PatternEmbedding(10, bits=12, seed=3, scale=2.0)
    assert torch.equal(pat.neutral(x)[:, 30:], (pat.patterns.mean(0) * 2.0).expand(4, -1))
    hot = OneHotOverlay(10, scale=0.5)
    assert torch.equal(hot.neutral(x)[:, :10], torch.full((4, 10), 0.05))
    assert torch.equal(hot.neutral(x)[:, 10:], x[:, 10:])
    for emb in (pat, hot):
        assert all(torch.equal(emb.all_labels(x)[c], emb(x, torch.full((4,), c))) for c in range(10))


def test_loading_patterns_rebuilds_the_label_code():
    a, b = PatternEmbedding(10, bits=12, seed=3), PatternEmbedding(10, bits=12, seed=4)
    code = b.label_code
    assert b.label_code is code, "the code is built once, not per call"
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == ["patterns"]
    assert np.array_equal(b.label_code.patterns, a.patterns.numpy()) and torch.equal(b.codes, a.codes)
    x, labels = torch.rand(3, 30), torch.tensor([1, 2, 3])
    assert torch.equal(b(x, labels), a(x, labels))


def test_onnx_metadata_is_typed_and_keeps_its_keys(tmp_path):
    import json
    from pathlib import Path

    import onnx

    from spikingjelly_ff.export.onnx import analog_to_onnx
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runtime.onnx_meta import META_KEY, OnnxMeta, load_onnx_meta

    cfg = config_from_dict({"model": {"kind": "analog", "layers": [8, 6], "embedding": {"bits": 6}}})
    heb = HebbianParams(eta=0.4, eligibility_tau=None)
    proto = onnx.load(analog_to_onnx(build_model(cfg.model, 12, 10, 0), tmp_path / "a.onnx", hebbian=heb))
    raw = json.loads({p.key: p.value for p in proto.metadata_props}[META_KEY])
    meta = load_onnx_meta(proto)
    assert meta.hebbian == heb and [layer.normalize_input for layer in meta.layers] == [False, True]
    assert meta.to_dict() == raw and OnnxMeta.from_json(meta.to_json()).to_dict() == raw
    saved = onnx.load(Path(__file__).parents[1] / "golden" / "saved" / "analog.onnx")  # today's format loads
    old = load_onnx_meta(saved)
    assert old.label_code.width == 100 and old.layers[0].weight == "w0_1" and old.hebbian == HebbianParams()


def test_analog_runtime_copies_share_the_session_not_the_weights(tmp_path):
    from spikingjelly_ff.export.onnx import analog_to_onnx
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runtime.analog import AnalogModel
    from spikingjelly_ff.runtime.protocol import RuntimeModel

    cfg = config_from_dict({"model": {"kind": "analog", "layers": [8], "normalize": False, "embedding": {"bits": 6}}})
    path = analog_to_onnx(build_model(cfg.model, 12, 10, 0), tmp_path / "a.onnx", hebbian=HebbianParams(eta=0.4))
    model = AnalogModel.load(path)
    assert isinstance(model, RuntimeModel) and model.kind == "analog" and model.eta == pytest.approx(0.4)
    clone = model.copy()
    x = np.random.default_rng(0).random((3, 12), dtype=np.float32)
    before = model.scores(x)
    clone.learn(x, np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]))
    assert clone.session is model.session
    assert np.array_equal(model.scores(x), before) and not np.array_equal(clone.scores(x), before)
