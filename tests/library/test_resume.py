"""A training run stopped after an epoch goes on from ``resume.pt`` to the weights and metrics
of the run that was never stopped; what cannot be continued is refused with a clear error."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import MINI, mini_config
from safetensors.torch import load_file

from spikingjelly_ff.kernels import resolve_backend
from spikingjelly_ff.runs import train as train_module
from spikingjelly_ff.runs.checkpoint import CheckpointError
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.resume import load_state, save_state
from spikingjelly_ff.runs.train import train

SMALL_CONV = (
    "model.conv=[{channels: 10, kernel: 3, padding: 1, pool: max, pool_size: 2}, {channels: 20, kernel: 3, padding: 1}]"
)


class Stopped(Exception):
    """What stops a run in these tests, right after an epoch has been recorded."""


def stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}:"):
            raise Stopped

    return log


def quiet(line: str) -> None:
    pass


def conv_config(base: str, *sets: str):
    subset = [f"data.dataset={MINI}", "data.download=false", "train.limit=300", "eval.limit=100", "train.epochs=3"]
    return load_config(base, [*subset, *sets])


def three(kind: str, **sets):
    return mini_config(kind, **{"train.epochs": 3, **sets})


# each learner with the random streams it draws from: batch order, image shifts, negatives
# (paired, hard), spike draws (numpy on the online path), the test scorer's, an optimizer's
# moments and schedule, eligibility traces
CASES = {
    "analog local losses, Adam, paired negatives": lambda: three("analog", **{"train.eval_every": 1}),
    "analog Hebbian, eligibility trace": lambda: three(
        "analog", **{"train.learner": "hebbian", "train.hebbian.eligibility_tau": 0.5, "train.eval_every": 1}
    ),
    "spiking online (batch 1)": lambda: three("spiking", **{"train.eval_every": 1}),
    "spiking batched, hard negatives, shifted images": lambda: three(
        "spiking", **{"train.batch_size": 20, "train.negatives": "hard", "train.augment_shift": 1}
    ),
    "spiking batched, input drawn a batch ahead, shifted images": lambda: three(
        "spiking", **{"train.batch_size": 20, "train.augment_shift": 1}
    ),
    "spiking conv, Adam on Hebbian deltas": lambda: conv_config(
        "conv/spiking-competitive-adam-mnist", "train.eval_every=1"
    ),
    "analog conv, warm-up, shifted images": lambda: conv_config(
        "conv/analog-competitive-mnist",
        SMALL_CONV,
        "model.score_layers=[1]",
        "train.eval_every=1",
        "train.augment_shift=1",
    ),
}


def _weights(run) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def _same_run(a: dict, b: dict, run_a, run_b) -> None:
    wa, wb = _weights(run_a), _weights(run_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    keys = ("train_pn_accuracy", "test_accuracy")
    assert [{k: e.get(k) for k in keys} for e in a["epochs"]] == [{k: e.get(k) for k in keys} for e in b["epochs"]]
    assert a["final"]["test_accuracy"] == b["final"]["test_accuracy"]


@pytest.mark.parametrize("case", list(CASES))
def test_a_stopped_run_resumes_to_the_uninterrupted_run(case, tmp_path):
    cfg = CASES[case]()
    assert cfg.train.epochs == 3
    straight = train(cfg, tmp_path / "straight", log=quiet, progress=False)
    with pytest.raises(Stopped):
        train(cfg, tmp_path / "stopped", log=stop_after(1), progress=False)
    state = tmp_path / "stopped" / "resume.pt"
    assert state.is_file() and not (tmp_path / "stopped" / "model").exists()
    lines = []
    resumed = train(cfg, tmp_path / "stopped", log=lines.append, progress=False, resume=True)
    assert any("resuming epoch 2 of 3 at batch 1 of" in line for line in lines)
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == ["epoch 2", "epoch 3"]
    _same_run(straight, resumed, tmp_path / "straight", tmp_path / "stopped")
    assert resumed["resumed_at"] == [{"epoch": 2, "batch": 0}]
    assert json.loads((tmp_path / "stopped" / "metrics.json").read_text())["resumed_at"] == resumed["resumed_at"]
    assert not state.exists()  # a finished run has nothing to resume
    assert not (tmp_path / "straight" / "resume.pt").exists()


def every_third(cfg):
    """``cfg`` writing its resume state about every third of an epoch, and that interval."""
    n = math.ceil((cfg.train.limit or 2000) / cfg.train.batch_size)  # the subset has 2,000 images
    every = max(1, n // 3)
    return replace(cfg, train=replace(cfg.train, checkpoint_batches=every)), every


def stop_at_checkpoint(monkeypatch, epoch: int, batch: int) -> None:
    """Stop the run right after it has written its state at ``batch`` of ``epoch``."""
    real = train_module.save_state

    def save_then_stop(out, state):
        real(out, state)
        position = state["position"]
        if position is not None and (position["epoch"], position["batch"]) == (epoch, batch):
            raise Stopped

    monkeypatch.setattr(train_module, "save_state", save_then_stop)


@pytest.mark.parametrize(
    "case",
    [
        "analog local losses, Adam, paired negatives",
        "spiking online (batch 1)",
        "spiking batched, hard negatives, shifted images",  # batches and scores drawn ahead
        "spiking batched, input drawn a batch ahead, shifted images",  # samples and spikes drawn ahead
        "spiking conv, Adam on Hebbian deltas",
    ],
)
def test_a_run_stopped_within_an_epoch_resumes_to_the_uninterrupted_run(case, tmp_path, monkeypatch):
    plain = CASES[case]()
    straight = train(plain, tmp_path / "straight", log=quiet, progress=False)  # no checkpoints within epochs
    cfg, every = every_third(plain)
    with monkeypatch.context() as m:
        stop_at_checkpoint(m, epoch=2, batch=2 * every)
        with pytest.raises(Stopped):
            train(cfg, tmp_path / "stopped", log=quiet, progress=False)
    lines = []
    resumed = train(cfg, tmp_path / "stopped", log=lines.append, progress=False, resume=True)
    assert any(f"resuming epoch 2 of 3 at batch {2 * every + 1} of" in line for line in lines)
    assert resumed["resumed_at"] == [{"epoch": 2, "batch": 2 * every}]
    _same_run(straight, resumed, tmp_path / "straight", tmp_path / "stopped")
    assert not (tmp_path / "stopped" / "resume.pt").exists()


@pytest.fixture
def stopped(tmp_path):
    """A 3-epoch spiking run stopped after its first epoch; returns (config, run directory)."""
    cfg = three("spiking")
    with pytest.raises(Stopped):
        train(cfg, tmp_path / "run", log=stop_after(1), progress=False)
    return cfg, tmp_path / "run"


def test_what_cannot_be_resumed_is_refused(stopped, tmp_path):
    cfg, run = stopped
    with pytest.raises(CheckpointError, match=r"holds a stopped run \(epoch 1 of 3 done\): continue it with --resume"):
        train(cfg, run, log=quiet, progress=False)  # starting over would throw its epochs away
    other = three("spiking", **{"train.hebbian.eta": 0.01})
    with pytest.raises(CheckpointError, match=r"other settings \(train.hebbian.eta: 0.5 -> 0.01\)"):
        train(other, run, log=quiet, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume: there is no resume.pt"):
        train(cfg, tmp_path / "empty", log=quiet, progress=False, resume=True)
    assert not (tmp_path / "empty").exists()  # refused before making the run folder
    assert (run / "resume.pt").is_file()  # none of the refusals touched it
    train(cfg, run, log=quiet, progress=False, resume=True)
    with pytest.raises(CheckpointError, match=r"nothing to resume: the run there has finished \(model/ is written\)"):
        train(cfg, run, log=quiet, progress=False, resume=True)


def test_a_damaged_state_is_refused_and_a_torn_write_is_ignored(stopped):
    cfg, run = stopped
    (run / ".resume.pt.tmp").write_bytes(b"half a state")  # a write cut short leaves the last state
    train(cfg, run, log=quiet, progress=False, resume=True)
    with pytest.raises(Stopped):
        train(cfg, run / "again", log=stop_after(1), progress=False)
    state = run / "again" / "resume.pt"
    good = state.read_bytes()
    head, _, payload = good.partition(b"\n")
    middle = len(good) // 2
    flipped = good[:middle] + bytes(b ^ 0xFF for b in good[middle : middle + 64]) + good[middle + 64 :]
    # torch's zip reader checks no CRC: bytes flipped in a tensor loaded, and the run went on
    for damaged in (good[:1000], flipped, head + b"\n" + payload[:-10] + bytes(10)):
        state.write_bytes(damaged)
        with pytest.raises(CheckpointError, match="resume.pt: the run's state is damaged .*delete it to start"):
            train(cfg, run / "again", log=quiet, progress=False, resume=True)
    state.write_bytes(b"PK" + bytes(100))  # no header: read as a state written before the checksum
    with pytest.raises(CheckpointError, match="(?s)cannot read the run.s state .*delete it to start the run afresh"):
        train(cfg, run / "again", log=quiet, progress=False, resume=True)
    state.write_bytes(payload)  # a state written before the checksum still resumes
    assert train(cfg, run / "again", log=quiet, progress=False, resume=True)["resumed_at"][0]["epoch"] == 2


def test_resuming_where_possible_takes_the_same_settings_and_starts_other_ones_afresh(stopped):
    """``resume=None``, as ``sjff reproduce`` trains its seeds."""
    cfg, run = stopped
    assert train(cfg, run, log=quiet, progress=False, resume=None)["resumed_at"] == [{"epoch": 2, "batch": 0}]
    for name, setting in [("other", {"train.hebbian.eta": 0.01}), ("damaged", {})]:
        with pytest.raises(Stopped):
            train(cfg, run / name, log=stop_after(1), progress=False)
        if name == "damaged":
            (run / name / "resume.pt").write_bytes(b"not a state")
        lines = []
        metrics = train(three("spiking", **setting), run / name, log=lines.append, progress=False, resume=None)
        assert "resumed_at" not in metrics and len(metrics["epochs"]) == 3
        assert any("starting afresh" in line for line in lines), name


def test_threads_another_device_or_backend_are_other_settings(stopped):
    """Float sums may change with the thread count, and the state of a CUDA run does not load
    on the CPU: a run resumes where it was stopped, on what it was stopped on."""
    cfg, run = stopped
    with pytest.raises(CheckpointError, match=r"other settings \(threads: 1 -> 2\)"):
        train(three("spiking", threads=2), run, log=quiet, progress=False, resume=True)
    state = load_state(run)
    assert state["run"] == {"device": "cpu", "backend": resolve_backend(cfg.backend, "cpu")}
    save_state(run, {**state, "run": {"device": "cuda", "backend": "cupy"}})
    with pytest.raises(CheckpointError, match=r"run.backend: 'cupy' -> '\w+', run.device: 'cuda' -> 'cpu'"):
        train(cfg, run, log=quiet, progress=False, resume=True)


def test_a_run_that_wrote_its_model_but_not_removed_its_state_is_finished(tmp_path, monkeypatch):
    """Stopped between writing model/ and removing resume.pt: nothing is left to resume, and
    the stale state is removed rather than refusing a new run."""
    cfg = three("spiking")
    with monkeypatch.context() as m:
        m.setattr(train_module, "RESUME_NAME", "not-this-one.pt")  # the removal misses the state
        train(cfg, tmp_path, log=quiet, progress=False)
    assert (tmp_path / "resume.pt").is_file() and (tmp_path / "model" / "config.json").is_file()
    with pytest.raises(CheckpointError, match="nothing to resume: the run there has finished"):
        train(cfg, tmp_path, log=quiet, progress=False, resume=True)
    assert not (tmp_path / "resume.pt").exists()


def test_the_cli_resumes_and_refuses_with_one_line(stopped, capsys):
    from spikingjelly_ff.cli import main

    cfg, run = stopped
    sets = [f"data.dataset={MINI}", "data.download=false", "train.epochs=3"]
    args = ["train", "paper/hebbian-online-symmetric", *[a for s in sets for a in ("--set", s)], "--out", str(run)]
    assert main([*args, "--quiet"]) == 2
    assert "holds a stopped run" in capsys.readouterr().err
    assert main([*args, "--quiet", "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"] is not None
    assert not (run / "resume.pt").exists()
