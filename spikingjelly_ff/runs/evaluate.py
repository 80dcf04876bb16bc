"""Test accuracy of a trained network: ``evaluate_arrays`` and ``evaluate_model``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from spikingjelly_ff.functional.views import check_views
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.distributed import World

__all__ = ["evaluate_arrays", "evaluate_model", "evaluate_sharded", "scorer_for", "set_views"]

Predictor = Callable[[Tensor], Tensor]


def scorer_for(net: FFNet, cfg: RunConfig, device: torch.device | str, readout: bool = False) -> Predictor:
    """A function images ``[N, D]`` -> predicted classes ``[N]`` (all labels scored)."""
    if isinstance(net, AnalogFFNet):

        @torch.no_grad()
        def predict(x: Tensor) -> Tensor:
            return net.predict(x, use_readout=readout)

        return predict
    from spikingjelly_ff.learning.engine import SpikingScorer

    if isinstance(net, SpikingConvFFNet):
        from spikingjelly_ff.learning.conv_engine import SpikingConvScorer

        scorer = SpikingConvScorer(net, seed=cfg.seed + 4, device=device, repeats=cfg.eval.repeats, readout=readout)
        return scorer.predict
    if readout:
        raise ValueError("a linear readout exists for analog models and competitive spiking conv models only")
    return SpikingScorer(
        net, share_image_spikes=cfg.eval.share_image_spikes, seed=cfg.seed + 4, device=device, repeats=cfg.eval.repeats
    ).predict


def evaluate_arrays(predict: Predictor, x: Tensor, labels: Tensor, batch_size: int = 1000) -> dict:
    """Accuracy of ``predict`` on ``x`` ``[N, D]`` / ``labels`` ``[N]``, with timing."""
    t0 = time.perf_counter()
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += int((predict(x[i : i + batch_size]) == labels[i : i + batch_size]).sum())
    seconds = time.perf_counter() - t0
    n = len(labels)
    return {
        "accuracy": correct / max(n, 1),
        "n": n,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds else None,
    }


def evaluate_sharded(
    predictor: Callable[[int], Predictor], x: Tensor, labels: Tensor, batch_size: int, world: World | None = None
) -> dict:
    """:func:`evaluate_arrays` with the test batches split across ranks: rank r scores a
    contiguous run of batches, batch j with ``predictor(j)``, and the predictions ``[N]`` are
    gathered on every rank (an all-reduce of disjoint slices). As long as ``predictor(j)``
    depends on j alone, the predictions are those of one process whatever the ranks."""
    world = world or World()
    t0 = time.perf_counter()
    n = len(labels)
    lo, hi = world.shard(-(-n // batch_size))
    predictions = torch.zeros(n, dtype=torch.int64)
    for j in range(lo, hi):
        rows = slice(j * batch_size, (j + 1) * batch_size)
        predictions[rows] = predictor(j)(x[rows]).cpu()
    world.all_sum(predictions)
    seconds = time.perf_counter() - t0
    return {
        "accuracy": int((predictions == labels.cpu()).sum()) / max(n, 1),
        "n": n,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds else None,
        "predictions": predictions,
    }


def set_views(net: FFNet, shift_views: int) -> None:
    """Score ``net`` over ``4 * shift_views + 1`` shifted views from now on (0: the image
    alone); ValueError for a net without views or a shift that leaves nothing of the image."""
    if not hasattr(net, "shift_views"):
        raise ValueError("shifted test views exist for analog models and spiking conv models only")
    if shift_views < 0:
        raise ValueError("the number of shifted views must be >= 0")
    if net.image_shape is not None:
        check_views(shift_views, tuple(net.image_shape))
    net.shift_views = shift_views


def evaluate_model(
    model_dir: str | Path,
    dataset: str | None = None,
    limit: int | None = None,
    split: str = "test",
    device: str = "cpu",
    batch_size: int | None = None,
    root: str | None = None,
    shift_views: int | None = None,
) -> dict:
    """Load a model directory and measure its accuracy on ``dataset`` (default: its own);
    ``shift_views`` overrides the test-time views of an analog or spiking conv model (0: the image
    alone)."""
    from spikingjelly_ff.kernels import resolve_backend
    from spikingjelly_ff.runs.build import resolve_device
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.data import load_split

    device = resolve_device(device)
    net, cfg, meta = load_model(model_dir, device=device, backend=resolve_backend(cfg_backend(model_dir), device))
    if shift_views is not None:
        set_views(net, shift_views)
    ds = dataset or cfg.data.dataset
    data = load_split(ds, split, root or cfg.data.root, download=cfg.data.download).take(limit)
    if data.images.shape[1] != meta["in_features"]:
        raise ValueError(f"{ds} images have {data.images.shape[1]} pixels; the model expects {meta['in_features']}")
    x, y = data.to_tensors(device)
    out = evaluate_arrays(
        scorer_for(net, cfg, device, readout=net.readout is not None), x, y, batch_size or cfg.eval.batch_size
    )
    out["dataset"] = ds
    return out


def cfg_backend(model_dir: str | Path) -> str:
    from spikingjelly_ff.runs.checkpoint import read_meta

    return read_meta(model_dir)["run"].get("backend", "auto")
