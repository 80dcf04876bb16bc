"""Data-parallel training on real torch.distributed processes (gloo, CPU, 2 ranks of one
thread each): the model and the test predictions of 2 processes equal those of one process
with the same per-sample draws (docs/distributed.md)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.config import ConfigError, load_config
from spikingjelly_ff.runs.launch import DistributedError, launch, train_parallel
from spikingjelly_ff.runs.train import train

# Not imported from conftest: spawned ranks import this module, and in a session that also
# collected tests/conftest.py the name ``conftest`` may resolve to that file.
MINI = Path(__file__).resolve().parents[1] / "data" / "mnist-mini"
BASE = [f"data.dataset={MINI}", "data.download=false", "train.epochs=1", "threads=1", "eval.limit=300"]

CASES = {
    "paper-batched-hebbian": ("paper/hebbian-batched-symmetric", []),
    "spiking-two-layers": (
        "paper/hebbian-batched-sigmoid",
        ["model.layers=[200, 100]", "train.negatives=paired", "train.augment_shift=1"],
    ),
    "analog-local-loss": ("paper/analog-symmetric", ["model.layers=[128, 64]", "train.augment_shift=1"]),
    "analog-hebbian": (
        "paper/analog-symmetric",
        ["model.layers=[128, 64]", "train.learner=hebbian", "train.hebbian.eta=0.05", "train.negatives=paired"],
    ),
}


def _config(name: str, *extra: str):
    base, sets = CASES[name]
    return load_config(base, [*BASE, *sets, *extra])


def _weights(run_dir) -> list[torch.Tensor]:
    net, _, _ = load_model(run_dir / "model")
    return [layer.weight.detach().clone() for layer in net.layers]


def _same_model_on_two_processes(name: str, tmp_path: Path, *extra: str) -> None:
    cfg = _config(name, "train.draws=per-sample", *extra)
    one = train(cfg, tmp_path / "one", log=lambda s: None, progress=False)
    two = train_parallel(cfg, tmp_path / "two", nproc=2, timeout_s=60, progress=False, log=lambda s: None)

    for a, b in zip(_weights(tmp_path / "two"), _weights(tmp_path / "one")):
        assert torch.isfinite(a).all(), f"{name}: non-finite weights on 2 processes"
        assert (a - b).norm() <= 1e-5 * b.norm(), f"{name}: weights differ by {(a - b).norm() / b.norm():.2e}"
    assert two["test_accuracy"] == one["final"]["test_accuracy"]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["config"]["train"]["draws"] == "per-sample"


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_train_the_one_process_model(name, tmp_path):
    _same_model_on_two_processes(name, tmp_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_last_batch_smaller_than_the_process_count(name, tmp_path):
    """201 samples in batches of 100: the last batch has 1 row, so rank 1 trains on an empty
    shard; it must add nothing (no NaN from a mean over no rows, no crash in its draws or
    membranes) and still join every collective."""
    _same_model_on_two_processes(name, tmp_path, "train.limit=201", "train.batch_size=100")


@pytest.mark.parametrize(
    ("name", "extra", "stop"),
    [
        ("analog-local-loss", [], (1, 0)),
        ("spiking-two-layers", [], (1, 0)),  # carried membranes of paired rows, gathered across the ranks
        ("spiking-two-layers", ["train.limit=201", "train.batch_size=100"], (1, 0)),  # rank 1's last shard is empty
        ("spiking-two-layers", ["train.checkpoint_batches=13"], (2, 26)),  # within epoch 2 of 40 batches
    ],
)
def test_a_stopped_run_resumes_on_two_processes(name, extra, stop, tmp_path, monkeypatch):
    """Per-sample draws make a run's state the same on any number of ranks: a run stopped on
    one process (after epoch 1, or at batch 26 of epoch 2) goes on from resume.pt on two, where
    every rank loads it, to the model of an uninterrupted two-process run (whose ranks write
    their checkpoints together)."""
    from spikingjelly_ff.runs import train as train_module

    class Stopped(Exception):
        pass

    real = train_module.save_state

    def save_then_stop(out, state):
        real(out, state)
        position = state["position"] or {"epoch": state["epoch"], "batch": 0}
        if (position["epoch"], position["batch"]) == stop:
            raise Stopped

    cfg = _config(name, "train.draws=per-sample", "train.epochs=3", "train.eval_every=1", *extra)
    two = train_parallel(cfg, tmp_path / "two", nproc=2, timeout_s=60, progress=False, log=lambda s: None)
    with monkeypatch.context() as m, pytest.raises(Stopped):
        m.setattr(train_module, "save_state", save_then_stop)
        train(cfg, tmp_path / "resumed", log=lambda s: None, progress=False)
    resumed = train_parallel(cfg, tmp_path / "resumed", nproc=2, timeout_s=60, progress=False, log=lambda s: None,
                             resume=True)  # fmt: skip
    for a, b in zip(_weights(tmp_path / "resumed"), _weights(tmp_path / "two")):
        assert (a - b).norm() <= 1e-5 * b.norm(), f"{name}: weights differ by {(a - b).norm() / b.norm():.2e}"
    assert resumed["test_accuracy"] == two["test_accuracy"]
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    two_metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    at = {"epoch": 2, "batch": stop[1]}
    assert metrics["resumed_at"] == [at] and len(metrics["epochs"]) == 3
    judged = [e["train_pn_accuracy"] for e in two_metrics["epochs"]]
    assert [e["train_pn_accuracy"] for e in metrics["epochs"]] == judged  # the counts before the stop included
    assert metrics["processes"] == 2  # the part after the stop ran on two
    assert not (tmp_path / "resumed" / "resume.pt").exists()


@record
def _reduce_with_an_empty_rank() -> list[torch.Tensor]:
    from spikingjelly_ff.runs.distributed import Reducer, close_world, init_world

    world = init_world(torch.device("cpu"), "gloo", 60.0)
    try:
        reducer = Reducer(world)
        reducer.rows = 2
        if world.rank == 0:  # means over its 2 rows, all of the batch
            grads, n = [torch.ones(3), torch.full((2, 2), 4.0)], 2
        else:  # a loss averaged over no rows: NaN (and anything else must not count either)
            grads, n = [torch.full((3,), torch.nan), torch.full((2, 2), 1.0)], 0
        reducer.grads(grads, n)
        return grads
    finally:
        close_world()


def test_an_empty_rank_adds_zero_gradients():
    ranks = launch(2, _reduce_with_an_empty_rank)
    for grads in ranks.values():
        assert torch.equal(grads[0], torch.ones(3)) and torch.equal(grads[1], torch.full((2, 2), 4.0))


@record
def _gather_and_split_membranes() -> tuple:
    from spikingjelly_ff.runs.distributed import close_world, init_world
    from spikingjelly_ff.runs.sharded import ShardedLoop

    world = init_world(torch.device("cpu"), "gloo", 60.0)
    try:
        loop = ShardedLoop(None, _config("spiking-two-layers"), world, None, 10, (28, 28))  # paired negatives
        loop.last_batch = 5
        lo, hi = world.shard(5)
        whole = torch.arange(30.0).reshape(10, 3)  # rows: the batch's 5 positives, then its 5 negatives
        mine = torch.cat((whole[lo:hi], whole[5 + lo : 5 + hi]))  # what this rank carries
        gathered = loop.global_state({"count": 3, "neurons": [(mine, 0.0)]})
        back = loop.local_state(gathered)
        return gathered["neurons"][0], back["neurons"][0], mine, gathered["count"]
    finally:
        close_world()


def test_carried_membranes_are_gathered_across_ranks_and_split_back():
    """What two ranks carry (each its shard of the positives and of the negatives) becomes, in
    the resume state, what one process carries, and goes back to each rank unchanged."""
    ranks = launch(2, _gather_and_split_membranes)
    assert len(ranks) == 2
    for (gathered, trace), (back, _), mine, count in ranks.values():
        assert torch.equal(gathered, torch.arange(30.0).reshape(10, 3)) and trace == 0.0 and count == 3
        assert torch.equal(back, mine)


@record
def _resume_from_different_states() -> None:
    from spikingjelly_ff.runs.distributed import close_world, init_world
    from spikingjelly_ff.runs.train import _same_state_on_every_rank

    world = init_world(torch.device("cpu"), "gloo", 60.0)
    try:  # rank 1 sees no resume.pt where rank 0 reads one: an output folder not shared by the nodes
        state = {"epoch": 1, "position": None} if world.rank == 0 else None
        _same_state_on_every_rank(world, state, 40)
    finally:
        close_world()


def test_ranks_that_read_different_states_are_refused():
    with pytest.raises(DistributedError, match="read different resume states from resume.pt"):
        launch(2, _resume_from_different_states)


def _predictions(model_dir, cfg, world=None) -> torch.Tensor:
    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.evaluate import evaluate_sharded
    from spikingjelly_ff.runs.sharded import batch_scorer

    net, _, _ = load_model(model_dir)
    x, y = load_split(str(MINI), "test", None, False).take(300).to_tensors("cpu")
    return evaluate_sharded(batch_scorer(net, cfg, torch.device("cpu"), False), x, y, 100, world)["predictions"]


@record
def _gathered_predictions(model_dir, cfg) -> torch.Tensor:
    from spikingjelly_ff.runs.distributed import close_world, init_world

    world = init_world(torch.device("cpu"), "gloo", 60.0)
    try:
        return _predictions(model_dir, cfg, world)
    finally:
        close_world()


def test_sharded_evaluation_gathers_the_one_process_predictions(tmp_path):
    """3 test batches on 2 ranks (2 + 1): every rank ends with all 300 predictions, those of
    one process (a spiking net: each batch scored from rest, its draws keyed by its index)."""
    cfg = _config("paper-batched-hebbian", "train.draws=per-sample", "train.limit=200", "eval.batch_size=100")
    train(cfg, tmp_path, log=lambda s: None, progress=False)
    one = _predictions(tmp_path / "model", cfg)
    ranks = launch(2, _gathered_predictions, tmp_path / "model", cfg)
    assert torch.equal(ranks[0], one) and torch.equal(ranks[1], one)


def test_online_learning_is_refused_on_several_processes(tmp_path):
    cfg = load_config("paper/hebbian-online-symmetric", BASE)
    with pytest.raises(ConfigError, match="online learning.*replicated server"):
        train_parallel(cfg, tmp_path, nproc=2, progress=False)


@record
def _fail_on_rank_1(timeout_s: float) -> None:
    from spikingjelly_ff.runs.distributed import init_world

    world = init_world(torch.device("cpu"), "gloo", timeout_s)
    if world.rank == 1:
        raise RuntimeError("rank 1 cannot read its data")
    world.all_sum(torch.zeros(1))  # rank 0 waits here for a rank that is gone


def test_a_failed_rank_stops_the_run_with_its_error():
    """Rank 0 blocks in a collective for rank 1, which raised: the launcher stops rank 0 and
    reports rank 1's error. Start-up has the launcher's long default; the collective timeout
    (120 s) is far beyond the test, so only the failure can end it."""
    with pytest.raises(DistributedError, match="rank 1 of 2 failed.*cannot read its data"):
        launch(2, _fail_on_rank_1, 120.0)


@record
def _hang_on_rank_1(timeout_s: float) -> None:
    from spikingjelly_ff.runs.distributed import init_world

    world = init_world(torch.device("cpu"), "gloo", timeout_s)
    if world.rank == 1:
        threading.Event().wait()  # alive but never joins the collective
    world.all_sum(torch.zeros(1))


def test_a_hung_rank_ends_the_run_at_the_collective_timeout():
    """Rank 1 lives but never joins: rank 0's collective (3 s timeout) raises gloo's timeout
    error. Joining the group has its own long timeout, so a slow start cannot end it."""
    with pytest.raises(DistributedError, match="rank 0 of 2 failed.*[Tt]imed out"):
        launch(2, _hang_on_rank_1, 3.0)
