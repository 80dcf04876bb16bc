"""Training epochs as CUDA graph replays: one launch from Python per batch, not forty.

On a GPU the paper's batched row is bound by the host: the kernel takes 0.43 ms per batch of
50, the Python that issues the batch's small ops (sample draw, embedding, Bernoulli spikes,
the launch, the judged score, the count) about as long or longer, depending on the machine
(docs/gpu.md). Here an epoch runs its first batch as usual (which makes what the capture
needs: the kernels' scratch memory, carried membranes of the batch's shape), captures the
next one into a CUDA graph and replays that graph for every full batch after it; a last,
smaller batch runs as usual. The epoch runs on a side stream (a capture cannot use the
default stream).

Why the replays train what the eager loop trains, number for number:

* the batch's rows are copied into the graph's input before each replay, and the graph
  gathers its images and labels with the eager loop's ops;
* the random streams (the sample draw's and the trainer's) are registered with the graph:
  each replay draws at the generator's offsets, which move as the eager ops move them
  (torch's graph-safe Philox state);
* the learning rate is fixed in the graph, so the schedule must be ``constant``; the
  trainer's step count advances once per replay, outside the graph;
* the weights and eligibility traces learn in place; each layer's carried membrane and
  trace are copied back, at the end of the graph, into the tensors the next replay reads;
* the count of correct judgements accumulates in a tensor of the graph.

``SJFF_GRAPH=0`` keeps the eager loop. A capture that fails (an op that waits for the
device, say) is undone and the run goes on eagerly, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.samples import Batcher, make_samples

__all__ = ["GraphedEpochs", "graph_blocker", "graph_enabled"]


def graph_enabled() -> bool:
    """``SJFF_GRAPH=0`` turns graphed epochs off (benchmarks compare the two loops)."""
    return os.environ.get("SJFF_GRAPH", "1") != "0"


def graph_blocker(cfg: RunConfig, learner, device: torch.device) -> str | None:
    """Why this run's epochs cannot be graph replays (``None``: they can)."""
    from spikingjelly_ff.learning.engine import SpikingTrainer

    t = cfg.train
    if not graph_enabled():
        return "SJFF_GRAPH=0"
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


def cuda_capture(body: Callable[[], None], generators: list[torch.Generator], stream) -> Callable[[], None]:
    """Capture ``body`` into a CUDA graph on ``stream``; returns its replay."""
    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        body()
    return graph.replay


class GraphedEpochs:
    """The epochs of a ``train.draws: stream`` run of a :class:`SpikingTrainer`, each full
    batch after the first a replay of one captured batch (see the module docstring).

    ``capture(body, generators, stream)`` returns what replays ``body`` (default
    :func:`cuda_capture`; the CPU tests run ``body`` itself at every replay, which checks
    everything here but the capture)."""

    def __init__(self, batches: Batcher, trainer, cfg: RunConfig, num_classes: int, sample_gen: torch.Generator,
                 capture=cuda_capture, stream=None) -> None:  # fmt: skip
        self.batches = batches
        self.trainer = trainer
        self.mode = cfg.train.negatives
        self.num_classes = num_classes
        self.sample_gen = sample_gen
        self.capture = capture
        cuda = batches.x.device.type == "cuda"
        self.stream = stream if stream is not None or not cuda else torch.cuda.Stream(batches.x.device)
        self.failed: str | None = None  # why a capture failed; the run then goes on eagerly

    def _batch(self, rows: Tensor, correct: Tensor, eta: float | None) -> None:
        """One batch as ``stream_epoch`` runs it; ``eta`` None: the trainer counts the step
        and takes its rate, else the rate is ``eta`` and the step is counted by the caller."""
        b = self.batches
        xb, lb = b.x[rows], b.labels[rows]
        picked, shown, y = make_samples(lb, self.mode, self.num_classes, self.sample_gen)
        x = xb if self.mode == "mixed" else xb[picked]
        t = self.trainer
        pred = t.train_batch(x, shown, y) if eta is None else t.train_batch_at(x, shown, y, eta)
        correct += (pred.float() == y).sum()

    def _carried(self) -> list[tuple[object, str, object]]:
        """(neuron, attribute, value) of every layer's carried membrane and trace."""
        return [(layer.neuron, name, getattr(layer.neuron, name)) for layer in self.trainer.net.layers
                for name in ("v", "trace")]  # fmt: skip

    def _captured(self, rows: Tensor, correct: Tensor, eta: float):
        """The replay of one batch read from ``rows``, or None where the capture failed (the
        trainer's state as it was, ``self.failed`` says why)."""
        carried = self._carried()
        gens = [self.sample_gen, self.trainer.generator]
        saved = [g.get_state() for g in gens]

        def body() -> None:
            self._batch(rows, correct, eta)
            for obj, name, before in carried:  # the next replay reads what this one leaves
                after = getattr(obj, name)
                if after is before:
                    continue
                if not isinstance(before, Tensor) or not isinstance(after, Tensor) or before.shape != after.shape:
                    raise GraphUnsafe(f"a layer's carried {name} changed shape within the epoch")
                before.copy_(after)
                setattr(obj, name, before)

        try:
            return self.capture(body, gens, self.stream)
        except Exception as exc:  # noqa: BLE001 - any failure: undo, warn, go on eagerly
            for obj, name, before in carried:
                setattr(obj, name, before)
            for g, state in zip(gens, saved):
                g.set_state(state)
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"CUDA graph capture failed, training goes on without graphs ({self.failed})", stacklevel=2)
            return None

    def epoch(self, bar, at: dict | None = None, checkpoint=None, every: int = 0) -> tuple[int, int]:
        """One epoch; returns (correctly judged, judged) rows, and calls ``checkpoint`` every
        ``every`` batches as :func:`~spikingjelly_ff.runs.samples.stream_epoch` does. On a GPU
        the whole epoch runs on a side stream of its own (a capture cannot use the default
        stream), ordered after the work before it and before the work after it."""
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
        correct = torch.zeros((), dtype=torch.int64, device=b.x.device)
        replay, rows = None, None
        eta = self.trainer.rate()  # a constant schedule (graph_blocker): every batch's rate
        for i, start in enumerate(range(first * size, n, size), first):
            batch = on_device[start : start + size]
            full = len(batch) == size
            if replay is None and full and i > first and self.failed is None:
                rows = batch.clone()
                replay = self._captured(rows, correct, eta)
            if replay is not None and full:
                rows.copy_(batch)
                self.trainer.count += 1
                replay()
            else:
                self._batch(batch, correct, None)
            seen += len(batch) if self.mode == "mixed" else 2 * len(batch)
            if not bar.disable:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(pn_acc=f"{(base + int(correct)) / seen:.3f}")
            if checkpoint is not None and every and (i + 1) % every == 0:
                checkpoint({"batch": i + 1, "source": i + 1, "correct": base + int(correct), "seen": seen,
                            "buffer": [], "pending": []})  # fmt: skip
        return base + int(correct), seen
