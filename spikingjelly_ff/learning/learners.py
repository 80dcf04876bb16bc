"""Learners: how FF layers change their weights.

* :class:`LocalLossLearner` trains every layer of an analog network from its own FF loss
  with any torch optimizer (autograd, but no gradient crosses layers).
* :class:`HebbianLearner` is the modulated Hebbian rule, modelled on SpikingJelly's
  ``STDPLearner``: it hooks a synapse (pre-synaptic input) and a neuron (post-synaptic
  output), keeps the post-synaptic trace itself, and computes dW = eta * M * l x^T with no
  autograd. ``step()`` writes -dW into ``weight.grad`` for a torch optimizer (or returns it);
  ``apply()`` updates the weight in place through the paper's eligibility trace
  e <- (1 - tau) e + tau dW, W <- W + eta e.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from spikingjelly.activation_based import base, monitor
from torch import Tensor, nn

from spikingjelly_ff.functional.conv import conv_output_size, ff_conv_hebbian_deltas
from spikingjelly_ff.functional.dynamics import TraceParams, trace_step
from spikingjelly_ff.functional.hebbian import ff_hebbian_delta
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels import apply_delta
from spikingjelly_ff.nn.conv_models import AnalogConvFFNet
from spikingjelly_ff.nn.models import AnalogFFNet

__all__ = ["HebbianLearner", "LocalLossLearner"]


class LocalLossLearner:
    """Layer-local FF training of an :class:`AnalogFFNet` (or conv net) with one torch optimizer.

    Each layer sees its input detached, so its parameters get only the gradient of its own
    loss BCE(P(G(l)), y). With ``reduce`` (data parallel: each batch is one rank's shard),
    ``reduce(grads, n)`` turns the gradients (means over this rank's ``n`` rows) into the means
    over every rank's rows, in place, before the optimizer steps.
    """

    def __init__(
        self,
        net: AnalogFFNet,
        optimizer: torch.optim.Optimizer,
        reduce: Callable[[list[Tensor], int], None] | None = None,
    ) -> None:
        self.net = net
        self.optimizer = optimizer
        self.reduce = reduce

    def step(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """One update on embedded inputs ``[N, D']`` with targets ``y`` ``[N]`` (1 = positive).

        Returns every layer's activity before the update (detached), ``[N, H_l]`` each (maps
        ``[N, C_l, OH_l, OW_l]`` for a conv net)."""
        if isinstance(self.net, AnalogConvFFNet):
            losses, acts = _conv_losses(self.net, x, y)
        else:
            losses, acts = [], []
            inp = x
            for layer in self.net.layers:
                out = layer(inp.detach())
                losses.append(self.net.probability.loss(self.net.layer_goodness(out), y))
                acts.append(out.detach())
                inp = out
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        if self.reduce is not None:
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]]
            self.reduce([g for g in grads if g is not None], x.shape[0])
        self.optimizer.step()
        return acts


def _conv_losses(net: AnalogConvFFNet, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Every conv layer's FF loss over its goodness region and its activity map (detached);
    a layer reads the previous one's pooled output detached, as the dense loop does."""
    acts = net.activities(x, detach=True)
    return [net.layer_loss(a, y) for a in acts], [a.detach() for a in acts]


class HebbianLearner(base.MemoryModule):
    """Modulated Hebbian learner for one synapse (``nn.Linear``, or ``nn.Conv2d`` with the
    Hebbian conv rule of ``functional.conv``) and its neuron.

    :param step_mode: ``'s'`` or ``'m'``, as the monitored modules run
    :param synapse: the ``Linear`` whose weight learns; its input is the pre-synaptic activity
    :param sn: the module whose output is the post-synaptic activity (spikes, or an analog
        activation when ``trace`` is ``None``)
    :param probability: probability function of the layer's FF loss
    :param goodness: a quadratic goodness (``sum_squares`` or ``mean_squares``)
    :param trace: post-synaptic trace turning spikes into activity l; ``None`` uses the output
    :param eta: learning rate on the exact FF gradient
    :param eligibility_tau: eligibility filter of ``apply()``; ``None`` applies each dW at once
    :param learn_after: only steps t > learn_after (counted from ``reset()``) learn

    The defaults differ from :class:`~spikingjelly_ff.functional.params.HebbianParams`
    (``eligibility_tau=0.1``, ``learn_after=15``) on purpose: like SpikingJelly's
    ``STDPLearner``, this step learner's plain form applies each step's dW directly over the
    whole presentation, and the trainer's window and filter are opt-in.
    """

    def __init__(
        self,
        step_mode: str,
        synapse: nn.Linear,
        sn: nn.Module,
        probability: Probability,
        goodness: str = "sum_squares",
        trace: TraceParams | None = None,
        eta: float = 0.1,
        eligibility_tau: float | None = None,
        learn_after: int = -1,
        backend: str = "torch",
        over: str = "map",
        label_layer: nn.Module | None = None,
    ) -> None:
        """Conv synapses: ``over``, goodness over each sample's whole map, per location or per
        channel group ("map", "location", "group:K");
        ``label_layer``, the module (a :class:`SpikingFFConv2d`) whose ``label_bias`` B
        ``[L, C, OH, OW]`` adds ``code @ B`` to the current, called as ``label_layer(x,
        code)``: B learns too (``step`` writes its ``.grad``, ``apply`` its own eligibility)."""
        super().__init__()
        if step_mode not in ("s", "m"):
            raise ValueError(f"unsupported step_mode {step_mode!r}")
        if not isinstance(synapse, (nn.Linear, nn.Conv2d)):
            raise NotImplementedError("HebbianLearner supports Linear and Conv2d synapses")
        if isinstance(synapse, nn.Conv2d) and (synapse.dilation != (1, 1) or synapse.groups != 1):
            raise NotImplementedError("the Hebbian conv rule supports dilation 1 and groups 1")
        if synapse.bias is not None:
            raise ValueError("the Hebbian FF rule has no bias term; build the synapse with bias=False")
        self.step_mode = step_mode
        self.synapse = synapse
        self.probability = probability
        self.goodness = goodness
        self.trace_params = trace
        self.eta = eta
        self.eligibility_tau = eligibility_tau
        self.learn_after = learn_after
        self.backend = backend
        self.over = over
        self.in_spike_monitor = monitor.InputMonitor(synapse, function_on_input=torch.Tensor.detach)
        self.out_spike_monitor = monitor.OutputMonitor(sn, function_on_output=torch.Tensor.detach)
        self.register_memory("trace_post", None)
        self.register_memory("t", 0)
        # The eligibility trace outlives samples (it is the paper's running update), so it is a
        # buffer, not a memory: reset() leaves it alone.
        self.register_buffer("eligibility", torch.zeros_like(synapse.weight))
        self.label_layer = label_layer
        self._label_weight: nn.Parameter | None = None
        self._code_records: list[Tensor] = []
        self._code_hook = None
        if label_layer is not None:
            if not isinstance(synapse, nn.Conv2d) or getattr(label_layer, "label_bias", None) is None:
                raise ValueError("label_layer needs a conv synapse and a layer with label weights (label_bias)")
            if getattr(label_layer, "synapse", None) is not synapse:
                raise ValueError("label_layer must be the layer that owns this synapse")
            self._label_weight = label_layer.label_bias
            self.register_buffer("label_eligibility", torch.zeros_like(label_layer.label_bias))
            self._code_hook = label_layer.register_forward_pre_hook(self._record_code, with_kwargs=True)

    def _record_code(self, _module, args, kwargs) -> None:
        code = args[1] if len(args) > 1 else kwargs.get("code")
        if code is None:
            raise ValueError("the label layer ran without its label spikes")
        self._code_records.append(code.detach())

    def reset(self) -> None:
        """Clear the post trace, the step counter and the records; keep weights and eligibility."""
        super().reset()
        self.in_spike_monitor.clear_recorded_data()
        self.out_spike_monitor.clear_recorded_data()
        self._code_records.clear()

    def close(self) -> None:
        """Remove the hooks for good."""
        self.in_spike_monitor.remove_hooks()
        self.out_spike_monitor.remove_hooks()
        if self._code_hook is not None:
            self._code_hook.remove()

    def _steps(self):
        pres, posts = self.in_spike_monitor.records, self.out_spike_monitor.records
        if len(pres) != len(posts):
            raise RuntimeError("input and output monitor record counts differ")
        for pre, post in zip(pres, posts):
            if self.step_mode == "m":
                yield from zip(pre, post)
            else:
                yield pre, post
        self.in_spike_monitor.clear_recorded_data()
        self.out_spike_monitor.clear_recorded_data()

    def _post_map(self, pre: Tensor, post: Tensor) -> Tensor:
        """A conv synapse's post-synaptic activity as a map ``[N, C, OH, OW]`` (the neuron
        may see it flattened)."""
        s = self.synapse
        if pre.ndim != 4 or pre.shape[1] != s.in_channels:
            raise ValueError("recorded input does not match the conv synapse")
        oh, ow = (conv_output_size(pre.shape[2 + i], s.kernel_size[i], s.stride[i], s.padding[i]) for i in (0, 1))
        if post.numel() != pre.shape[0] * s.out_channels * oh * ow:
            raise ValueError("recorded activity does not match the conv synapse's output")
        return post.reshape(pre.shape[0], s.out_channels, oh, ow)

    def _delta(self, activity: Tensor, pre: Tensor, y: Tensor, code: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if isinstance(self.synapse, nn.Conv2d):
            s = self.synapse
            return ff_conv_hebbian_deltas(
                self.probability, self._post_map(pre, activity), pre, y, code, s.kernel_size, s.stride, s.padding,
                self.goodness, self.over,
            )  # fmt: skip
        return ff_hebbian_delta(self.probability, activity, pre, y, self.goodness), None

    def _codes(self):
        """The recorded label spikes, one ``[N, L]`` per step (``None`` without label weights)."""
        if self.label_layer is None:
            while True:
                yield None
        for code in self._code_records:
            yield from code if self.step_mode == "m" else (code,)

    def _deltas(self, y: Tensor):
        """Consume the records; yield (dW, dB) for every step inside the learning window (dB:
        the label weights' delta, ``None`` without them)."""
        y = y.to(self.synapse.weight.dtype)
        conv = isinstance(self.synapse, nn.Conv2d)
        codes = self._codes()
        for pre, post in self._steps():
            code = next(codes)
            if conv:
                self._post_map(pre, post)
            elif pre.shape[-1] != self.synapse.in_features or post.shape[-1] != self.synapse.out_features:
                raise ValueError("recorded activity does not match the synapse shape")
            if self.trace_params is None:
                activity = post
            else:
                prev = self.trace_post if isinstance(self.trace_post, Tensor) else torch.zeros_like(post)
                activity = trace_step(prev, post > 0, self.trace_params)
                self.trace_post = activity
            t = self.t
            self.t = t + 1
            if t > self.learn_after:
                yield self._delta(activity, pre, y, code)
        self._code_records.clear()

    @torch.no_grad()
    def step(self, y: Tensor, on_grad: bool = True, scale: float = 1.0) -> Tensor | tuple[Tensor, Tensor] | None:
        """Sum of the dW of all recorded steps, times ``scale``.

        ``on_grad=True`` subtracts it from ``weight.grad`` (so an SGD optimizer with lr eta
        ascends the FF objective) and returns ``None``; otherwise returns it. With label
        weights the same holds for their dB: ``label_bias.grad``, or a ``(dW, dB)`` pair.
        """
        total = total_b = None
        for dw, db in self._deltas(y):
            total = dw if total is None else total + dw
            if db is not None:
                total_b = db if total_b is None else total_b + db
        if total is None:
            return None
        if scale != 1.0:
            total = total * scale
            total_b = None if total_b is None else total_b * scale
        if not on_grad:
            return total if self._label_weight is None else (total, total_b)
        for p, d in ((self.synapse.weight, total), (self._label_weight, total_b)):
            if p is not None and d is not None:
                p.grad = -d if p.grad is None else p.grad - d
        return None

    @torch.no_grad()
    def apply(self, y: Tensor) -> int:
        """Apply the recorded steps' updates in place, one step at a time; returns how many."""
        w = self.synapse.weight
        # the fused CUDA update walks [H, D] layouts; conv weights take the torch update
        backend = self.backend if w.ndim == 2 else "torch"
        count = 0
        for dw, db in self._deltas(y):
            apply_delta(w.data, dw, self.eta, self.eligibility_tau, self.eligibility, backend)
            if db is not None:
                lw = self._label_weight
                apply_delta(lw.data, db, self.eta, self.eligibility_tau, self.label_eligibility, "torch")
            count += 1
        return count
