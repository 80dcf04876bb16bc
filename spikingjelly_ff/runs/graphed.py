"""Training epochs as CUDA graph replays: one launch from Python per batch, not forty.

On a GPU the paper's batched row is bound by the host: the kernel takes 0.43 ms per batch of
50, the Python that issues the batch's small ops (sample draw, embedding, Bernoulli spikes,
the launch, the judged score, the count) about as long or longer, depending on the machine
(docs/gpu.md). Here the run's first batch runs as usual (which makes what the capture needs:
the kernels' scratch memory, carried membranes of the batch's shape), the second is captured
into a CUDA graph, and every full batch after it is a replay of that graph, but for the first
batch of each epoch, which runs as usual too (it starts from the membranes the test pass
left, or from rest); a last, smaller batch runs as usual. Epochs run on a side stream (a
capture cannot use the default stream).

Why the replays train what the eager loop trains, number for number:

* the batch's rows are copied into the graph's input before each replay, and the graph
  gathers its images and labels with the eager loop's ops;
* the random streams (the sample draw's and the trainer's) are registered with the graph:
  each replay draws at the generator's offsets, which move as the eager ops move them
  (torch's graph-safe Philox state);
* the learning rate is fixed in the graph, so the schedule must be ``constant``; the
  trainer's step count advances once per replay, outside the graph;
* the weights and eligibility traces learn in place; each layer's carried membrane and
  trace are copied back, at the end of the graph, into the tensors the next replay reads
  (and, before a replay, from the tensors a batch run as usual left);
* the count of correct judgements accumulates in a tensor of the graph;
* a graph reads its inputs (images, labels, label codes, weights, eligibility traces) at the
  addresses it was captured with: where one of them was given new memory since (a label code
  rebuilt, a weight assigned), the next full batch is captured again.

Graphed epochs are opt-in (``SJFF_GRAPH=1``) until they have passed their check on a GPU
(``benchmarks/gpu_check.sh``); without it the eager loop runs. Where the capture cannot start (a torch without
``register_generator_state``) or the batch cannot be replayed, the run goes on eagerly, with a
warning; a capture that fails on the device (an op that waits for it, say) stops the run with
an error that says so: torch's allocator and random streams cannot be trusted after it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.samples import Batcher, judge_batch

__all__ = ["GraphedEpochs", "graph_blocker", "graph_enabled"]


def graph_enabled() -> bool:
    """``SJFF_GRAPH=1`` turns graphed epochs on: opt-in until they have passed their check
    on a GPU (``benchmarks/gpu_check.sh``, which compares the two loops)."""
    return os.environ.get("SJFF_GRAPH", "0") == "1"


def graph_blocker(cfg: RunConfig, learner, device: torch.device) -> str | None:
    """Why this run's epochs cannot be graph replays (``None``: they can)."""
    from spikingjelly_ff.learning.engine import SpikingTrainer

    t = cfg.train
    if not graph_enabled():
        return "opt-in until checked on a GPU: SJFF_GRAPH=1 turns it on"
    if device.type != "cuda":
        return "not on a CUDA device"
    if not isinstance(learner, SpikingTrainer):
        return "not a dense spiking net"
    if learner.reduce is not None or t.draws != "stream":
        return "per-sample draws (data parallel) are made on the CPU"
    if t.negatives not in ("mixed", "paired"):
        return f"negatives {t.negatives!r} are scored between batches"
    if t.augment_shift > 0:
        return "shifted images are drawn on the CPU"
    if t.hebbian.schedule != "constant":
        return f"the {t.hebbian.schedule} schedule changes the rate at every batch"
    return None


class GraphUnsafe(RuntimeError):
    """The batch cannot be replayed as it was captured."""


class CaptureFailed(RuntimeError):
    """The CUDA graph capture failed on the device; the process's CUDA state is not to be
    trusted for training after it."""


def cuda_capture(
    body: Callable[[], None], generators: list[torch.Generator], stream, carried: list
) -> Callable[[], None]:
    """Capture ``body`` into a CUDA graph on ``stream``; returns its replay, which holds the
    graph and the memory it reads and writes in place: the kernels' scratch buffers and the
    ``carried`` ``(neuron, attribute, tensor)`` tensors, which each replay expects the
    attributes to hold (:func:`rebind`)."""
    from spikingjelly_ff.kernels import cupy_present

    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)  # AttributeError on a torch without it: nothing started yet
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            body()
    except GraphUnsafe:
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        if exc.__context__ is not None:  # capture_end's error hides the one that broke the capture
            cause += f" (after {type(exc.__context__).__name__}: {exc.__context__})"
        raise CaptureFailed(
            f"the CUDA graph capture of a training batch failed ({cause}); the run stops, as torch's "
            "allocator and random streams cannot be trusted after it: train without SJFF_GRAPH=1 (add --resume "
            "to go on from the last saved state)"
        ) from exc
    keep = (tuple(cupy_present._SCRATCH.values()), tuple(cupy_present._BARRIERS.values()), carried)

    def replay() -> None:
        graph.replay()

    replay.keep = keep  # the memory the graph writes lives as long as its replay
    return replay


def graph_inputs(batches: Batcher, trainer) -> list[Tensor]:
    """The tensors a captured batch reads by address and that the run could give new memory:
    the images and labels, the label codes, each layer's weights and eligibility trace."""
    net = trainer.net
    weights = [layer.weight for layer in net.layers]
    return [batches.x, batches.labels, net.embedding.codes, *weights, *trainer.eligibility]


def rebind(carried: list[tuple[object, str, Tensor]]) -> None:
    """Make each ``(neuron, attribute, tensor)`` hold ``tensor`` again, with the values the
    attribute holds now (a batch just left them there)."""
    for obj, name, before in carried:
        after = getattr(obj, name)
        if after is before:
            continue
        if not isinstance(after, Tensor) or before.shape != after.shape:
            raise GraphUnsafe(f"a layer's carried {name} changed shape within the epoch")
        before.copy_(after)
        setattr(obj, name, before)


class GraphedEpochs:
    """The epochs of a ``train.draws: stream`` run of a :class:`SpikingTrainer`, their full
    batches replays of one captured batch (see the module docstring).

    ``capture(body, generators, stream, carried)`` returns what replays ``body`` (default
    :func:`cuda_capture`; the CPU tests run ``body`` itself at every replay, after checking
    that the carried attributes hold the tensors the graph would read, which checks everything
    here but the capture)."""

    def __init__(self, batches: Batcher, trainer, cfg: RunConfig, num_classes: int, sample_gen: torch.Generator,
                 capture=cuda_capture) -> None:  # fmt: skip
        self.batches = batches
        self.trainer = trainer
        self.mode = cfg.train.negatives
        self.num_classes = num_classes
        self.sample_gen = sample_gen
        self.capture = capture
        device = batches.x.device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.failed: str | None = None  # why the batch could not be captured; the run then goes on eagerly
        self.correct = torch.zeros((), dtype=torch.int64, device=device)  # an epoch's count, in the graph
        self.rows = torch.zeros(batches.batch_size, dtype=torch.int64, device=device)  # the graph's input
        self.graph: tuple | None = None  # (replay, carried, the inputs' addresses) once captured

    def _batch(self, rows: Tensor, eta: float | None) -> int:
        """One batch as ``stream_epoch`` runs it (returns the samples judged); ``eta`` None:
        the trainer counts the step and takes its rate, else the rate is ``eta`` and the step
        is counted by the caller."""
        b, t = self.batches, self.trainer
        step = t.train_batch if eta is None else partial(t.train_batch_at, eta=eta)
        right, judged = judge_batch(step, b.x[rows], b.labels[rows], self.mode, self.num_classes, self.sample_gen)
        self.correct += right
        return judged

    def _capture(self) -> None:
        """Capture the batch read from ``self.rows`` (``self.graph``), or, where that cannot
        be, leave the trainer's state as it was and say why in ``self.failed``."""
        layers = self.trainer.net.layers
        carried = [(layer.neuron, name, getattr(layer.neuron, name)) for layer in layers for name in ("v", "trace")]
        gens = [self.sample_gen, self.trainer.generator]
        saved = [g.get_state() for g in gens]
        eta = self.trainer.rate()  # a constant schedule (graph_blocker): every batch's rate

        def body() -> None:
            self._batch(self.rows, eta)
            rebind(carried)  # the next replay reads what this one leaves

        try:
            if not all(isinstance(before, Tensor) for _, _, before in carried):
                raise GraphUnsafe("a layer carries no membrane tensor after the first batch")
            inputs = graph_inputs(self.batches, self.trainer)
            replay = self.capture(body, gens, self.stream, carried)
            # the graph holds the memory it read, so none of it is reused while it lives
            replay.keep = (getattr(replay, "keep", ()), [t.detach() for t in inputs])
            self.graph = (replay, carried, [t.data_ptr() for t in inputs])
        except CaptureFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing ran on the device: undo, warn, go on eagerly
            for obj, name, before in carried:
                setattr(obj, name, before)
            for g, state in zip(gens, saved):
                g.set_state(state)
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"CUDA graph capture failed, training goes on without graphs ({self.failed})", stacklevel=2)

    def _reads_in_place(self) -> bool:
        """Whether the graph's inputs are where it was captured to read them."""
        return [t.data_ptr() for t in graph_inputs(self.batches, self.trainer)] == self.graph[2]

    def epoch(self, bar, at: dict | None = None, checkpoint=None, every: int = 0) -> tuple[int, int]:
        """One epoch; returns (correctly judged, judged) rows, and calls ``checkpoint`` every
        ``every`` batches as :func:`~spikingjelly_ff.runs.samples.stream_epoch` does. On a GPU
        the epoch runs on the side stream, ordered after the work before it and before the
        work after it."""
        device = self.batches.x.device
        if self.stream is None:
            return self._epoch(bar, at, checkpoint, every)
        here = torch.cuda.current_stream(device)
        self.stream.wait_stream(here)
        with torch.cuda.stream(self.stream):
            out = self._epoch(bar, at, checkpoint, every)
        here.wait_stream(self.stream)
        return out

    def _epoch(self, bar, at, checkpoint, every: int) -> tuple[int, int]:
        b = self.batches
        order, first = b.begin_epoch()
        on_device = order.to(b.x.device)
        n, size = len(b.labels), b.batch_size
        base, seen = (0, 0) if at is None else (at["correct"], at["seen"])
        self.correct.zero_()
        for i, start in enumerate(range(first * size, n, size), first):
            batch = on_device[start : start + size]
            replays = len(batch) == size and i > first and self.failed is None
            if replays and self.graph is not None and not self._reads_in_place():
                self.graph = None  # an input was given new memory: capture again
            if replays and self.graph is None:
                self._capture()  # records the batch read from self.rows; runs nothing
            if replays and self.graph is not None:
                replay, carried, _ = self.graph
                rebind(carried)  # after the epoch's first batch, which ran as usual
                self.rows.copy_(batch)
                self.trainer.count += 1
                replay()  # judges as many samples as the epoch's first batch, which ran as usual
            else:
                judged = self._batch(batch, None)
            seen += judged
            if not bar.disable:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(pn_acc=f"{(base + int(self.correct)) / seen:.3f}")
            if checkpoint is not None and every and (i + 1) % every == 0:
                checkpoint({"batch": i + 1, "source": i + 1, "correct": base + int(self.correct), "seen": seen,
                            "buffer": [], "pending": []})  # fmt: skip
        return base + int(self.correct), seen
