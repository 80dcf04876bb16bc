"""Training runs: data, model, learner, per-epoch evaluation, checkpoint and metrics.

``train(cfg, out_dir)`` writes ``out_dir/model/`` (weights + config) and
``out_dir/metrics.json`` (per-epoch train/test accuracy and seconds), the latter after every
epoch too, so that a long run can be followed and an interrupted one keeps its record (it has
a ``final`` section once the run has ended); ``out_dir/resume.pt``, written after every epoch
(and every ``train.checkpoint_batches`` batches), lets a stopped run go on from there
(:mod:`~spikingjelly_ff.runs.resume`).
Given a
:class:`~spikingjelly_ff.runs.distributed.World` of several ranks, every global batch is split
across them (``train.draws: per-sample``; docs/distributed.md) and rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from spikingjelly_ff.functional.schedule import schedule_factor, warmup_factor
from spikingjelly_ff.learning.learners import LocalLossLearner
from spikingjelly_ff.nn.augment import shift_images
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet, SpikingFFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.checkpoint import CheckpointError, save_model
from spikingjelly_ff.runs.config import ConfigError, RunConfig
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.distributed import Reducer, World
from spikingjelly_ff.runs.evaluate import evaluate_arrays, evaluate_sharded, scorer_for
from spikingjelly_ff.runs.resume import NAME as RESUME_NAME
from spikingjelly_ff.runs.resume import RunParts, generator_of, nothing_to_resume, save_state, state_to_resume
from spikingjelly_ff.runs.sharded import ShardedLoop, batch_scorer

__all__ = ["check_parallel", "make_samples", "resolve_device", "shift_images", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


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


@dataclass
class _Batcher:
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

    def __iter__(self):
        n = len(self.labels)
        if self.resume_at is not None:
            (self.order, start), self.resume_at = self.resume_at, None
        else:
            self.order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            start = 0
        order = self.order
        on_device = order.to(self.x.device)  # one copy per epoch, not one per batch
        for i in range(start * self.batch_size, n, self.batch_size):
            rows = on_device[i : i + self.batch_size]
            yield self.x[rows], self.labels[rows], order[i : i + self.batch_size]


class _Lookahead:
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


class _HardNegatives:
    """All-label scores for hard negatives, computed for ~``block`` images at a time: scoring
    one image per call (online training) would cost far more than learning from it."""

    def __init__(self, scores_fn, block: int = 200) -> None:
        self.scores_fn = scores_fn
        self.block = block
        self.pending: list[Tensor] = []

    def __call__(self, xb: Tensor, stream: _Lookahead) -> Tensor:
        if not self.pending:
            chunk = [xb, *(b for b, _ in stream.upcoming(self.block - len(xb)))]
            scores = self.scores_fn(torch.cat(chunk))
            self.pending = list(torch.split(scores, [len(c) for c in chunk]))
        return self.pending.pop(0)


class AnalogStep:
    """One training step of an analog network (local losses or Hebbian)."""

    def __init__(self, net: AnalogFFNet, cfg: RunConfig, steps_total: int, reducer: Reducer | None = None) -> None:
        t = cfg.train
        self.net = net
        self.cfg = cfg
        self.steps_total = max(1, steps_total)
        self.count = 0
        if t.learner == "local-loss":
            self.optimizer = make_optimizer(list(net.layers.parameters()), t.optimizer)
            self.learner = LocalLossLearner(net, self.optimizer, None if reducer is None else reducer.grads)
        else:
            from spikingjelly_ff.learning.analog_hebbian import AnalogHebbian

            self.optimizer = None
            self.learner = AnalogHebbian(net, t.hebbian, None if reducer is None else reducer.delta)

    def state_dict(self) -> dict:
        """What training goes on from besides the weights: the step count, the optimizer's
        state and the Hebbian eligibility traces."""
        return {
            "count": self.count,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "eligibility": [e.clone() for e in getattr(self.learner, "eligibility", [])],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.count = int(state["count"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        for e, saved in zip(getattr(self.learner, "eligibility", []), state["eligibility"], strict=True):
            e.copy_(saved)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        progress = self.count / self.steps_total
        self.count += 1
        if self.optimizer is not None:
            lr = optimizer_lr(self.cfg.train.optimizer, progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            acts = self.learner.step(x, y)
        else:
            acts = self.learner.step(x, y, schedule_factor(self.cfg.train.hebbian.schedule, progress))
        return self.net.judged(acts, y)


def optimizer_lr(o, progress: float) -> float:
    """The learning rate of the config's ``train.optimizer`` section at ``progress`` in [0, 1)."""
    return o.lr * schedule_factor(o.schedule, progress) * warmup_factor(o.warmup, progress)


def make_optimizer(params: list, o) -> torch.optim.Optimizer:
    """The torch optimizer of the config's ``train.optimizer`` section over ``params``."""
    if o.kind == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def check_parallel(cfg: RunConfig, world_size: int) -> None:
    """Refuse what ``world_size`` ranks cannot train as one process would."""
    t = cfg.train
    if world_size <= 1:
        return
    if t.batch_size == 1:
        raise ConfigError(
            "train.batch_size=1 is online learning: each sample learns from the weights the previous one "
            "left, a sequential chain that cannot be split across processes; train it in one process, or "
            "scale on-line learning out with the replicated server (docs/distributed.md)"
        )
    if t.batch_size < world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is smaller than the {world_size} processes; raise it")
    if t.draws != "per-sample":
        raise ConfigError(f"{world_size} processes need train.draws=per-sample (draws tied to the global sample index)")


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    progress: bool = True,
    world: World | None = None,
    resume: bool | None = False,
) -> dict:
    """Train per ``cfg``; save the model and metrics under ``out_dir``; return the metrics.

    ``world``: this process's rank among data-parallel ranks (default: one process).
    ``resume``: True continues the stopped run in ``out_dir`` from its last state (after an
    epoch, or within one with ``train.checkpoint_batches``; ``resume.pt``, see
    :mod:`~spikingjelly_ff.runs.resume`), False refuses to start over one, None continues one
    written with the same settings and otherwise starts afresh."""
    world = world or World()
    check_parallel(cfg, world.size)
    if not world.main:
        log, progress = (lambda s: None), False
    per_sample = cfg.train.draws == "per-sample"
    reducer = Reducer(world) if per_sample and cfg.train.batch_size > 1 else None
    out = Path(out_dir)
    if resume and not (out / RESUME_NAME).is_file():  # before the data is read or the folder made
        nothing_to_resume(out)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train_split = load_split(cfg.data.dataset, "train", cfg.data.root, cfg.data.download).take(cfg.train.limit)
    test_split = load_split(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).take(cfg.eval.limit)
    x_train, y_train = train_split.to_tensors(device)
    x_test, y_test = test_split.to_tensors(device)
    in_features = x_train.shape[1]
    num_classes = int(max(y_train.max(), y_test.max()).item()) + 1
    num_classes = max(num_classes, 10)

    from spikingjelly_ff.kernels import resolve_backend

    backend = resolve_backend(cfg.backend, device)
    if backend == "cupy":
        from spikingjelly_ff.kernels import cupy_present

        cupy_present.warm_up()  # compile before the clock of the first epoch starts
    net = build_model(cfg.model, in_features, num_classes, cfg.seed, backend, tuple(train_split.shape)).to(device)
    net.image_shape = tuple(train_split.shape)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    batches = _Batcher(x_train, y_train, cfg.train.batch_size, cfg.train.shuffle, gen)
    steps_total = cfg.train.epochs * len(batches)
    step, learner = _make_step(net, cfg, steps_total, device, reducer)
    scorer = scorer_for(net, cfg, device)
    scorer_scores = _scores_fn(net, cfg, device)
    # every random stream of the run, by name, for the resume state
    streams = {"order": gen, "samples": sample_gen, "scorer": generator_of(scorer), "hard": generator_of(scorer_scores)}
    streams = {k: g for k, g in streams.items() if g is not None}

    metrics = {"name": cfg.name, "config": cfg.to_dict(), "backend": backend, "device": str(device), "epochs": []}
    if world.size > 1:
        metrics["processes"] = world.size
    loop = ShardedLoop(net, cfg, world, reducer, num_classes, tuple(train_split.shape)) if per_sample else None
    parts = RunParts(net, learner, streams, loop, batches)
    first, position = 1, None
    run = {"device": device.type, "backend": backend}  # what device: auto and backend: auto resolved to
    state = state_to_resume(out, {**cfg.to_dict(), "run": run}, resume, log)
    _same_state_on_every_rank(world, state, len(batches))
    if state is not None:
        position = parts.restore(state, device)
        # the record so far; backend, device and processes are this part's
        here = {k: v for k, v in metrics.items() if k in ("backend", "device", "processes")}
        metrics = {k: v for k, v in state["metrics"].items() if k != "processes"} | here
        first = state["epoch"] + 1
        batch = 0 if position is None else position["batch"]
        metrics.setdefault("resumed_at", []).append({"epoch": first, "batch": batch})
        log(f"{out}: resuming epoch {first} of {cfg.train.epochs} at batch {batch + 1} of {len(batches)}")

    def save(done: int, position: dict | None = None) -> None:
        """Write the resume state after ``done`` epochs (and, within the next, at ``position``);
        every rank calls it (the carried membranes are gathered)."""
        state = parts.state(cfg.to_dict(), done, position, metrics)
        if world.main:
            save_state(out, {**state, "run": run})

    def checkpoint(epoch: int, t0: float, at: dict) -> None:
        if at["batch"] < len(batches):  # the epoch's end is saved with its record
            save(epoch - 1, {**at, "epoch": epoch, "seconds": time.perf_counter() - t0})

    def evaluate(readout: bool = False, fresh: bool = False) -> dict:
        if not per_sample:  # fresh: a scorer of its own, as `sjff eval` scores (same draws)
            predict = scorer_for(net, cfg, device, readout) if readout or fresh else scorer
            return evaluate_arrays(predict, x_test, y_test, cfg.eval.batch_size)
        return evaluate_sharded(batch_scorer(net, cfg, device, readout), x_test, y_test, cfg.eval.batch_size, world)

    log(
        f"{cfg.name}: {net.kind} {in_features}->{'->'.join(map(str, cfg.model.layers))}, "
        f"{len(x_train)} train / {len(x_test)} test samples, learner {cfg.train.learner}, backend {backend}"
    )
    for epoch in range(first, cfg.train.epochs + 1):
        at, position = position, None  # a position picks up the first resumed epoch only
        t0 = time.perf_counter() - (0.0 if at is None else at["seconds"])  # the seconds before the stop count
        tick = partial(checkpoint, epoch, t0) if cfg.train.checkpoint_batches else None
        desc, skip = f"epoch {epoch}/{cfg.train.epochs}", 0 if at is None else at["batch"]
        bar = tqdm(batches, desc=desc, disable=not progress, leave=False, initial=skip, total=len(batches))
        if loop is not None:
            correct, seen = loop.epoch(bar, step, epoch, at, tick)
        else:
            shape = train_split.shape
            correct, seen = _stream_epoch(bar, step, cfg, num_classes, shape, gen, sample_gen, scorer_scores, at, tick)
        train_seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "train_pn_accuracy": correct / max(seen, 1),
            "train_seconds": train_seconds,
            "train_samples_per_second": seen / train_seconds,
        }
        last = epoch == cfg.train.epochs
        if last or (cfg.train.eval_every and epoch % cfg.train.eval_every == 0):
            ev = evaluate()
            record.update(
                test_accuracy=ev["accuracy"], test_seconds=ev["seconds"], test_images_per_second=ev["images_per_second"]
            )
            if last and getattr(net, "shift_views", 0):
                views, net.shift_views = net.shift_views, 0
                record["test_accuracy_single_view"] = evaluate(fresh=True)["accuracy"]
                net.shift_views = views
        metrics["epochs"].append(record)
        if world.main:
            _write_json(out / "metrics.json", metrics)
        save(epoch)
        judged = "class" if net.competitive else "pos/neg"  # train_pn_accuracy: the net's own judgement
        msg = f"epoch {epoch}: {judged} acc {record['train_pn_accuracy']:.4f}, {train_seconds:.1f}s"
        if "test_accuracy" in record:
            msg += f", test acc {record['test_accuracy']:.4f}"
        log(msg)

    if cfg.train.readout.enabled:
        from spikingjelly_ff.runs.readout import train_readout

        ro = train_readout(net, cfg.train.readout, cfg.seed, x_train, y_train, device, log=log)
        ev = evaluate(readout=True)
        metrics["readout"] = {**ro, "test_accuracy": ev["accuracy"]}
        log(f"readout: test acc {ev['accuracy']:.4f}")

    final = metrics["epochs"][-1]
    metrics["final"] = {
        "test_accuracy": final.get("test_accuracy"),
        **(
            {"test_accuracy_single_view": final["test_accuracy_single_view"]}
            if "test_accuracy_single_view" in final
            else {}
        ),
        "readout_test_accuracy": metrics.get("readout", {}).get("test_accuracy"),
        "seconds_per_epoch": sum(e["train_seconds"] for e in metrics["epochs"]) / len(metrics["epochs"]),
    }
    if world.main:
        save_model(out / "model", net.cpu(), cfg, test_split.shape)
        _write_json(out / "metrics.json", metrics)
        for name in (RESUME_NAME, f".{RESUME_NAME}.tmp"):  # the run is complete: nothing to resume
            (out / name).unlink(missing_ok=True)
    return metrics


def _same_state_on_every_rank(world: World, state: dict | None, batches: int) -> None:
    """Refuse to go on where the ranks read different states (an output folder that is not
    shared between nodes): they would wait on each other's collectives until the timeout."""
    if world.size == 1:
        return
    where = 0.0 if state is None else 1.0 + state["epoch"] * (batches + 1) + ((state["position"] or {}).get("batch", 0))
    sums = world.all_sum(torch.tensor([where, where * where], dtype=torch.float64))
    if world.size * float(sums[1]) != float(sums[0]) ** 2:  # all equal iff the variance is 0
        raise CheckpointError(
            f"rank {world.rank}: the ranks read different resume states from {RESUME_NAME} (is the output folder "
            "shared by every node?)"
        )


def _write_json(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` in one step: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _scores_fn(net: FFNet, cfg: RunConfig, device: torch.device):
    """All-label scores ``[N, C]`` of the current model (for hard negatives)."""
    if isinstance(net, AnalogFFNet):
        return torch.no_grad()(net.scores)
    if isinstance(net, SpikingConvFFNet):
        from spikingjelly_ff.learning.conv_engine import SpikingConvScorer

        return SpikingConvScorer(net, seed=cfg.seed + 6, device=device, views=False).scores  # the image alone
    from spikingjelly_ff.learning.engine import SpikingScorer

    return SpikingScorer(net, seed=cfg.seed + 6, device=device, use_state=False).scores


def _make_step(net: FFNet, cfg: RunConfig, steps_total: int, device: torch.device, reducer: Reducer | None = None):
    """``(step, learner)``: ``step(x, shown, y, spikes=None)`` -> judged positive ``[N]``
    (``spikes`` overrides a spiking net's input draw); ``learner`` has the ``state_dict()`` and
    ``load_state_dict()`` a resumed run needs."""
    if isinstance(net, AnalogFFNet):
        analog = AnalogStep(net, cfg, steps_total, reducer)

        competitive = net.competitive

        def run(x: Tensor, shown: Tensor, y: Tensor, spikes: Tensor | None = None) -> Tensor:
            if competitive:  # plain images, class labels as targets; right when the class wins
                return analog(x, shown)
            return analog(net.embedding(x, shown), y)

        return run, analog
    if isinstance(net, SpikingConvFFNet):
        from spikingjelly_ff.learning.conv_engine import SpikingConvTrainer

        t = cfg.train
        optimizer, lr_at = None, None
        if t.hebbian_apply == "optimizer":  # -dW into .grad, then the optimizer steps
            optimizer = make_optimizer(list(net.layers.parameters()), t.optimizer)
            lr_at = partial(optimizer_lr, t.optimizer)
        conv = SpikingConvTrainer(net, t.hebbian, steps_total, cfg.seed + 3, device, optimizer, lr_at)
        return conv.train_batch, conv
    assert isinstance(net, SpikingFFNet)
    from spikingjelly_ff.learning.engine import SpikingTrainer

    trainer = SpikingTrainer(
        net,
        cfg.train.hebbian,
        steps_total,
        seed=cfg.seed + 3,
        device=device,
        sequential=cfg.train.batch_size == 1,
        reduce=None if reducer is None else reducer.delta,
    )
    return trainer.train_batch, trainer


def _stream_epoch(
    bar, step, cfg: RunConfig, num_classes: int, shape, gen, sample_gen, scores, at=None, checkpoint=None
) -> tuple[int, int]:
    """One epoch with the run's random streams (``train.draws: stream``); returns (correctly
    judged, judged) rows. Every ``train.checkpoint_batches`` batches ``checkpoint(position)``
    is called with what picks the epoch up there (``at`` of a resumed run): the next batch, the
    counts, and the batches (images shifted) and hard-negative scores already drawn ahead."""
    correct, seen, first = 0, 0, 0
    stream = _Lookahead((shift_images(xb, shape, cfg.train.augment_shift, gen), lb) for xb, lb, _ in bar)
    hard = _HardNegatives(scores) if cfg.train.negatives == "hard" else None
    if at is not None:
        correct, seen, first = at["correct"], at["seen"], at["batch"]
        stream.buffer = list(at["buffer"])
        if hard is not None:
            hard.pending = list(at["pending"])
    every = cfg.train.checkpoint_batches
    for i, (xb, lb) in enumerate(stream, first):
        scores = None if hard is None else hard(xb, stream)
        mode = "paired" if cfg.train.negatives == "hard" else cfg.train.negatives
        rows, shown, y = make_samples(lb, mode, num_classes, sample_gen, scores)
        pred = step(xb if mode == "mixed" else xb[rows], shown, y)  # mixed: every row once, in order
        # counted on the device: reading it every batch would make the host wait for the GPU
        correct = correct + (pred.float() == y).sum()
        seen += len(y)
        if not bar.disable and i % 20 == 0:
            bar.set_postfix(pn_acc=f"{int(correct) / seen:.3f}")
        if checkpoint is not None and every and (i + 1) % every == 0:
            pending = [] if hard is None else list(hard.pending)
            checkpoint({"batch": i + 1, "source": i + 1 + len(stream.buffer), "correct": int(correct), "seen": seen,
                        "buffer": list(stream.buffer), "pending": pending})  # fmt: skip
    return int(correct), seen
