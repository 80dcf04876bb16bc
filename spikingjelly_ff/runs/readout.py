"""Linear softmax readout on the latent activity of a trained FF network (``train.readout``).

The FF layers stay frozen. The readout reads the activity of the image alone: an analog net's
under a *neutral* label (the mean of all label codes, as in Hinton's FF paper), a competitive
spiking conv net's trace maps averaged on a grid (it sees no label). One pass classifies an
image. No autograd: the gradient is the closed form of ``functional.readout`` (the delta rule),
written into ``.grad`` for Adam. The latents are standardised per feature while it trains (so
one learning rate suits features of any scale) and the standardisation is folded into the
weights at the end, so the model keeps one plain linear map.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from spikingjelly_ff.functional.readout import fold_standardization, readout_grad, readout_grid, readout_logits
from spikingjelly_ff.functional.schedule import schedule_factor
from spikingjelly_ff.nn.models import FFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.checkpoint import CheckpointError, load_model, save_model
from spikingjelly_ff.runs.config import ConfigError, ReadoutConfig, apply_overrides, config_from_dict
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.evaluate import evaluate_arrays, scorer_for
from spikingjelly_ff.runs.outputs import check_run_dir, clear_run, hold_run_dir, stopped_run

__all__ = ["check_readout", "fit_readout", "readout_latents", "train_readout"]

BATCH = 100  # images per readout step


def _layers(net: FFNet, rc: ReadoutConfig) -> list[int]:
    """The readout's layers: ``rc.layers``, by default all but the first (the first alone for
    a one-layer net)."""
    return rc.layers if rc.layers is not None else (list(range(1, len(net.widths))) or [0])


def check_readout(net: FFNet, rc: ReadoutConfig) -> None:
    """ConfigError where ``rc`` does not fit the built ``net`` (a conv net's grid must tile the
    chosen maps): called before training, so that a bad grid costs no epochs."""
    if isinstance(net, SpikingConvFFNet):
        try:
            readout_grid(net.map_shapes(), _layers(net, rc), rc.grid)
        except ValueError as exc:
            raise ConfigError(f"train.readout: {exc}") from exc


def readout_latents(net: FFNet, x: Tensor, seed: int) -> Tensor:
    """The readout's input for images ``x`` ``[N, D]``, ``[N, F]`` (spike draws from ``seed``)."""
    with torch.no_grad():
        if isinstance(net, SpikingConvFFNet):
            from spikingjelly_ff.learning.conv_engine import SpikingConvScorer

            return SpikingConvScorer(net, seed=seed, device=x.device).latent(x, net.readout_layers, net.readout_grid)
        return torch.cat(
            [net.latent(net.activities(net.embedding.neutral(x[i : i + 2000])), net.readout_layers)
             for i in range(0, len(x), 2000)]
        )  # fmt: skip


def train_readout(
    net: FFNet,
    rc: ReadoutConfig,
    seed: int,
    x: Tensor,
    labels: Tensor,
    device,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit a fresh ``net.readout`` on images ``x`` ``[N, D]`` with ``labels`` ``[N]`` (batches
    shuffled from ``seed``; Adam at ``rc.lr`` on ``rc.schedule``, L2 ``rc.weight_decay`` on the
    weights); returns the layers, the grid (conv nets), training accuracy per epoch and the
    seconds it took (the latents' presentations included)."""
    if len(x) < 2:  # the latents are standardised by their spread over the images
        raise ValueError(f"a readout learns from at least 2 images, got {len(x)}")
    t0 = time.perf_counter()
    layers = _layers(net, rc)
    head = net.attach_readout(layers, rc.grid).to(device)
    feats = readout_latents(net, x, seed + 6)
    mean, std = feats.mean(0), feats.std(0) + 1e-3  # a silent feature stays 0 after it
    feats.sub_(mean).div_(std)
    weight, bias = head.weight, head.bias
    with torch.no_grad():
        weight.zero_()
        bias.zero_()
    opt = torch.optim.Adam(
        [{"params": [weight], "weight_decay": rc.weight_decay}, {"params": [bias], "weight_decay": 0.0}], lr=rc.lr
    )
    gen = torch.Generator().manual_seed(seed + 5)
    steps = rc.epochs * -(-len(feats) // BATCH)
    step, history = 0, []
    for epoch in range(rc.epochs):
        order = torch.randperm(len(feats), generator=gen).to(device)
        correct = 0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            h = feats[idx]
            with torch.no_grad():
                logits = readout_logits(h, weight, bias)
                weight.grad, bias.grad = readout_grad(h, logits, labels[idx])
            for group in opt.param_groups:
                group["lr"] = rc.lr * schedule_factor(rc.schedule, step / steps)
            opt.step()
            step += 1
            correct += int((logits.argmax(-1) == labels[idx]).sum())
        history.append(correct / len(feats))
        log(f"readout epoch {epoch + 1}: train acc {history[-1]:.4f}")
    with torch.no_grad():
        w, b = fold_standardization(weight, bias, mean, std)
        weight.copy_(w)
        bias.copy_(b)
    out = {"layers": layers, "train_accuracy": history, "seconds": time.perf_counter() - t0}
    if isinstance(net, SpikingConvFFNet):
        out["grid"] = net.readout_grid
    return out


def fit_readout(
    model_dir, out, sets: list[str] | None = None, log: Callable[[str], None] = print, overwrite: bool = False
) -> dict:
    """``sjff readout``: fit a readout to the trained model in ``model_dir`` with its config's
    ``train.readout`` (``sets``: overrides of ``train.readout.*`` keys only; enabled is
    implied), test it as training does, and write the model with its readout and ``metrics.json``
    to ``out``. The same as training with that readout: the FF layers are the model's, and the
    readout sees the same images, seeds and test draws. ``out`` may not hold a run (unless
    ``overwrite``), nor be the folder of ``model_dir``."""
    out = check_run_dir(out)
    src = Path(model_dir).resolve()
    if out.resolve() in (src, src.parent) or src in out.resolve().parents:
        raise ConfigError(f"--out {out} holds the model the readout is fitted to: write it to another folder")
    if stopped_run(out) and not overwrite:
        raise CheckpointError(f"{out} holds a stopped training run: choose another --out, or pass --overwrite")
    sets = list(sets or [])
    other = [s for s in sets if not s.split("=", 1)[0].strip().startswith("train.readout.")]
    if other:  # anything else would describe another model than the weights
        raise ConfigError(f"sjff readout sets train.readout.* keys only, got {', '.join(other)}")
    net, cfg, _ = load_model(model_dir)
    cfg = config_from_dict(apply_overrides(cfg.to_dict(), [*sets, "train.readout.enabled=true"]))
    check_readout(net, cfg.train.readout)
    with hold_run_dir(out, refuse_finished=not overwrite):
        return _fit(net, cfg, model_dir, out, log, overwrite)


def _fit(net, cfg, model_dir, out: Path, log: Callable[[str], None], overwrite: bool) -> dict:
    """:func:`fit_readout`'s work, in the folder ``out`` it holds (``overwrite``: the run there
    is removed once the readout is fitted and tested)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = cfg.data
    train_split = load_split(data.dataset, "train", data.root, data.download).take(cfg.train.limit)
    test_split = load_split(data.dataset, "test", data.root, data.download).take(cfg.eval.limit)
    x, y = train_split.to_tensors("cpu")
    ro = train_readout(net, cfg.train.readout, cfg.seed, x, y, "cpu", log=log)
    x_test, y_test = test_split.to_tensors("cpu")
    ev = evaluate_arrays(scorer_for(net, cfg, "cpu", readout=True), x_test, y_test, cfg.eval.batch_size)
    log(f"readout: test acc {ev['accuracy']:.4f}")
    if overwrite:
        clear_run(out)
    save_model(out / "model", net, cfg, test_split.shape)
    metrics = {"model": str(model_dir), "config": cfg.to_dict(), "readout": {**ro, "test_accuracy": ev["accuracy"]}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
