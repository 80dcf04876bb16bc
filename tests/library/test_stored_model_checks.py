"""What a stored model must hold to load: an ONNX export's checksum, weights that fit its
settings, a graph that fits them, and scoring settings a runtime can use (an ONNX export's
and a spike artefact's). Each was found wrong only at the first prediction or update, or
(a changed weight) never."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from edit_utils import save_edited
from onnx import helper, numpy_helper
from test_conv_export import _net
from test_runtime_targets import _model
from test_spiking_conv_competitive_runtime import _edit_meta

from spikingjelly_ff.export.onnx import analog_to_onnx
from spikingjelly_ff.runtime import load_exported
from spikingjelly_ff.runtime.analog import AnalogModel
from spikingjelly_ff.runtime.artifact import ArtifactError
from spikingjelly_ff.runtime.onnx_checksum import DIGEST_KEY, onnx_digest
from spikingjelly_ff.runtime.onnx_meta import META_KEY, OnnxConv


def _export(kind: str, tmp_path):
    model, d = _model(kind, tmp_path)
    return tmp_path / "m.onnx", model, d


def _first_weight(proto, model) -> onnx.TensorProto:
    return next(t for t in proto.graph.initializer if t.name == model.graph.weight_names[0])


@pytest.mark.parametrize("kind", ["analog", "analog-conv"])
def test_an_onnx_export_with_a_changed_weight_or_node_does_not_load(kind, tmp_path):
    """protobuf checks no sum: a weight changed on disk loaded and served. An export carries
    the SHA-256 of its settings, initializers and nodes; a file without it loads unchecked."""
    path, model, _ = _export(kind, tmp_path)
    proto = onnx.load(str(path))
    assert any(p.key == DIGEST_KEY for p in proto.metadata_props)
    t = _first_weight(proto, model)
    a = numpy_helper.to_array(t).copy()
    a.flat[0] += 1e-3
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(proto, str(tmp_path / "weight.onnx"))
    with pytest.raises(ValueError, match="does not match its checksum"):
        AnalogModel.load(tmp_path / "weight.onnx")
    save_edited(proto, tmp_path / "unsigned.onnx")  # as a file written before the checksum
    unsigned = AnalogModel.load(tmp_path / "unsigned.onnx")
    assert np.count_nonzero(unsigned.weights[0] != model.weights[0]) == 1  # the change is served

    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.attribute)
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    attr.CopyFrom(helper.make_attribute(attr.name, (1 - value) if isinstance(value, int) else value))
    assert onnx_digest(proto) != next(p.value for p in proto.metadata_props if p.key == DIGEST_KEY)
    onnx.save(proto, str(tmp_path / "node.onnx"))
    with pytest.raises(ValueError, match="does not match its checksum"):
        AnalogModel.load(tmp_path / "node.onnx")


def test_a_saved_model_carries_the_checksum_of_its_new_weights(tmp_path):
    path, model, d = _export("analog", tmp_path)
    x = np.random.default_rng(0).uniform(size=(3, d)).astype(np.float32)
    model.learn(x, np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]))
    saved = AnalogModel.load(model.save(tmp_path / "learnt.onnx"))
    assert all(np.array_equal(a, b) for a, b in zip(saved.weights, model.weights))
    proto = onnx.load(str(tmp_path / "learnt.onnx"))
    stored = [p.value for p in proto.metadata_props if p.key == DIGEST_KEY]
    assert stored == [onnx_digest(proto)] and stored != [onnx_digest(onnx.load(str(path)))]


def _edit_onnx_meta(path, edit, out):
    proto = onnx.load(str(path))
    prop = next(p for p in proto.metadata_props if p.key == META_KEY)
    meta = json.loads(prop.value)
    edit(meta)
    prop.value = json.dumps(meta)
    save_edited(proto, out)


SCORING = {
    "score": (lambda m: m.update(score="bogus"), "score must be one of"),
    "goodness": (lambda m: m.update(goodness="cubes"), "unknown goodness"),
    "no voting layer": (lambda m: m.update(score_layers=[]), "at least one layer"),
    "a layer beyond the net": (lambda m: m.update(score_layers=[0, 5]), "does not exist"),
    "a fractional layer": (lambda m: m.update(score_layers=[0.5]), "layer indices"),
}


@pytest.mark.parametrize("case", list(SCORING))
@pytest.mark.parametrize("kind", ["analog", "analog-conv"])
def test_an_onnx_export_with_scoring_settings_no_runtime_can_use_does_not_load(kind, case, tmp_path):
    path, _, _ = _export(kind, tmp_path)
    edit, message = SCORING[case]
    _edit_onnx_meta(path, edit, tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=message):
        AnalogModel.load(tmp_path / "bad.onnx")


@pytest.mark.parametrize("case", list(SCORING))
@pytest.mark.parametrize("kind", ["spiking", "spiking-conv"])
def test_a_spike_artefact_with_scoring_settings_no_runtime_can_use_does_not_load(kind, case, tmp_path):
    """``score: "bogus"`` loaded and failed at the first prediction."""
    model, _ = _model(kind, tmp_path)
    path = model.save(tmp_path / "s.nir")
    edit, message = SCORING[case]
    _edit_meta(path, edit)
    with pytest.raises(ArtifactError, match=message):
        load_exported(path)


def test_a_layer_voting_twice_still_loads(tmp_path):
    """A voting layer named twice counts twice (as in the library's nets): not refused."""
    path, _, _ = _export("analog", tmp_path)
    _edit_onnx_meta(path, lambda m: m.update(score_layers=[1, 1]), tmp_path / "twice.onnx")
    assert AnalogModel.load(tmp_path / "twice.onnx").settings.score_layers == (1, 1)


def test_a_graph_that_disagrees_with_its_settings_does_not_load(tmp_path):
    path, _, _ = _export("analog", tmp_path)
    _edit_onnx_meta(path, lambda m: m.update(in_features=100), tmp_path / "inputs.onnx")
    with pytest.raises(ValueError, match=r"must take images \[N, 100\]"):
        AnalogModel.load(tmp_path / "inputs.onnx")
    conv, _, _ = _export("analog-conv", tmp_path / "conv")  # one-hot labels: any class count fits the code
    _edit_onnx_meta(conv, lambda m: m.update(num_classes=11), tmp_path / "classes.onnx")
    with pytest.raises(ValueError, match=r"must output scores \['N', 'C'\] for 11 classes"):
        AnalogModel.load(tmp_path / "classes.onnx")
    proto = onnx.load(str(path))
    next(o for o in proto.graph.output if o.name == "label").name = "labels"
    save_edited(proto, tmp_path / "outputs.onnx")
    with pytest.raises(ValueError, match="must output label"):
        AnalogModel.load(tmp_path / "outputs.onnx")


def test_weights_that_do_not_fit_the_graph_do_not_load(tmp_path):
    """A first layer one unit narrower than the second reads: loaded, failed at the first call."""
    path, model, _ = _export("analog", tmp_path)
    proto = onnx.load(str(path))
    t = _first_weight(proto, model)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :-1].copy(), t.name))
    save_edited(proto, tmp_path / "narrow.onnx")
    with pytest.raises(ValueError, match="shape"):
        AnalogModel.load(tmp_path / "narrow.onnx")


def test_onnx_settings_check_the_weight_shapes(tmp_path):
    """``OnnxMeta.check_weights``: what the settings say each weight's shape must be."""
    dense = AnalogModel.load(_export("analog", tmp_path)[0]).settings
    dense.check_weights([(12, 244), (8, 12)])  # 144 pixels + 100 label bits; 12 then 8 units
    for shapes, message in [([(12, 243), (8, 12)], r"layer 0: weight of shape \[12, 243\]"),
                            ([(12, 244), (8, 11)], r"layer 1: weight of shape \[8, 11\]"),
                            ([(12, 244, 1), (8, 12)], "layer 0")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            dense.check_weights(shapes)
    conv = AnalogModel.load(analog_to_onnx(_net("map", "max"), tmp_path / "conv.onnx"))
    meta, shapes = conv.settings, [w.shape for w in conv.weights]
    meta.check_weights(shapes)
    with pytest.raises(ValueError, match="conv layer 1: kernel of shape"):
        meta.check_weights([shapes[0], (6, 4, 5, 5), *shapes[2:]])
    with pytest.raises(ValueError, match="conv layer 0: label weight"):
        meta.check_weights([*shapes[:2], (9, *shapes[2][1:]), shapes[3]])
    first = meta.conv.layers[0]
    moved = replace(meta.conv, layers=(replace(first, map_shape=(4, 23, 23)), *meta.conv.layers[1:]))
    with pytest.raises(ValueError, match="conv layer 0: map shape"):
        replace(meta, conv=OnnxConv(moved.over, moved.layers)).check_weights(shapes)


@pytest.mark.parametrize("kind", ["spiking", "spiking-conv"])
def test_a_spike_artefact_with_any_changed_byte_is_refused_before_hdf5_reads_it(kind, tmp_path, monkeypatch):
    """Damaged HDF5 object headers had made h5py crash the process or loop forever. The sum of
    every byte after the user block is checked before the HDF5 library opens the file."""
    import h5py

    from spikingjelly_ff.runtime.userblock import MAGIC, USERBLOCK

    model, _ = _model(kind, tmp_path)
    data = model.save(tmp_path / "s.nir").read_bytes()
    assert data.startswith(MAGIC) and data[USERBLOCK : USERBLOCK + 4] == b"\x89HDF"

    def no_hdf5(*args, **kwargs):
        raise AssertionError("h5py opened a file whose sum did not match")

    monkeypatch.setattr(h5py, "File", no_hdf5)
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.nir"
    for offset in [USERBLOCK, len(data) - 1, *rng.integers(USERBLOCK, len(data), 40)]:
        changed = bytearray(data)
        changed[offset] ^= 0x5A
        bad.write_bytes(bytes(changed))
        with pytest.raises(ArtifactError, match="bytes do not match its checksum"):
            load_exported(bad)
    bad.write_bytes(data[:-100])
    with pytest.raises(ArtifactError, match="bytes do not match its checksum"):
        load_exported(bad)
    bad.write_bytes(b"sjff-nir sha257" + data[15:])  # the line itself damaged
    with pytest.raises(ArtifactError, match="neither a checksum line nor HDF5"):
        load_exported(bad)
    monkeypatch.undo()
    assert load_exported(tmp_path / "s.nir").weights[0].shape == model.weights[0].shape


def _unstamped(tmp_path):
    """(model, path of its artefact as written before the sum line: HDF5 from byte 0)."""
    import h5py

    model, _ = _model("spiking", tmp_path)
    path = model.save(tmp_path / "s.nir")
    old = tmp_path / "old.nir"
    with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            src.copy(name, dst)
    assert old.read_bytes()[:4] == b"\x89HDF"
    return model, old


def test_a_spike_artefact_without_the_sum_line_still_loads(tmp_path, monkeypatch):
    """A file written before the sum line is left to the in-file checks, after HDF5 has parsed
    it in a child process (a file with the line is checked by its sum and needs no child)."""
    import subprocess

    from spikingjelly_ff.runtime import userblock

    monkeypatch.delenv("SJFF_PROBE_SECONDS", raising=False)
    children = []
    run = subprocess.run
    monkeypatch.setattr(userblock.subprocess, "run", lambda cmd, **kw: children.append(cmd[4]) or run(cmd, **kw))
    model, old = _unstamped(tmp_path)
    children.clear()  # the writer's own reading above
    loaded = load_exported(old)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.weights, model.weights))
    assert children == [str(old)]
    load_exported(tmp_path / "s.nir")
    assert children == [str(old)]


@pytest.mark.parametrize("stamped", [True, False])
def test_a_file_replaced_while_it_is_checked_is_read_as_it_was_checked(tmp_path, monkeypatch, stamped):
    """The sum, the child's probe and HDF5 see one reading of the file's bytes: a file replaced
    right after its check (here by another model's valid file) is read as the bytes that were
    checked, never as a file the check did not see."""
    from spikingjelly_ff.runtime import artifact

    model, old = _unstamped(tmp_path)
    path = tmp_path / "s.nir" if stamped else old
    first = [w.copy() for w in model.weights]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model.weights[0][...] += 1.0
    other = model.save(tmp_path / "other.nir").read_bytes()
    check = artifact.check_userblock
    seen = []

    def check_then_replace(data, name):
        seen.append(check(data, name))
        path.write_bytes(other)  # written over between the check and the parse
        return seen[-1]

    monkeypatch.setattr(artifact, "check_userblock", check_then_replace)
    loaded = load_exported(path)
    assert seen == [stamped] and path.read_bytes() == other
    assert all(np.array_equal(a, b) for a, b in zip(loaded.weights, first))
    assert loaded.source_sha256 == digest  # the bytes it was parsed from, not the file's now
    assert loaded.to_artifact().source_sha256 is None  # what a save writes is no file's yet
    monkeypatch.undo()
    assert np.array_equal(load_exported(path).weights[0], first[0] + 1.0)


def test_a_large_file_that_is_no_artefact_is_refused_from_its_first_bytes(tmp_path):
    """The loader reads a spike artefact's bytes once, whole; a file that starts as none does
    (here 256 MiB of someone's data, sparse on disk) is refused after its first 512 bytes."""
    import tracemalloc

    big = tmp_path / "data.nir"
    with open(big, "wb") as fh:
        fh.write(b"not a model")
        fh.truncate(256 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="neither a checksum line nor HDF5"):
            load_exported(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


IMPORTED = "print('imported', flush=True); import os, signal, time; "


@pytest.mark.parametrize(
    "child,env,message",
    [
        # what a damaged object header did to h5py in the loading process (session 36's fuzzing)
        (IMPORTED + "os.kill(os.getpid(), signal.SIGSEGV)", "", r"crashed the HDF5 library \(signal 11\)"),
        (IMPORTED + "os._exit(0)", "", r"crashed the HDF5 library \(exit code 0\)"),  # no "done" said
        (IMPORTED + "time.sleep(600)", "1", "did not finish in 1 s"),
        (IMPORTED + "os.kill(os.getpid(), signal.SIGKILL)", "", r"was stopped \(SIGKILL\) .* no verdict"),
        ("", "soon", "SJFF_PROBE_SECONDS must be a number of seconds from 0.1 to 86400, got 'soon'"),
        ("", "1e9", "SJFF_PROBE_SECONDS must be a number of seconds from 0.1 to 86400, got '1e9'"),
    ],
)
def test_an_unchecked_file_that_crashes_or_hangs_the_hdf5_reader_is_refused(tmp_path, monkeypatch, child, env, message):
    """The child stands in for the HDF5 library on a damaged file (which damage crashes or
    loops depends on the HDF5 version: ``benchmarks/fuzz_files.py`` finds real ones): the
    loading process gets one clear error, and lives."""
    from spikingjelly_ff.runtime import userblock

    _, old = _unstamped(tmp_path)
    monkeypatch.setattr(userblock, "_PROBE", child)
    monkeypatch.setenv("SJFF_PROBE_SECONDS", env)
    with pytest.raises(ArtifactError, match=message) as err:
        load_exported(old)
    if "crashed" in message or "did not finish" in message:
        assert "no checksum" in str(err.value) and "export the model again" in str(err.value)


def test_where_the_child_cannot_read_the_file_is_read_in_process(tmp_path, monkeypatch):
    """A child that cannot import this library (an interpreter of another environment) is no
    verdict on the file: it is read in process, as before the probe."""
    from spikingjelly_ff.runtime import userblock

    model, old = _unstamped(tmp_path)
    monkeypatch.setattr(userblock, "_PROBE", "raise SystemExit(1)")
    assert load_exported(old).weights[0].shape == model.weights[0].shape


def test_the_child_imports_what_the_parent_does(tmp_path, monkeypatch):
    """A folder named like this library in the working directory is not what the child reads
    the file with (``-P`` and the parent's import path)."""
    model, old = _unstamped(tmp_path)
    fake = tmp_path / "cwd" / "spikingjelly_ff"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_exported(old).weights[0].shape == model.weights[0].shape


def test_damaged_onnx_fields_are_one_clear_error(tmp_path):
    """Fields damaged past reading had escaped as AttributeError (metadata no longer UTF-8),
    KeyError (an unknown element type) or onnxruntime's Fail; the graph's outputs and opsets
    are covered by the sum."""
    path, model, _ = _export("analog", tmp_path)
    data = path.read_bytes()
    at = data.index(b'"format"')
    (tmp_path / "utf8.onnx").write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    with pytest.raises(ValueError, match="checksum|not a usable"):
        AnalogModel.load(tmp_path / "utf8.onnx")

    proto = onnx.load(str(path))
    _first_weight(proto, model).data_type = 99
    onnx.save(proto, str(tmp_path / "dtype.onnx"))
    with pytest.raises(ValueError, match="not a usable spikingjelly-ff ONNX export"):
        AnalogModel.load(tmp_path / "dtype.onnx")

    for name, edit in {
        "outputs": lambda p: setattr(p.graph.output[1], "name", "probMbility"),
        "opset": lambda p: setattr(p.opset_import[0], "version", 106),
    }.items():
        proto = onnx.load(str(path))
        edit(proto)
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        with pytest.raises(ValueError, match="does not match its checksum"):
            AnalogModel.load(tmp_path / f"{name}.onnx")


def test_a_spiking_onnx_export_carries_the_sum_of_its_scan_body(tmp_path):
    """The spiking export's time loop is a Scan whose body is a subgraph: the sum walks it as
    values too (not protobuf's text of it), so a changed constant inside the body shows."""
    from spikingjelly_ff.export.onnx import spiking_to_onnx
    from spikingjelly_ff.runs.build import build_model
    from spikingjelly_ff.runs.config import config_from_dict

    model = {"kind": "spiking", "layers": [12, 8], "encoder": {"steps": 6}}
    train = {"learner": "hebbian", "hebbian": {"learn_after": 2}}
    net = build_model(config_from_dict({"model": model, "train": train}).model, 144, 10, 0)
    proto = onnx.load(str(spiking_to_onnx(net, tmp_path / "s.onnx")))
    stored = next(p.value for p in proto.metadata_props if p.key == DIGEST_KEY)
    assert onnx_digest(proto) == stored
    scan = next(n for n in proto.graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    t = next(t for t in body.initializer if numpy_helper.to_array(t).dtype == np.float32)
    a = numpy_helper.to_array(t).copy()
    a.flat[0] += 1.0
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    assert onnx_digest(proto) != stored
