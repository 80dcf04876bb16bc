"""Training epochs as CUDA graph replays (``runs/graphed.py``) train what the eager loop
trains: the same weights bit for bit, the same counts and resume states.

On the CPU the capture is replaced by running the captured batch at every replay, which
checks everything but the capture itself: the batch rows fed to the graph, the step count
and rate, the copied-back membranes, the counts, checkpoints within an epoch and the last,
smaller batch. The capture runs on a GPU (``bash benchmarks/gpu_check.sh``)."""

from __future__ import annotations

import json
import warnings
from functools import partial

import pytest
import torch
from conftest import MINI
from safetensors.torch import load_file

from spikingjelly_ff.kernels import cupy_backend
from spikingjelly_ff.runs import graphed as graphed_module
from spikingjelly_ff.runs import train as train_module
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.graphed import GraphedEpochs, graph_blocker
from spikingjelly_ff.runs.train import train

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cupy_backend.available()), reason="needs CUDA and CuPy")


def quiet(line: str) -> None:
    pass


def batched(**sets):
    """The paper's batched P_sym row on the MNIST subset: 230 images in batches of 50 (four
    full batches and one of 30), two epochs."""
    base = [f"data.dataset={MINI}", "data.download=false", "train.limit=230", "eval.limit=100", "train.epochs=2"]
    return load_config("paper/hebbian-batched-symmetric", base + [f"{k}={v}" for k, v in sets.items()])


class Replays:
    """A stand-in for ``cuda_capture`` on the CPU: every replay runs the captured batch, once
    it has checked what a CUDA graph takes for granted: that the layers' carried membranes and
    traces are the tensors it was captured with (a graph reads and writes fixed memory)."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0

    def __call__(self, body, generators, stream, carried):
        assert len(generators) == 2 and stream is None
        self.captures += 1

        def replay() -> None:
            for obj, name, tensor in carried:
                assert getattr(obj, name) is tensor, f"a replay would read a stale {name}"
            self.replays += 1
            body()

        return replay


def graphed_on_cpu(monkeypatch, capture) -> None:
    """Make ``train`` take the graphed loop on the CPU with ``capture``."""
    monkeypatch.setattr(train_module, "graph_blocker", lambda cfg, learner, device: None)
    monkeypatch.setattr(train_module, "GraphedEpochs", partial(GraphedEpochs, capture=capture))


def record_states(monkeypatch) -> list[dict]:
    """Every state ``train`` saves (after each epoch, and within one at checkpoints)."""
    states, real = [], train_module.save_state

    def save(out, state):
        states.append(state)
        real(out, state)

    monkeypatch.setattr(train_module, "save_state", save)
    return states


def same_state(a, b, where: str = "state") -> None:
    """Equal saved states: tensors bit for bit (the step count, random streams, eligibility
    traces, carried membranes and traces), the metrics but for the seconds."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() - {"cuda_graph"} == b.keys() - {"cuda_graph"}, where
        for k in a:
            if "seconds" not in k and k not in ("cuda_graph", "train_samples_per_second", "test_images_per_second"):
                same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def same_training(a: dict, b: dict, run_a, run_b) -> None:
    wa, wb = (load_file(str(r / "model" / "model.safetensors")) for r in (run_a, run_b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    keys = ("train_pn_accuracy", "test_accuracy")
    assert [{k: e.get(k) for k in keys} for e in a["epochs"]] == [{k: e.get(k) for k in keys} for e in b["epochs"]]


@pytest.mark.parametrize("negatives", ["mixed", "paired"])
def test_graph_replays_train_what_the_eager_loop_trains(negatives, tmp_path, monkeypatch):
    cfg = batched(**{"train.negatives": negatives, "train.eval_every": 1, "train.checkpoint_batches": 2})
    with monkeypatch.context() as m:
        eager_states = record_states(m)
        eager = train(cfg, tmp_path / "eager", log=quiet, progress=False)
    capture = Replays()
    graphed_on_cpu(monkeypatch, capture)
    states = record_states(monkeypatch)
    replayed = train(cfg, tmp_path / "graphed", log=quiet, progress=False)
    # the run's second batch captured; in each epoch the first batch eagerly, the second to
    # fourth replayed, the batch of 30 eagerly
    assert (capture.captures, capture.replays) == (1, 6)
    assert replayed["cuda_graph"] == "replays"
    same_training(eager, replayed, tmp_path / "eager", tmp_path / "graphed")
    # after batches 2 and 4 of each epoch, and after each epoch
    assert [(s["epoch"], (s["position"] or {}).get("batch")) for s in states] == [
        (0, 2), (0, 4), (1, None), (1, 2), (1, 4), (2, None)
    ]  # fmt: skip
    same_state(eager_states, states)
    assert states[-1]["learner"]["count"] == 10


def test_a_stopped_graphed_run_resumes_within_an_epoch(tmp_path, monkeypatch):
    """Checkpoints every 2 batches from the graphed loop; a run stopped at batch 2 of epoch 2
    goes on to the eager run's weights."""
    cfg = batched(**{"train.checkpoint_batches": 2})
    eager = train(cfg, tmp_path / "eager", log=quiet, progress=False)
    graphed_on_cpu(monkeypatch, Replays())
    real = train_module.save_state

    class Stopped(Exception):
        pass

    def save_then_stop(out, state):
        real(out, state)
        if state["position"] is not None and (state["position"]["epoch"], state["position"]["batch"]) == (2, 2):
            raise Stopped

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_state", save_then_stop)
        with pytest.raises(Stopped):
            train(cfg, tmp_path / "graphed", log=quiet, progress=False)
    resumed = train(cfg, tmp_path / "graphed", log=quiet, progress=False, resume=True)
    assert resumed["resumed_at"] == [{"epoch": 2, "batch": 2}]
    same_training(eager, resumed, tmp_path / "eager", tmp_path / "graphed")


def test_a_failed_capture_is_undone_and_the_run_goes_on_eagerly(tmp_path, monkeypatch):
    cfg = batched()
    eager = train(cfg, tmp_path / "eager", log=quiet, progress=False)

    def refuse(body, generators, stream, carried):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed_on_cpu(monkeypatch, refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        failed = train(cfg, tmp_path / "failed", log=quiet, progress=False)
    assert [str(w.message) for w in caught if "CUDA graph" in str(w.message)] == [
        "CUDA graph capture failed, training goes on without graphs "
        "(RuntimeError: operation not permitted when stream is capturing)"
    ]  # once: the second epoch does not try again
    assert failed["cuda_graph"].startswith("off: the capture failed (RuntimeError")
    same_training(eager, failed, tmp_path / "eager", tmp_path / "failed")
    assert json.loads((tmp_path / "failed" / "metrics.json").read_text())["cuda_graph"] == failed["cuda_graph"]


def test_an_input_given_new_memory_is_captured_again(tmp_path, monkeypatch):
    """A graph reads its inputs at the addresses it was captured with: where one was given new
    memory between epochs (the label codes rebuilt with the same values), the next full batch
    is captured again instead of replaying a graph that reads freed memory."""
    cfg = batched()
    eager = train(cfg, tmp_path / "eager", log=quiet, progress=False)
    capture = Replays()
    graphed_on_cpu(monkeypatch, capture)
    real = GraphedEpochs.epoch

    def epoch(self, *args, **kwargs):
        if self.graph is not None:
            codes = self.trainer.net.embedding.codes
            self.trainer.net.embedding.set_patterns(self.trainer.net.embedding.patterns.clone())
            assert self.trainer.net.embedding.codes is not codes
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GraphedEpochs, "epoch", epoch)
    replayed = train(cfg, tmp_path / "graphed", log=quiet, progress=False)
    assert (capture.captures, capture.replays) == (2, 6)  # batch 2 of epoch 2 captured again
    same_training(eager, replayed, tmp_path / "eager", tmp_path / "graphed")


def small_epochs(capture) -> tuple[GraphedEpochs, object]:
    """GraphedEpochs over a 784->200 layer whose membrane is [50, 200], and that layer."""
    cfg = batched()
    net = train_module.build_model(cfg.model, 784, 10, 0, "torch")
    layer = net.layers[0]
    layer.neuron.v, layer.neuron.trace = torch.zeros(50, 200), torch.zeros(50, 200)
    trainer = type("Trainer", (), {"net": net, "generator": torch.Generator(), "rate": lambda self: 0.5})()
    trainer.eligibility = [torch.zeros_like(layer.weight)]
    batches = train_module.Batcher(torch.zeros(0, 784), torch.zeros(0), 50, False, torch.Generator())
    return GraphedEpochs(batches, trainer, cfg, 10, torch.Generator(), capture=capture), layer


def test_a_carried_state_that_changes_shape_cannot_be_replayed(monkeypatch):
    """The capture's body refuses to copy a carried membrane of another shape back (the next
    replay would read a stale one); the run then goes on eagerly."""
    epochs, layer = small_epochs(lambda body, gens, stream, carried: body())
    before = layer.neuron.v

    def batch(rows, eta):
        layer.neuron.v = torch.zeros(30, 200)

    monkeypatch.setattr(epochs, "_batch", batch)
    with pytest.warns(UserWarning, match="carried v changed shape within the epoch"):
        epochs._capture()
    assert epochs.graph is None and epochs.failed.startswith("GraphUnsafe")
    assert layer.neuron.v is before  # as before the capture


def test_a_capture_that_fails_on_the_device_stops_the_run(monkeypatch):
    """``cuda_capture`` turns any failure inside the capture into CaptureFailed, naming the
    error that broke the capture (torch's capture_end reports only its own), and the run
    stops instead of going on with a state it cannot trust. Checked with stand-ins for
    torch's graph (no GPU here)."""

    class Graph:
        def register_generator_state(self, g):
            pass

    class Capturing:
        def __init__(self, graph, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local"

        def __enter__(self):
            return self

        def __exit__(self, kind, value, tb):
            if kind is RuntimeError:  # what an op that waits for the device leaves: capture_end fails
                raise RuntimeError("operation failed due to a previous error during capture")
            return False

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capturing)

    def syncs():
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(graphed_module.CaptureFailed) as err:
        graphed_module.cuda_capture(syncs, [], None, [])
    assert "operation failed due to a previous error during capture (after RuntimeError: operation not " in str(
        err.value
    )
    assert "train without SJFF_GRAPH=1" in str(err.value)

    def unsafe():
        raise graphed_module.GraphUnsafe("a layer's carried v changed shape within the epoch")

    with pytest.raises(graphed_module.GraphUnsafe):  # a Python-side refusal: the run goes on eagerly
        graphed_module.cuda_capture(unsafe, [], None, [])

    def broken(body, gens, stream, carried):
        raise graphed_module.CaptureFailed("the CUDA graph capture of a training batch failed")

    epochs, layer = small_epochs(broken)
    with pytest.raises(graphed_module.CaptureFailed):
        epochs._capture()


def test_what_keeps_the_eager_loop(monkeypatch):
    from spikingjelly_ff.runs.steps import make_step

    def blocker(cfg, device="cuda"):
        net = train_module.build_model(cfg.model, 784, 10, 0, "torch")
        _, learner = make_step(net, cfg, 10, torch.device("cpu"))
        return graph_blocker(cfg, learner, torch.device(device))

    monkeypatch.setenv("SJFF_GRAPH", "1")

    assert blocker(batched()) is None
    assert blocker(batched(**{"train.batch_size": 1})) is None  # on a GPU one sample is one launch too
    assert blocker(batched(), "cpu") == "not on a CUDA device"
    assert "scored between batches" in blocker(batched(**{"train.negatives": "hard"}))
    assert "drawn on the CPU" in blocker(batched(**{"train.augment_shift": 1}))
    assert "made on the CPU" in blocker(batched(**{"train.draws": "per-sample"}))
    assert "cosine schedule" in blocker(batched(**{"train.hebbian.schedule": "cosine"}))
    assert blocker(load_config("paper/analog-symmetric", [f"data.dataset={MINI}"])) == "not a dense spiking net"
    for value in (None, "0", "yes"):  # opt-in until checked on a GPU
        if value is None:
            monkeypatch.delenv("SJFF_GRAPH")
        else:
            monkeypatch.setenv("SJFF_GRAPH", value)
        assert blocker(batched()) == "opt-in until checked on a GPU: SJFF_GRAPH=1 turns it on"
    assert not graphed_module.graph_enabled()


@gpu
@pytest.mark.parametrize("path", ["one launch", "per step", "torch"])
def test_graph_replays_on_a_gpu_train_what_the_eager_loop_trains(path, tmp_path, monkeypatch):
    """The real capture: each path's graphed run equals its eager run bit for bit."""
    backend = "torch" if path == "torch" else "cupy"
    monkeypatch.setenv("SJFF_PRESENT", "0" if path == "per step" else "1")
    cfg = batched(**{"device": "cuda", "backend": backend, "train.eval_every": 1})
    monkeypatch.setenv("SJFF_GRAPH", "0")
    eager = train(cfg, tmp_path / "eager", log=quiet, progress=False)
    assert eager["cuda_graph"] == "off: opt-in until checked on a GPU: SJFF_GRAPH=1 turns it on"
    monkeypatch.setenv("SJFF_GRAPH", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replayed = train(cfg, tmp_path / "graphed", log=quiet, progress=False)
    assert not [w for w in caught if "CUDA graph" in str(w.message)]
    assert replayed["cuda_graph"] == "replays"
    same_training(eager, replayed, tmp_path / "eager", tmp_path / "graphed")
