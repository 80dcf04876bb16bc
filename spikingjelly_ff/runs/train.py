"""Training runs: data, model, learner, per-epoch evaluation, checkpoint and metrics.

``train(cfg, out_dir)`` writes ``out_dir/model/`` (weights + config) and
``out_dir/metrics.json`` (per-epoch train/test accuracy and seconds), the latter after every
epoch too, so that a long run can be followed and an interrupted one keeps its record (it has
a ``final`` section once the run has ended); ``out_dir/resume.pt``, written after every epoch
(and every ``train.checkpoint_batches`` batches), lets a stopped run go on from there
(:mod:`~spikingjelly_ff.runs.resume`). The sample stream is :mod:`~spikingjelly_ff.runs.samples`,
each kind of network's step :mod:`~spikingjelly_ff.runs.steps`. Given a
:class:`~spikingjelly_ff.runs.distributed.World` of several ranks, every global batch is split
across them (``train.draws: per-sample``; docs/distributed.md) and rank 0 writes the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from spikingjelly_ff.runs.build import build_model, resolve_device
from spikingjelly_ff.runs.checkpoint import CheckpointError, save_model
from spikingjelly_ff.runs.config import ConfigError, RunConfig, check_image
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.distributed import Reducer, World
from spikingjelly_ff.runs.evaluate import evaluate_arrays, evaluate_sharded, scorer_for
from spikingjelly_ff.runs.graphed import GraphedEpochs, graph_blocker
from spikingjelly_ff.runs.outputs import check_run_dir, clear_run, hold_run_dir
from spikingjelly_ff.runs.resume import NAME as RESUME_NAME
from spikingjelly_ff.runs.resume import TMP_NAME as RESUME_TMP
from spikingjelly_ff.runs.resume import RunParts, generator_of, nothing_to_resume, save_state, state_to_resume
from spikingjelly_ff.runs.samples import Batcher, stream_epoch
from spikingjelly_ff.runs.sharded import ShardedLoop, batch_scorer
from spikingjelly_ff.runs.steps import make_step, scores_fn

__all__ = ["check_parallel", "resolve_device", "train"]


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
    overwrite: bool = False,
) -> dict:
    """Train per ``cfg``; save the model and metrics under ``out_dir``; return the metrics.

    ``world``: this process's rank among data-parallel ranks (default: one process).
    ``resume``: True continues the stopped run in ``out_dir`` from its last state (after an
    epoch, or within one with ``train.checkpoint_batches``; ``resume.pt``, see
    :mod:`~spikingjelly_ff.runs.resume`), False refuses to start over one or over a finished
    run (``overwrite``: replaces either), None continues one written with the same settings
    and otherwise starts afresh. One process at a time writes ``out_dir`` (its lock)."""
    world = world or World()
    check_parallel(cfg, world.size)
    if resume and overwrite:
        raise ConfigError("--resume continues the run that --overwrite would replace: pass one of them")
    out = check_run_dir(out_dir)
    if resume and not (out / RESUME_NAME).is_file():  # before the data is read or the folder made
        nothing_to_resume(out)
    if not world.main:
        return _train(cfg, out, (lambda s: None), False, world, resume, overwrite)
    with hold_run_dir(out, refuse_finished=resume is False and not overwrite):
        return _train(cfg, out, log, progress, world, resume, overwrite)


def _train(
    cfg: RunConfig,
    out: Path,
    log: Callable[[str], None],
    progress: bool,
    world: World,
    resume: bool | None,
    fresh: bool,
) -> dict:
    """:func:`train`'s run, in a folder that this process holds (or, on another rank, the main
    one); ``fresh``: start afresh whatever the folder holds (the main rank removes it before
    the first write)."""
    per_sample = cfg.train.draws == "per-sample"
    reducer = Reducer(world) if per_sample and cfg.train.batch_size > 1 else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train_split = load_split(cfg.data.dataset, "train", cfg.data.root, cfg.data.download).take(cfg.train.limit)
    test_split = load_split(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).take(cfg.eval.limit)
    check_image(cfg, tuple(train_split.shape))  # a dataset folder's image size is known only now
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
    if cfg.train.readout.enabled:
        from spikingjelly_ff.runs.readout import check_readout

        check_readout(net, cfg.train.readout)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    batches = Batcher(x_train, y_train, cfg.train.batch_size, cfg.train.shuffle, gen)
    steps_total = cfg.train.epochs * len(batches)
    step, learner = make_step(net, cfg, steps_total, device, reducer)
    scorer = scorer_for(net, cfg, device)
    scorer_scores = scores_fn(net, cfg, device)
    # every random stream of the run, by name, for the resume state
    streams = {"order": gen, "samples": sample_gen, "scorer": generator_of(scorer), "hard": generator_of(scorer_scores)}
    streams = {k: g for k, g in streams.items() if g is not None}

    metrics = {"name": cfg.name, "config": cfg.to_dict(), "backend": backend, "device": str(device), "epochs": []}
    if world.size > 1:
        metrics["processes"] = world.size
    loop = ShardedLoop(net, cfg, world, reducer, num_classes, tuple(train_split.shape)) if per_sample else None
    blocker = graph_blocker(cfg, learner, device)  # None: each batch one CUDA graph replay (runs/graphed.py)
    graphed = GraphedEpochs(batches, learner, cfg, num_classes, sample_gen) if blocker is None else None
    if device.type == "cuda" or graphed is not None:
        metrics["cuda_graph"] = "replays" if blocker is None else f"off: {blocker}"
    parts = RunParts(net, learner, streams, loop, batches)
    ahead = getattr(learner, "prefetch", None)  # input drawn a batch ahead (learning/ahead.py)
    rows = getattr(learner, "train_rows", None)  # runs of one-row batches in one call
    first, position = 1, None
    run = {"device": device.type, "backend": backend}  # what device: auto and backend: auto resolved to
    if fresh and world.main:  # --overwrite: the new run is checked and built; the old one goes now
        clear_run(out)
    state = None if fresh else state_to_resume(out, {**cfg.to_dict(), "run": run}, resume, log)
    _same_state_on_every_rank(world, state, len(batches))
    if state is not None:
        position = parts.restore(state, device)
        # the record so far; backend, device, processes and cuda_graph are this part's
        here = {k: v for k, v in metrics.items() if k in ("backend", "device", "processes", "cuda_graph")}
        metrics = {k: v for k, v in state["metrics"].items() if k not in ("processes", "cuda_graph")} | here
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
        elif graphed is not None:
            correct, seen = graphed.epoch(bar, at, tick, cfg.train.checkpoint_batches)
            if graphed.failed:
                metrics["cuda_graph"] = f"off: the capture failed ({graphed.failed})"
        else:
            shape = train_split.shape
            correct, seen = stream_epoch(
                bar, step, cfg, num_classes, shape, gen, sample_gen, scorer_scores, at, tick, ahead, rows
            )
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
        for name in (RESUME_NAME, RESUME_TMP):  # the run is complete: nothing to resume
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
