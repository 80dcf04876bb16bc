"""The neuron loop and the eligibility update on torch tensors (CPU and GPU).

Same values as ``functional.dynamics`` (charge, fire, reset, trace), written as in-place ops:
every op rounds once and products with 0/1 spikes are exact, so the numpy loop
(``numpy_loop``) and the CuPy kernels give identical spikes for identical currents.
"""

from __future__ import annotations

import torch

from spikingjelly_ff.functional.dynamics import NeuronParams, TraceParams, charge, fire, reset, trace_step
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.kernels import numba_neuron, numba_online

__all__ = ["eligibility_apply", "neuron_forward"]


def neuron_forward(
    current: torch.Tensor,
    v: torch.Tensor,
    trace: torch.Tensor,
    p: NeuronParams,
    tp: TraceParams,
    trace_seq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """T steps of charge/fire/reset/trace. ``current`` ``[T, N, H]``; ``v`` and ``trace``
    ``[N, H]`` (contiguous) are updated in place. Returns float spikes ``[T, N, H]`` and
    optionally the trace after every step ``[T, N, H]``."""
    if p.kwta is not None and p.kwta < v.shape[-1]:
        return _neuron_forward_generic(current, v, trace, p, tp, trace_seq)
    tensors = (current, v, trace)
    if all(t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors):
        arrays = tuple(t.numpy() for t in tensors)
        if numba_neuron.supported(p, *arrays):  # one compiled pass, the same values
            spikes, seq = numba_neuron.neuron_forward(*arrays, p, tp, trace_seq)
            return torch.from_numpy(spikes), (torch.from_numpy(seq) if seq is not None else None)
    # In-place form of dynamics.charge/fire/reset/trace_step with the same values: every op
    # rounds once, and products with 0/1 spikes are exact. The reset is arithmetic,
    # v * (1 - s) + s * v_reset (soft: v - s * v_threshold), because masked_fill_ costs
    # several times more on the CPU.
    spikes = torch.empty_like(current)
    seq = torch.empty_like(current) if trace_seq else None
    keep = torch.empty_like(v)
    one = torch.ones((), dtype=v.dtype, device=v.device)
    compare = torch.gt if p.fire == ">" else torch.ge
    for t in range(current.shape[0]):
        _charge_(v, current[t], p)
        st = spikes[t]
        compare(v, p.v_threshold, out=st)
        torch.sub(one, st, out=keep)
        if p.v_reset is None:
            v.sub_(st, alpha=p.v_threshold)
        else:
            v.mul_(keep)
            if p.v_reset != 0.0:
                v.add_(st, alpha=p.v_reset)
        if tp.kind == "count":
            trace.add_(st, alpha=tp.increment)
        elif tp.kind == "leaky":
            trace.mul_(tp.decay).add_(st, alpha=tp.one_minus_decay)
        elif tp.kind == "hard":
            trace.mul_(tp.decay).mul_(keep).add_(st)
        else:
            trace.copy_(st)
        if seq is not None:
            seq[t].copy_(trace)
    return spikes, seq


def _charge_(v: torch.Tensor, x: torch.Tensor, p: NeuronParams) -> None:
    if p.form == "beta":
        v.mul_(p.beta).add_(x)
    else:
        v.copy_(charge(v, x, p))


def _neuron_forward_generic(current, v, trace, p, tp, trace_seq):
    spikes = torch.empty_like(current)
    seq = torch.empty_like(current) if trace_seq else None
    vt, tr = v, trace
    for t in range(current.shape[0]):
        vt = charge(vt, current[t], p)
        s = fire(vt, p)
        vt = reset(vt, s, p)
        tr = trace_step(tr, s, tp)
        spikes[t] = s
        if seq is not None:
            seq[t] = tr
    v.copy_(vt)
    trace.copy_(tr)
    return spikes, seq


def eligibility_apply(e: torch.Tensor, w: torch.Tensor, dw: torch.Tensor, tau: float, eta: float) -> None:
    """In place: e <- (1 - tau) e + tau dW, entries below ``ELIGIBILITY_FLOOR`` set to 0, then
    w <- w + eta e."""
    if e.device.type == "cpu" and e.dim() == 2 and numba_online.enabled():
        # one compiled pass over the input-major memory when the layouts allow it
        views = (t.detach().T.numpy() for t in (e, w, dw))
        if numba_online.eligibility_apply(*views, tau, eta):
            return
    e.mul_(1.0 - tau).add_(dw * tau)
    e.masked_fill_(e.abs() < ELIGIBILITY_FLOOR, 0.0)
    w.add_(e * eta)
