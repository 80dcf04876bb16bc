"""The sample stream of a training run: batches in the epoch's order, the positive and
negative samples of each, hard negatives scored ahead, and the epoch loop over them.

``stream_epoch`` drives one epoch of ``train.draws: stream`` (one process); the sharded loop
(:mod:`~spikingjelly_ff.runs.sharded`) does the same for ``per-sample`` draws. A stopped
epoch is picked up where :mod:`~spikingjelly_ff.runs.resume` saved it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spikingjelly_ff.nn.augment import shift_images
from spikingjelly_ff.runs.config import RunConfig

__all__ = ["Batcher", "HardNegatives", "Lookahead", "batch_samples", "judge_batch", "make_samples", "stream_epoch"]


def make_samples(
    labels: Tensor, mode: str, num_classes: int, generator: torch.Generator, scores: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Positive and negative samples of a batch.

    Returns ``(index, shown_label, y)``: which batch row each sample uses, the label written
    into it, and the target (1 positive, 0 negative). ``mixed`` makes each row positive or
    negative with probability 1/2 (the paper); ``paired`` shows every row both ways.
    Negatives get a uniformly random wrong label, or, given the model's current ``scores``
    ``[N, C]`` (``negatives: hard``), a wrong label drawn in proportion to softmax(scores):
    the labels the network confuses most are shown most often, as Hinton suggests. ``none``
    (competitive nets): every row once, shown its true class, target 1.
    """
    n = labels.shape[0]
    if mode == "none":
        return torch.arange(n, device=labels.device), labels, torch.ones(n, device=labels.device)
    if n == 1 and scores is None and mode == "mixed" and labels.device.type == "cpu":
        return _one_mixed_sample(labels, num_classes, generator)
    if scores is None:
        wrong = (labels + torch.randint(1, num_classes, (n,), generator=generator, device=labels.device)) % num_classes
    else:
        logits = scores.float().scatter(1, labels.unsqueeze(1), float("-inf"))
        wrong = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    rows = torch.arange(n, device=labels.device)
    if mode == "mixed":
        y = (torch.rand(n, generator=generator, device=labels.device) < 0.5).float()
        shown = torch.where(y.bool(), labels, wrong)
        return rows, shown, y
    y = torch.cat((torch.ones(n, device=labels.device), torch.zeros(n, device=labels.device)))
    return torch.cat((rows, rows)), torch.cat((labels, wrong)), y


def _one_mixed_sample(labels: Tensor, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``make_samples`` of one CPU row, ``mixed``: the same two draws in the same order, the
    rest on Python numbers (on-line training makes one sample at a time, and eight tiny tensor
    ops cost more than its presentation's draws)."""
    offset = int(torch.randint(1, num_classes, (1,), generator=generator))
    positive = float(torch.rand(1, generator=generator)) < 0.5
    label = int(labels[0])
    shown = label if positive else (label + offset) % num_classes
    rows = torch.zeros(1, dtype=torch.int64)
    dtype = torch.promote_types(labels.dtype, torch.int64)  # as labels + an int64 draw
    return rows, torch.tensor([shown], dtype=dtype), torch.tensor([1.0 if positive else 0.0], dtype=torch.float32)


def judge_batch(
    step, xb: Tensor, labels: Tensor, mode: str, num_classes: int, generator, scores=None
) -> tuple[Tensor, int]:
    """A batch's samples (:func:`make_samples`) through ``step(x, shown, y)``; returns how many
    the network judged right, a tensor on the batch's device (reading it would make the host
    wait for the GPU), and how many it judged."""
    x, shown, y = batch_samples(xb, labels, mode, num_classes, generator, scores)
    return (step(x, shown, y).float() == y).sum(), len(y)


def batch_samples(
    xb: Tensor, labels: Tensor, mode: str, num_classes: int, generator, scores=None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(images [S, D], shown labels [S], targets [S])`` of a batch's samples (:func:`make_samples`;
    S = B, or 2B for paired negatives)."""
    rows, shown, y = make_samples(labels, mode, num_classes, generator, scores)
    return (xb if mode == "mixed" else xb[rows]), shown, y  # mixed: every row once, in order


@dataclass
class Batcher:
    """The batches of an epoch: ``(images [B, D], labels [B], dataset rows [B])``, in an order
    drawn from ``generator`` when the epoch starts (``shuffle``), else in dataset order."""

    x: Tensor
    labels: Tensor
    batch_size: int
    shuffle: bool
    generator: torch.Generator

    # the epoch's sample order (drawn when an epoch starts) and, for the next epoch only, where
    # a resumed run picks it up: (order, first batch)
    order: Tensor | None = None
    resume_at: tuple[Tensor, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def begin_epoch(self) -> tuple[Tensor, int]:
        """Start an epoch: ``(order, first batch)``, the order drawn now (or a resumed run's)."""
        if self.resume_at is not None:
            (self.order, start), self.resume_at = self.resume_at, None
        else:
            n = len(self.labels)
            self.order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            start = 0
        return self.order, start

    def __iter__(self):
        order, start = self.begin_epoch()
        on_device = order.to(self.x.device)  # one copy per epoch, not one per batch
        for i in range(start * self.batch_size, len(self.labels), self.batch_size):
            rows = on_device[i : i + self.batch_size]
            yield self.x[rows], self.labels[rows], order[i : i + self.batch_size]


class Lookahead:
    """Iterator over batches that can also hand out the next few batches in advance."""

    def __init__(self, source) -> None:
        self.source = iter(source)
        self.buffer: list = []

    def __iter__(self):
        return self

    def __next__(self):
        return self.buffer.pop(0) if self.buffer else next(self.source)

    def upcoming(self, images: int) -> list:
        """The next batches (left in place) until they hold at least ``images`` images."""
        while sum(len(b[0]) for b in self.buffer) < images:
            try:
                self.buffer.append(next(self.source))
            except StopIteration:
                break
        return self.buffer


class HardNegatives:
    """All-label scores for hard negatives, computed for ~``block`` images at a time: scoring
    one image per call (online training) would cost far more than learning from it."""

    def __init__(self, scores_fn, block: int = 200) -> None:
        self.scores_fn = scores_fn
        self.block = block
        self.pending: list[Tensor] = []

    def __call__(self, xb: Tensor, stream: Lookahead) -> Tensor:
        if not self.pending:
            chunk = [xb, *(b for b, _ in stream.upcoming(self.block - len(xb)))]
            scores = self.scores_fn(torch.cat(chunk))
            self.pending = list(torch.split(scores, [len(c) for c in chunk]))
        return self.pending.pop(0)


def stream_epoch(
    bar,
    step,
    cfg: RunConfig,
    num_classes: int,
    shape,
    gen,
    sample_gen,
    scores,
    at=None,
    checkpoint=None,
    ahead=None,
    rows=None,
) -> tuple[int, int]:
    """One epoch with the run's random streams (``train.draws: stream``); returns (correctly
    judged, judged) rows. ``ahead(x, shown)`` (a trainer's ``prefetch``) is told each batch's
    samples a batch early, drawn from ``sample_gen`` in the same order; it returns False where
    it will not use them. ``rows(x, shown, y)`` (a trainer's ``train_rows``: as one ``step`` per
    row) learns runs of one-row batches in one call, up to 64 at a time (an error in one, such as
    a bad label, is raised when its run is learnt; the progress bar's counts lag by up to a run).
    Every ``train.checkpoint_batches`` batches ``checkpoint(position)`` is called with what picks
    the epoch up there (``at`` of a resumed run): the next batch, the counts, and the batches
    (images shifted) and hard-negative scores already drawn ahead."""
    correct, seen, first = 0, 0, 0
    stream = Lookahead((shift_images(xb, shape, cfg.train.augment_shift, gen), lb) for xb, lb, _ in bar)
    hard = HardNegatives(scores) if cfg.train.negatives == "hard" else None
    if at is not None:
        correct, seen, first = at["correct"], at["seen"], at["batch"]
        stream.buffer = list(at["buffer"])
        if hard is not None:
            hard.pending = list(at["pending"])
    every = cfg.train.checkpoint_batches
    mode = "paired" if cfg.train.negatives == "hard" else cfg.train.negatives
    drawn = None  # the next batch's samples, made ahead for ``ahead``
    judged: list[tuple[Tensor, Tensor]] = []  # (judged positive, targets) not yet counted
    block: list[tuple[Tensor, Tensor, Tensor]] = []  # one-row samples waiting for ``rows``

    def count() -> None:  # in one comparison for many batches: at batch 1 each op is dear
        nonlocal correct, seen
        if block:
            x, shown, y = (torch.cat(part) for part in zip(*block))
            judged.append((rows(x, shown, y), y))
            block.clear()
        if judged:
            pred, y = torch.cat([p for p, _ in judged]), torch.cat([y for _, y in judged])
            correct, seen = correct + (pred.float() == y).sum(), seen + len(y)
            judged.clear()

    for i, (xb, lb) in enumerate(stream, first):
        scores = None if hard is None else hard(xb, stream)
        announced, drawn = drawn, None
        samples = announced or batch_samples(xb, lb, mode, num_classes, sample_gen, scores)
        due = checkpoint is not None and every and (i + 1) % every == 0
        # hard negatives need the scores after this batch; a checkpoint saves the streams
        # as they stand after it, so neither may draw ahead
        if ahead is not None and hard is None and not due and stream.upcoming(1):
            nxb, nlb = stream.buffer[0]
            drawn = batch_samples(nxb, nlb, mode, num_classes, sample_gen)
            # this batch first where it was not announced: the worker draws in the order told
            told = announced is not None or ahead(samples[0], samples[1]) is not False
            if not told or ahead(drawn[0], drawn[1]) is False:  # e.g. batch-1 learning
                ahead = None
        if rows is not None and len(samples[2]) == 1:
            block.append(samples)  # learnt with the next ones, in order, in one call
        else:
            count()  # the rows before it first
            judged.append((step(*samples), samples[2]))
        if len(block) + len(judged) >= 64 or due:
            count()
        if not bar.disable and i % 20 == 0 and seen:
            bar.set_postfix(pn_acc=f"{int(correct) / seen:.3f}")
        if due:
            pending = [] if hard is None else list(hard.pending)
            checkpoint({"batch": i + 1, "source": i + 1 + len(stream.buffer), "correct": int(correct), "seen": seen,
                        "buffer": list(stream.buffer), "pending": pending})  # fmt: skip
    count()
    return int(correct), seen
