"""The torch-free runtime: golden vectors written by the torch side are replayed in a process
that cannot import torch; bad artefacts are refused with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from edit_utils import edit_h5

from spikingjelly_ff.export.spike import export_spike
from spikingjelly_ff.learning.engine import SpikingScorer, SpikingTrainer
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runtime import ArtifactError, SpikeModel, read_artifact, write_artifact

NO_TORCH = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, _Block())
    """
)


@pytest.fixture(scope="module")
def golden(spiking_run, tmp_path_factory):
    """Export the trained model and record what the torch engine does on fixed spikes."""
    out = tmp_path_factory.mktemp("golden")
    net, cfg, meta = load_model(spiking_run / "model")
    art = export_spike(
        net,
        out / "model.nir",
        meta["image_shape"],
        hebbian=cfg.train.hebbian,
        evaluation=cfg.eval.params,
        name=cfg.name,
    )
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 784, generator=g)
    infer_spikes = torch.stack([net.encode(net.rates(x, torch.full((6,), c)), g) for c in range(10)])
    net.layers[0].neuron.v = 0.0
    traces = SpikingScorer(net).layer_outputs(x, infer_spikes)
    net.layers[0].neuron.v = 0.0  # scoring carries membranes over; start the second run from rest too
    counts = SpikingScorer(net).layer_outputs(x, infer_spikes, counts=True)
    record = {"infer_spikes": infer_spikes.numpy(), "traces0": traces[0].numpy(), "counts0": counts[0].numpy()}
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    net.encoder = net.encoder.__class__(**{**net.encoder.to_dict(), "carry_membrane": False})  # each update from rest
    for step, n in enumerate([4, 1, 1, 4, 1]):
        lab = torch.randint(0, 10, (n,), generator=g)
        y = (torch.rand(n, generator=g) < 0.5).float()
        spikes = net.encode(net.rates(torch.rand(n, 784, generator=g), lab), g)
        record[f"learn_spikes_{step}"] = spikes.numpy()
        record[f"learn_y_{step}"] = y.numpy()
        trainer.train_batch(torch.zeros(n, 784), lab, y, spikes=spikes)
    record["weights_after"] = net.layers[0].weight.detach().numpy()
    record["eligibility_after"] = trainer.eligibility[0].numpy()
    np.savez(out / "golden.npz", **record)
    return art, out / "golden.npz"


CHECK = """
import sys, json
import numpy as np
from spikingjelly_ff.runtime import SpikeModel
from spikingjelly_ff.simulation import spike_currents
art, golden = sys.argv[1], sys.argv[2]
gv = np.load(golden)
m = SpikeModel.load(art)
traces = m.layer_outputs_from_spikes(gv["infer_spikes"])
ok_traces = bool(np.array_equal(traces[0], gv["traces0"]))
spikes = gv["infer_spikes"]
carry = m.art.encoder.carry_membrane
counts = m._score(spike_currents(spikes, m.weights[0]), spikes.shape[0], counts=True, carry=carry)
ok_counts = bool(np.array_equal(counts[0], gv["counts0"]))
step = 0
while f"learn_spikes_{step}" in gv:
    m.learn_spikes(gv[f"learn_spikes_{step}"], gv[f"learn_y_{step}"])
    step += 1
w = m.weights[0]
rel = float(np.abs(w - gv["weights_after"]).max() / np.abs(gv["weights_after"]).max())
e_ref = gv["eligibility_after"]
rel_e = float(np.abs(m.eligibility[0] - e_ref).max() / (np.abs(e_ref).max() + 1e-12))
out = {"traces": ok_traces, "counts": ok_counts, "weights_rel": rel, "elig_rel": rel_e, "torch": "torch" in sys.modules}
print(json.dumps(out))
"""


def _run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_runtime_replays_golden_vectors_without_torch(golden):
    art, gv = golden
    proc = _run_without_torch(CHECK, str(art), str(gv))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["torch"] is False
    assert res["traces"] and res["counts"], "spikes must match the torch side bit for bit"
    assert res["weights_rel"] < 1e-5 and res["elig_rel"] < 1e-4


def test_blocked_torch_really_is_blocked():
    proc = _run_without_torch("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_runtime_predicts_like_torch(spiking_run, golden, mini):
    from spikingjelly_ff.runs.data import load_split

    art, _ = golden
    net, cfg, _ = load_model(spiking_run / "model")
    test = load_split(str(mini), "test")
    x = test.images.astype(np.float32) / 255.0
    m = SpikeModel.load(art)
    acc_runtime = float((m.predict(x, seed=0) == test.labels).mean())
    scorer = SpikingScorer(net, seed=0)
    acc_torch = float((scorer.predict(torch.from_numpy(x)).numpy() == test.labels).mean())
    # Different random streams (numpy vs torch), same model: accuracies agree closely.
    assert abs(acc_runtime - acc_torch) < 0.05 and acc_runtime > 0.3


def test_runtime_learns_and_saves_atomically(golden, tmp_path):
    art, _ = golden
    m = SpikeModel.load(art)
    before = m.weights[0].copy()
    x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
    m.learn(x, np.array([1, 2, 3]), np.array([1, 0, 1]), seed=1)
    assert not np.array_equal(before, m.weights[0])
    out = m.save(tmp_path / "learned.nir")
    again = SpikeModel.load(out)
    assert np.array_equal(again.weights[0], m.weights[0]) and np.array_equal(again.eligibility[0], m.eligibility[0])
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match="shape"):
        m.predict(np.zeros((2, 783), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        m.predict(np.full((1, 784), np.nan, np.float32))
    with pytest.raises(ValueError, match="labels"):
        m.learn(x, np.array([1, 2, 99]), np.ones(3))


def test_artifact_is_valid_nir(golden):
    import nir

    art, _ = golden
    graph = nir.read(str(art))
    assert {"input", "linear_0", "lif_0", "output"} <= set(graph.nodes)
    assert graph.nodes["linear_0"].weight.shape == (200, 884)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", "bytes do not match its checksum"),
        ("version", "format version"),
        ("missing_field", "lacks"),
        ("shape", "label patterns must have shape"),
        ("not_ours", "not a spikingjelly-ff spike artefact"),
    ],
)
def test_bad_artifacts_are_refused(golden, tmp_path, damage, message):
    art, _ = golden
    bad = tmp_path / "bad.nir"
    data = Path(art).read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(data)
        with edit_h5(bad) as f:
            ours = f["spikingjelly_ff"]
            if damage == "version":
                ours.attrs["format_version"] = 99
            elif damage == "missing_field":
                meta = json.loads(ours["meta"][()])
                del meta["trace"]
                del ours["meta"]
                ours.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
            elif damage == "shape":
                del ours["label_patterns"]
                ours.create_dataset("label_patterns", data=np.zeros((10, 7), np.uint8))
            elif damage == "not_ours":
                del f["spikingjelly_ff"]
    with pytest.raises(ArtifactError, match=message):
        read_artifact(bad)


def test_write_refuses_inconsistent_models(golden, tmp_path):
    art = read_artifact(golden[0])
    art.weights = [np.zeros((200, 700), np.float32)]
    with pytest.raises(ArtifactError, match="expects 700 inputs"):
        write_artifact(tmp_path / "x.nir", art)
    art.weights = [np.full((200, 884), np.inf, np.float32)]
    with pytest.raises(ArtifactError, match="non-finite"):
        write_artifact(tmp_path / "x.nir", art)
