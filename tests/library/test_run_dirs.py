"""Where the commands write (``runs/outputs.py``): a finished run is not replaced unless
asked, one process at a time writes a run folder, a readout or an export never writes over
the model it reads, and a failed export leaves nothing behind."""

from __future__ import annotations

import hashlib
import os

import pytest
from conftest import mini_config

from spikingjelly_ff.cli import main
from spikingjelly_ff.runs.checkpoint import CheckpointError
from spikingjelly_ff.runs.config import ConfigError
from spikingjelly_ff.runs.outputs import try_lock
from spikingjelly_ff.runs.readout import fit_readout
from spikingjelly_ff.runs.train import train


def quiet(line: str) -> None:
    pass


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small(kind: str = "spiking", **sets):
    return mini_config(kind, **{"train.limit": 60, "eval.limit": 40, **sets})


def test_a_finished_run_is_replaced_only_when_asked(tmp_path):
    run = tmp_path / "run"
    train(small(), run, log=quiet, progress=False)
    weights, record = digest(run / "model" / "model.safetensors"), (run / "metrics.json").read_text()
    with pytest.raises(CheckpointError, match="holds a finished run .*pass --overwrite to replace it"):
        train(small(seed=5), run, log=quiet, progress=False)
    assert digest(run / "model" / "model.safetensors") == weights and (run / "metrics.json").read_text() == record

    class Stopped(Exception):
        pass

    def stop(line: str) -> None:
        if line.startswith("epoch 1"):
            raise Stopped

    # an overwrite stopped part-way leaves the new run's state, not a mix with the old model
    with pytest.raises(Stopped):
        train(small(seed=5, **{"train.epochs": 2}), run, log=stop, progress=False, overwrite=True)
    assert not (run / "model").exists() and (run / "resume.pt").is_file()
    train(small(seed=5, **{"train.epochs": 2}), run, log=quiet, progress=False, resume=True)
    train(small(seed=5, **{"train.epochs": 2}), tmp_path / "fresh", log=quiet, progress=False)
    assert digest(run / "model" / "model.safetensors") == digest(tmp_path / "fresh" / "model" / "model.safetensors")
    with pytest.raises(ConfigError, match="pass one of them"):
        train(small(), run, log=quiet, progress=False, resume=True, overwrite=True)


def test_one_process_at_a_time_writes_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = try_lock(run)  # as another sjff train would hold it
    assert fd is not None and try_lock(run) is None
    try:
        with pytest.raises(CheckpointError, match="is being written by another process"):
            train(small(), run, log=quiet, progress=False)
        assert list(run.iterdir()) == [run / ".lock"]  # nothing written
    finally:
        os.close(fd)
    train(small(), run, log=quiet, progress=False)  # free again, and the run released it
    fd = try_lock(run)
    assert fd is not None
    os.close(fd)


def test_an_overwrite_refused_before_it_writes_keeps_the_old_run(tmp_path):
    run = tmp_path / "run"
    train(small(), run, log=quiet, progress=False)
    weights = digest(run / "model" / "model.safetensors")
    with pytest.raises(Exception, match="dataset"):  # the new run fails before its first write
        train(small(**{"data.dataset": str(tmp_path / "none")}), run, log=quiet, progress=False, overwrite=True)
    assert digest(run / "model" / "model.safetensors") == weights and (run / "metrics.json").is_file()


def test_the_server_takes_its_state_lock_without_torch(tmp_path):
    """The server image has no torch: its state lock is the library's torch-free one."""
    import subprocess
    import sys
    from pathlib import Path

    from test_runtime import NO_TORCH

    root = Path(__file__).resolve().parents[2]
    code = NO_TORCH + (
        "import sys\nfrom sjff_server.storage.snapshots import StateInUse, lock_state\n"
        "fd = lock_state(sys.argv[1])\n"
        "try:\n    lock_state(sys.argv[1])\nexcept StateInUse:\n    print('refused')\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'server'}")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"


@pytest.mark.parametrize("where", ["", "file", "file/sub"])
def test_an_out_that_is_no_folder_is_refused_before_anything_runs(tmp_path, where):
    (tmp_path / "file").write_text("mine")
    out = "" if where == "" else tmp_path / where
    with pytest.raises(ConfigError, match="--out is empty|is a file, not a folder"):
        train(small(), out, log=quiet, progress=False)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_readout_never_writes_over_a_run(tmp_path):
    run = tmp_path / "run"
    train(small("analog"), run, log=quiet, progress=False)
    weights, record = digest(run / "model" / "model.safetensors"), (run / "metrics.json").read_text()
    sets = ["train.readout.epochs=1"]
    for out in (run, run / "model", run / "model" / "inner"):
        with pytest.raises(ConfigError, match="holds the model the readout is fitted to"):
            fit_readout(run / "model", out, sets, log=quiet, overwrite=True)
    other = tmp_path / "other"
    train(small("analog", seed=3), other, log=quiet, progress=False)
    theirs = digest(other / "model" / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds a finished run"):
        fit_readout(run / "model", other, sets, log=quiet)
    assert digest(other / "model" / "model.safetensors") == theirs
    assert digest(run / "model" / "model.safetensors") == weights and (run / "metrics.json").read_text() == record
    fit_readout(run / "model", other, sets, log=quiet, overwrite=True)
    assert digest(other / "model" / "model.safetensors") != theirs
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "resume.pt").write_bytes(b"a stopped run's state")
    with pytest.raises(CheckpointError, match="holds a stopped training run"):
        fit_readout(run / "model", stopped, sets, log=quiet)
    assert sorted(p.name for p in stopped.iterdir()) == ["resume.pt"]


def test_an_export_never_writes_over_what_it_was_not_asked_to(tmp_path, capsys):
    run = tmp_path / "run"
    train(small(), run, log=quiet, progress=False)
    model = run / "model"
    weights = digest(model / "model.safetensors")
    taken = tmp_path / "taken.onnx"
    taken.write_text("mine")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--format", "onnx", "--out", str(model / "model.safetensors")], "inside the model folder"),
        (["--format", "spike", "--out", str(model)], "inside the model folder"),
        (["--format", "onnx", "--out", str(taken)], "exists: choose another path, or pass --overwrite"),
        (["--format", "onnx", "--out", str(tmp_path / "folder")], "is a folder; name the file to write"),
        (["--format", "spike", "--out", str(taken)], "is a file, not a folder"),  # taken.onnx/model.nir
        (["--format", "onnx", "--out", str(tmp_path / "l.onnx"), "--latent"], "--latent is for analog models"),
        (["--format", "spike", "--out", str(tmp_path / "l.nir"), "--latent"], "--latent is for analog ONNX"),
    ]
    for args, message in cases:
        assert main(["export", str(model), *args]) == 2
        assert message in capsys.readouterr().err
    assert digest(model / "model.safetensors") == weights and taken.read_text() == "mine"
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(tmp_path.glob("*.part"))
    assert main(["export", str(model), "--format", "onnx", "--out", str(taken), "--overwrite"]) == 0
    assert taken.read_bytes()[:4] != b"mine"


def test_a_failed_export_write_leaves_no_part_file(tmp_path, monkeypatch):
    import onnx

    from spikingjelly_ff.export.onnx import graph

    def fail(model, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        graph.save_model(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
