"""One training step per kind of network, as ``sjff train`` builds it from the config: the
analog step (local losses or Hebbian), the spiking trainers, the optimizer and its learning
rate, and the all-label scores that hard negatives are drawn from."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from spikingjelly_ff.functional.schedule import schedule_factor, warmup_factor
from spikingjelly_ff.learning.learners import LocalLossLearner
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet, SpikingFFNet
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.runs.config import RunConfig
from spikingjelly_ff.runs.distributed import Reducer

__all__ = ["AnalogStep", "make_optimizer", "make_step", "optimizer_lr", "scores_fn"]


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


def scores_fn(net: FFNet, cfg: RunConfig, device: torch.device):
    """All-label scores ``[N, C]`` of the current model (for hard negatives)."""
    if isinstance(net, AnalogFFNet):
        return torch.no_grad()(net.scores)
    if isinstance(net, SpikingConvFFNet):
        from spikingjelly_ff.learning.conv_engine import SpikingConvScorer

        return SpikingConvScorer(net, seed=cfg.seed + 6, device=device, views=False).scores  # the image alone
    from spikingjelly_ff.learning.engine import SpikingScorer

    return SpikingScorer(net, seed=cfg.seed + 6, device=device, use_state=False).scores


def make_step(net: FFNet, cfg: RunConfig, steps_total: int, device: torch.device, reducer: Reducer | None = None):
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
