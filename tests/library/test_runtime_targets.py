"""Every runtime's ``learn`` refuses malformed targets with one clear ``ValueError`` (and
leaves the weights alone), the spiking conv runtime's ``learn_spikes`` refuses spikes of the
wrong shape, and ``runtime.protocol.check_targets`` accepts exactly the targets [N] in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edit_utils import edit_h5, save_edited
from test_spiking_conv import small_net

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import config_from_dict
from spikingjelly_ff.runtime import load_exported

SPEC = HebbianParams(eta=0.5, eligibility_tau=None, learn_after=2)
CONV = [{"channels": 4, "kernel": 3, "pool": "max"}, {"channels": 6, "kernel": 3}]


def _model(kind: str, tmp_path):
    """(model, in_features) of a small export of each runtime: dense or conv, analog or spiking."""
    if kind == "spiking-conv":
        net = small_net("map", dtype=torch.float32)
        net.image_shape = (12, 12)
        return load_exported(export_spike(net, tmp_path / "m.nir", hebbian=SPEC)), 144
    model = {
        "analog": {"kind": "analog", "layers": [12, 8]},
        "analog-conv": {"kind": "analog", "layers": [], "conv": CONV, "embedding": {"kind": "onehot"}},
        "spiking": {"kind": "spiking", "layers": [12, 8], "encoder": {"steps": 6}},
    }[kind]
    train = {"learner": "hebbian", "hebbian": {"learn_after": 2}} if kind == "spiking" else {}
    net = build_model(config_from_dict({"model": model, "train": train}).model, 144, 10, 0)
    if kind == "spiking":
        return load_exported(export_spike(net, tmp_path / "m.nir", (12, 12), hebbian=SPEC)), 144
    net.image_shape = (12, 12)
    return load_exported(analog_to_onnx(net, tmp_path / "m.onnx", hebbian=SPEC)), 144


BAD = {
    "one flag for three images": ([1.0], "shape"),
    "two flags for three images": ([1.0, 0.0], "shape"),
    "a row of flags": ([[1.0, 0.0, 1.0]], "shape"),
    "above one": ([2.0, 0.0, 1.0], r"\[0, 1\]"),
    "below zero": ([1.0, -1.0, 0.5], r"\[0, 1\]"),
    "NaN": ([1.0, np.nan, 0.0], "finite"),
    "text": (["yes", "no", "yes"], "number"),
}


@pytest.mark.parametrize("kind", ["analog", "analog-conv", "spiking", "spiking-conv"])
def test_every_runtime_learn_refuses_malformed_targets(kind, tmp_path):
    model, d = _model(kind, tmp_path)
    x = np.random.default_rng(0).uniform(size=(3, d)).astype(np.float32)
    labels = np.array([1, 2, 3])
    before = [w.copy() for w in model.weights]
    for name, (positive, message) in BAD.items():
        with pytest.raises(ValueError, match=message):
            model.learn(x, labels, np.array(positive) if name != "text" else positive)
        assert all(np.array_equal(a, b) for a, b in zip(model.weights, before)), name
    # valid targets: booleans, 0/1 ints, and soft targets in [0, 1] all learn
    for positive in ([True, False, True], [1, 0, 1], [0.25, 1.0, 0.0]):
        log_odds = model.copy().learn(x, labels, positive)
        assert log_odds.shape == (3,) and np.all(np.isfinite(log_odds))


@pytest.mark.parametrize("kind", ["analog", "analog-conv", "spiking", "spiking-conv"])
def test_every_runtime_learn_refuses_an_empty_batch(kind, tmp_path):
    """No images: one clear ValueError (it was a ZeroDivisionError or a reshape error)."""
    model, d = _model(kind, tmp_path)
    before = [w.copy() for w in model.weights]
    with pytest.raises(ValueError, match="at least one sample"):
        model.learn(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(model.weights, before))
    assert model.scores(np.zeros((0, d), np.float32)).shape == (0, 10)  # scoring nothing is fine


def test_spiking_conv_learn_spikes_refuses_spikes_of_the_wrong_shape(tmp_path):
    model, _ = _model("spiking-conv", tmp_path)
    rng = np.random.default_rng(1)
    t, n, width = 6, 3, model.label_weights[0].shape[0]
    image = (rng.uniform(size=(t, n, 1, 12, 12)) < 0.3).astype(np.float32)
    code = (rng.uniform(size=(t, n, width)) < 0.3).astype(np.float32)
    y = np.array([1.0, 0.0, 1.0])
    before = [w.copy() for w in model.weights]
    bad = {
        "label spikes shared by the images": (image, code[:, :1], "label spikes"),
        "label spikes of other steps": (image, code[:4], "label spikes"),
        "label spikes of another width": (image, code[:, :, :5], "label spikes"),
        "flat images": (image.reshape(t, n, 144), code, "image spikes"),
        "images of another size": (image[..., :10, :], code, "image spikes"),
        "targets of another length": (image, code, "shape"),
    }
    for name, (im, co, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            model.learn_spikes(im, co, y[:2] if name.startswith("targets") else y)
        assert all(np.array_equal(a, b) for a, b in zip(model.weights, before)), name
    assert model.learn_spikes(image, code, y).shape == (3,)
    assert not np.array_equal(model.weights[0], before[0])


def test_check_targets():
    from spikingjelly_ff.runtime.protocol import check_targets

    got = check_targets([True, False, 1, 0.5], 4)
    assert got.dtype == np.float32 and got.tolist() == [1.0, 0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="at least one sample"):  # learning from nothing
        check_targets(np.zeros(0), 0)
    for bad, n in [([1.0], 2), (np.ones((2, 1)), 2), ([np.inf, 0.0], 2), ([1.5, 0.0], 2), (None, 1)]:
        with pytest.raises(ValueError, match="positive"):
            check_targets(bad, n)


@pytest.mark.parametrize("kind", ["analog", "analog-conv", "spiking", "spiking-conv"])
def test_every_runtime_learn_refuses_a_rate_that_is_no_step_size(kind, tmp_path):
    """A NaN or infinite eta turned every weight into NaN, silently; a negative one unlearnt."""
    model, d = _model(kind, tmp_path)
    x = np.random.default_rng(0).uniform(size=(2, d)).astype(np.float32)
    labels, positive = np.array([1, 2]), np.array([1.0, 0.0])
    before = [w.copy() for w in model.weights]
    for eta, message in [(np.nan, "finite"), (np.inf, "finite"), (-0.1, ">= 0"), ("0.1", "number"), (True, "number")]:
        with pytest.raises(ValueError, match=message):
            model.learn(x, labels, positive, eta=eta)
        assert all(np.array_equal(a, b) for a, b in zip(model.weights, before)), eta
    assert np.all(np.isfinite(model.learn(x, labels, positive, eta=np.float32(0.05))))


def test_spiking_learn_spikes_refuses_spikes_of_another_width(tmp_path):
    """One sample of the wrong width went to the compiled one-sample path unchecked: read out
    of bounds (wider: a crash after the call) or learnt on the wrong inputs (narrower)."""
    model, _ = _model("spiking", tmp_path)
    width = model.weights[0].shape[1]
    before = [w.copy() for w in model.weights]
    for n in (1, 3):
        for w in (width - 10, width + 10):
            with pytest.raises(ValueError, match=f"spikes must have {width} inputs per step, got {w}"):
                model.learn_spikes(np.ones((6, n, w), np.float32), np.ones(n))
    assert all(np.array_equal(a, b) for a, b in zip(model.weights, before))


def test_a_spiking_model_refuses_eligibility_of_another_shape(tmp_path):
    from spikingjelly_ff.runtime.model import SpikeModel

    model, _ = _model("spiking", tmp_path)
    weights = [w.copy() for w in model.weights]
    with pytest.raises(ValueError, match="eligibility traces do not match"):
        SpikeModel(model.art, weights, [np.zeros((3, 3), np.float32) for _ in weights])
    SpikeModel(model.art, weights, [np.zeros_like(w) for w in weights])


def test_non_finite_weights_or_traces_do_not_load_or_save(tmp_path):

    from spikingjelly_ff.runtime.artifact import ArtifactError, read_artifact

    analog, _ = _model("analog", tmp_path)
    analog.weights[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        analog.save(tmp_path / "nan.onnx")
    assert not list(tmp_path.glob("nan.onnx*"))
    spiking, _ = _model("spiking", tmp_path)
    spiking.save(tmp_path / "s.nir")
    with edit_h5(tmp_path / "s.nir") as f:
        e = f["spikingjelly_ff/eligibility/0"]
        e[0, 0] = np.nan
    with pytest.raises(ArtifactError, match="eligibility traces hold non-finite values"):
        read_artifact(tmp_path / "s.nir")


def test_a_failed_save_of_an_analog_model_leaves_no_part_file(tmp_path, monkeypatch):
    import os

    model, _ = _model("analog", tmp_path)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "out" / "m.onnx")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_onnx_export_with_non_finite_weights_does_not_load(tmp_path):
    import onnx
    from onnx import numpy_helper

    from spikingjelly_ff.runtime.analog import AnalogModel

    _model("analog", tmp_path)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    names = set(AnalogModel.load(tmp_path / "m.onnx").graph.weight_names)
    t = next(t for t in proto.graph.initializer if t.name in names)
    a = numpy_helper.to_array(t).copy()
    a.flat[0] = np.inf
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    save_edited(proto, tmp_path / "inf.onnx")
    with pytest.raises(ValueError, match="hold non-finite values"):
        AnalogModel.load(tmp_path / "inf.onnx")


@pytest.mark.parametrize("key,value", [("steps", 10**9), ("rest_steps", 10**9), ("steps", 0)])
def test_an_artefact_asking_for_endless_presentations_does_not_load(tmp_path, key, value):
    """A tampered artefact of 10^9 rest steps loaded, and its first prediction ran for hours in
    compiled code that no interrupt reaches."""
    from test_spiking_conv_competitive_runtime import _edit_meta

    from spikingjelly_ff.runtime.artifact import ArtifactError

    _model("spiking", tmp_path)
    _edit_meta(tmp_path / "m.nir", lambda meta: meta["encoder"].update({key: value}))
    with pytest.raises(ArtifactError, match=f"{key} must lie in"):
        load_exported(tmp_path / "m.nir")


@pytest.mark.parametrize("kind", ["spiking", "spiking-conv"])
def test_a_spike_artefact_with_changed_bytes_does_not_load(tmp_path, kind):
    """HDF5 checks no sum of its data: a weight changed in the file loaded and served. The
    artefact carries the SHA-256 of its content; a file without it (written before) loads."""

    from spikingjelly_ff.runtime.artifact import ArtifactError, read_artifact

    model, _ = _model(kind, tmp_path)
    path = model.save(tmp_path / "saved.nir")
    with edit_h5(path) as f:
        weights = []
        f.visit(lambda name: weights.append(name) if name.endswith("weight") and "node" in name else None)
        w = f[weights[0]]
        changed = w[()]
        changed.flat[0] += 1e-3
        w[...] = changed
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        read_artifact(path)
    with edit_h5(path) as f:
        del f["spikingjelly_ff"].attrs["sha256"]
    assert read_artifact(path).weights  # as a file written before the checksum


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda meta: meta.pop("embedding"), "metadata is damaged"),
        (lambda meta: meta.update(layers=[]), "names no layers"),
        (lambda meta: meta["layers"][0].pop("weight"), "metadata is damaged"),
        (lambda meta: [meta], "not a JSON object"),
    ],
)
def test_damaged_onnx_metadata_is_one_clear_error(tmp_path, edit, message):
    """A field of the export's metadata missing had raised a bare KeyError with no file name."""
    import json

    import onnx

    from spikingjelly_ff.runtime.analog import AnalogModel
    from spikingjelly_ff.runtime.onnx_meta import META_KEY

    _model("analog", tmp_path)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    prop = next(p for p in proto.metadata_props if p.key == META_KEY)
    meta = json.loads(prop.value)
    out = edit(meta)
    prop.value = json.dumps(out if isinstance(out, list) else meta)
    save_edited(proto, tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=message):
        AnalogModel.load(tmp_path / "bad.onnx")


@pytest.mark.parametrize("damage", ["patterns", "eligibility", "meta"])
def test_a_damaged_spike_artefact_is_an_artifact_error(tmp_path, damage):
    """Damage the reader did not name had escaped as KeyError, AttributeError or UnicodeDecodeError."""
    import h5py

    from spikingjelly_ff.runtime.artifact import ArtifactError, read_artifact

    model, _ = _model("spiking", tmp_path)
    path = model.save(tmp_path / "s.nir")
    with edit_h5(path) as f:
        ours = f["spikingjelly_ff"]
        if damage == "patterns":
            del ours["label_patterns"]
            ours.create_dataset("label_patterns", data="not bits", dtype=h5py.string_dtype())
        elif damage == "eligibility":
            del ours["eligibility/0"]
        else:
            del ours["meta"]
            ours.create_dataset("meta", data=np.frombuffer(b"\xff\xfe{", np.uint8))
    with pytest.raises(ArtifactError):
        read_artifact(path)


@pytest.mark.parametrize(
    "section,key,value", [("encoder", "steps", 23.9), ("encoder", "rest_steps", 2.5), ("neuron", "kwta", 2.5),
                          ("evaluation", "repeats", 2.5), ("encoder", "steps", True)]  # fmt: skip
)
def test_an_artefact_with_a_fractional_count_does_not_load(tmp_path, section, key, value):
    """23.9 steps loaded and failed at the first prediction with a bare TypeError."""
    from test_spiking_conv_competitive_runtime import _edit_meta

    from spikingjelly_ff.runtime.artifact import ArtifactError

    _model("spiking", tmp_path)
    _edit_meta(tmp_path / "m.nir", lambda meta: meta.setdefault(section, {}).update({key: value}))
    with pytest.raises(ArtifactError, match=f"{key} must be an integer"):
        load_exported(tmp_path / "m.nir")


@pytest.mark.parametrize("kind", ["spiking", "spiking-conv"])
def test_learn_spikes_refuses_values_that_are_no_spikes(kind, tmp_path):
    """A NaN spike spread NaN into every weight it reached, silently; a graded value is no
    presentation the encoder makes. Both are refused and the weights stay as they were."""
    model, _ = _model(kind, tmp_path)
    rng = np.random.default_rng(2)
    t, n = 6, 2
    y = np.array([1.0, 0.0])
    if kind == "spiking":
        spikes = (rng.uniform(size=(t, n, model.weights[0].shape[1])) < 0.3).astype(np.float32)
        inputs = {"spikes": (spikes,)}
    else:
        image = (rng.uniform(size=(t, n, 1, 12, 12)) < 0.3).astype(np.float32)
        code = (rng.uniform(size=(t, n, model.label_weights[0].shape[0])) < 0.3).astype(np.float32)
        inputs = {"image spikes": (image, code), "label spikes": (code, image)}
    before = [w.copy() for w in model.weights]
    for name, arrays in inputs.items():
        for value in (np.nan, 0.5, 2.0, -1.0):
            bad = arrays[0].copy()
            bad[1, 0].flat[3] = value
            args = (bad, *arrays[1:]) if name != "label spikes" else (arrays[1], bad)
            with pytest.raises(ValueError, match=f"{name} must be 0 or 1"):
                model.learn_spikes(*args, y)
            assert all(np.array_equal(a, b) for a, b in zip(model.weights, before)), (name, value)
    good = (inputs["spikes"][0],) if kind == "spiking" else inputs["image spikes"]
    assert np.all(np.isfinite(model.learn_spikes(*good, y)))
    assert not np.array_equal(model.weights[0], before[0])
