"""Data-parallel training epochs and evaluation with per-sample draws (``train.draws:
per-sample``): each global batch is split across the ranks of a :class:`World`, and what a
sample draws depends on its global index only (``draws.py``), not on its rank.
"""

from __future__ import annotations

import torch

from spikingjelly_ff.nn.models import AnalogFFNet, FFNet, SpikingFFNet
from spikingjelly_ff.runs import draws
from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.distributed import Reducer, World
from spikingjelly_ff.runs.evaluate import scorer_for

__all__ = ["ShardedLoop", "batch_scorer"]


class ShardedLoop:
    """Training epochs with per-sample draws, each global batch split across the ranks."""

    def __init__(
        self, net: FFNet, cfg: RunConfig, world: World, reducer: Reducer | None, num_classes: int, shape
    ) -> None:
        self.net, self.cfg, self.world, self.reducer = net, cfg, world, reducer
        self.num_classes = num_classes
        self.shape = shape
        self.last_batch = 0

    def global_state(self, state: dict) -> dict:
        """A learner's state with this rank's carried membranes and traces gathered into the
        whole batch's, the same on every rank: what one process would hold, so that a resumed
        run may use any number of ranks. A rank's rows are its shard ``[lo, hi)`` of the last
        batch, twice with paired negatives (positives, then negatives), as one process's are of
        the whole batch. Collective: every rank calls it."""
        if "neurons" not in state or self.world.size == 1:
            return state
        blocks, n = self._blocks(), self.last_batch
        lo, hi = self.world.shard(n)

        def whole(x):
            if not isinstance(x, torch.Tensor):  # a float: nothing presented yet (on every rank)
                return x
            if x.shape[0] != blocks * (hi - lo):
                rank = self.world.rank
                raise RuntimeError(f"rank {rank}: a carried state of {x.shape[0]} rows for a shard of {hi - lo}")
            full = x.new_zeros(blocks, n, *x.shape[1:])
            full[:, lo:hi] = x.reshape(blocks, hi - lo, *x.shape[1:])
            return self.world.all_sum(full).reshape(blocks * n, *x.shape[1:])  # disjoint rows: a concatenation

        return {**state, "neurons": [tuple(whole(x) for x in pair) for pair in state["neurons"]]}

    def local_state(self, state: dict) -> dict:
        """The inverse of :meth:`global_state` for this rank (after ``last_batch`` is restored)."""
        if "neurons" not in state or self.world.size == 1:
            return state
        blocks, n = self._blocks(), self.last_batch
        lo, hi = self.world.shard(n)

        def mine(x):
            if not isinstance(x, torch.Tensor):
                return x
            return x.reshape(blocks, n, *x.shape[1:])[:, lo:hi].reshape(blocks * (hi - lo), *x.shape[1:]).clone()

        return {**state, "neurons": [tuple(mine(x) for x in pair) for pair in state["neurons"]]}

    def _blocks(self) -> int:
        return 2 if self.cfg.train.negatives == "paired" else 1

    def epoch(self, batches, step, epoch: int, at: dict | None = None, checkpoint=None) -> tuple[int, int]:
        """One epoch; returns (correctly judged, judged) rows over all ranks. Every
        ``train.checkpoint_batches`` batches ``checkpoint(position)`` is called on every rank
        with what picks the epoch up there (``at`` of a resumed run): the next batch and the
        counts so far, summed over the ranks."""
        cfg, net = self.cfg, self.net
        paired = cfg.train.negatives == "paired"
        spiking = isinstance(net, SpikingFFNet)
        counts = torch.zeros(2, dtype=torch.int64)
        if at is not None and self.world.main:  # the counts before the stop, once
            counts += torch.tensor(at["counts"])
        first = 0 if at is None else at["batch"]
        every = cfg.train.checkpoint_batches
        for b, (xb, lb, ib) in enumerate(batches, first):
            n = len(lb)
            lo, hi = self.world.shard(n)
            xb, lb, ib = xb[lo:hi], lb[lo:hi], ib[lo:hi]
            xb = draws.shift_images(xb, self.shape, cfg.train.augment_shift, ib, cfg.seed, epoch)
            rows, shown, y, keys = draws.make_samples(lb, ib, cfg.train.negatives, self.num_classes, cfg.seed, epoch)
            if self.reducer is not None:
                self.reducer.rows = 2 * n if paired else n
            spikes = None
            if spiking:
                if n != self.last_batch:  # one process resets carried membranes when the batch shape changes
                    for layer in net.layers:
                        layer.neuron.v = 0.0
                if net.encoder.coding == "bernoulli":
                    with torch.no_grad():
                        spikes = draws.row_spikes(net.rates(xb[rows], shown), net.encoder.steps, keys, cfg.seed, epoch)
            self.last_batch = n
            pred = step(xb[rows], shown, y, spikes)
            counts += torch.tensor([int((pred.float() == y).sum()), len(y)])
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(pn_acc=f"{int(counts[0]) / max(int(counts[1]), 1):.3f}")
            if checkpoint is not None and every and (b + 1) % every == 0:
                total = self.world.all_sum(counts.clone())
                checkpoint({"batch": b + 1, "source": b + 1, "counts": total.tolist()})
        self.world.all_sum(counts)
        return int(counts[0]), int(counts[1])


def batch_scorer(net: FFNet, cfg: RunConfig, device: torch.device, readout: bool):
    """Predictor of eval batch j for sharded evaluation: a spiking net scores each batch from
    rest with draws keyed by j, so any rank can score any batch; analog scoring draws nothing."""
    if isinstance(net, AnalogFFNet):
        fixed = scorer_for(net, cfg, device, readout)
        return lambda j: fixed
    from spikingjelly_ff.learning.engine import SpikingScorer

    def scorer(j: int):
        seed = draws.key(cfg.seed, "eval", 0, j)
        return SpikingScorer(
            net, cfg.eval.share_image_spikes, seed=seed, device=device, use_state=False, repeats=cfg.eval.repeats
        ).predict

    return scorer
