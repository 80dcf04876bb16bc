"""``FFLIFNode``: the spiking FF neuron as a SpikingJelly ``MemoryModule``.

It integrates input current, fires, hard-resets and keeps the post-synaptic trace that
serves as the layer activity l. It follows SpikingJelly's conventions: ``step_mode``
``'s'`` (``[N, H]``) or ``'m'`` (``[T, N, H]``), state in registered memories (``v``,
``trace``), ``functional.reset_net`` clears them, and the multi-step path can run on our
CuPy kernel (``backend='cupy'``).

Between samples the paper does not reset the membrane: it lets it decay over rest steps
with no input (``rest``) and clears only the trace (``clear_trace``).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base
from torch import Tensor

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.dynamics import NeuronParams, TraceParams, charge, fire, reset, trace_step  # noqa: F401

__all__ = ["FFLIFNode"]


class FFLIFNode(base.MemoryModule):
    """Spiking FF neuron with a post-synaptic trace.

    :param neuron: membrane model (see :class:`~spikingjelly_ff.functional.dynamics.NeuronParams`)
    :param trace: trace model (see :class:`~spikingjelly_ff.functional.dynamics.TraceParams`)
    :param backend: ``torch`` or ``cupy`` for the multi-step path
    :param step_mode: ``'s'`` or ``'m'``
    """

    def __init__(
        self,
        neuron: NeuronParams | None = None,
        trace: TraceParams | None = None,
        backend: str = "torch",
        step_mode: str = "s",
    ) -> None:
        super().__init__()
        self.params = neuron or NeuronParams()
        self.trace_params = trace or TraceParams()
        if backend not in kernels.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        self.backend = backend
        self.step_mode = step_mode
        self.register_memory("v", 0.0)
        self.register_memory("trace", 0.0)

    def extra_repr(self) -> str:
        p, tp = self.params, self.trace_params
        return (
            f"form={p.form}, decay={p.decay:g}, v_threshold={p.v_threshold:g}, v_reset={p.v_reset}, fire='{p.fire}', "
            f"kwta={p.kwta}, trace={tp.kind}, backend={self.backend}, step_mode={self.step_mode}"
        )

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        return tuple(torch.full_like(x, s) if not isinstance(s, Tensor) else s for s in states)

    def single_step_functional_forward(self, inputs, states):
        (x,) = inputs
        v, tr = states
        v = charge(v, x, self.params)
        s = fire(v, self.params)
        v = reset(v, s, self.params)
        tr = trace_step(tr, s, self.trace_params)
        return (s.to(x.dtype),), (v, tr)

    def multi_step_functional_forward(self, inputs, states):
        (x_seq,) = inputs
        v, tr = (s.clone().contiguous() for s in states)
        spikes, _ = kernels.neuron_forward(x_seq, v, tr, self.params, self.trace_params, self.backend)
        return (spikes,), (v, tr)

    @torch.no_grad()
    def rest(self, steps: int) -> None:
        """Let the membrane evolve ``steps`` steps with no input (spikes only reset it)."""
        from spikingjelly_ff.simulation.layer import Dynamics, rest_inplace

        if isinstance(self.v, Tensor):
            rest_inplace(self.v, Dynamics(self.params, self.trace_params, None), steps)

    def clear_trace(self) -> None:
        """Start a new presentation: the trace is per sample, the membrane may carry over."""
        self.trace = 0.0
