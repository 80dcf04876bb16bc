"""Scoring every candidate label: the first layer's currents of all labels with the
label-independent part computed once, and the labels streamed through the layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spikingjelly_ff.functional import _array
from spikingjelly_ff.simulation.encoding import bernoulli_spikes, encode_spikes, regular_spikes
from spikingjelly_ff.simulation.layer import Dynamics, neuron_forward, rest_inplace

Array = Any  # torch tensor or numpy array

__all__ = ["label_currents", "label_spikes", "score_labels", "score_labels_present", "spike_currents"]


def score_labels(
    first_current,
    num_labels: int,
    weights: list[Array],
    d: Dynamics,
    states: list[Array | None],
    carry: bool,
    rest_steps: int,
    backend: str = "torch",
    counts: bool = False,
) -> tuple[list[Array], list[Array]]:
    """Present C candidate labels to every layer and collect each layer's final traces.

    ``first_current(k)`` returns layer 1's input current ``[T, N, H1]`` for label k (see
    :func:`label_currents`). Labels stream through all layers one after another, so no
    ``[C, T, N, H]`` tensor is ever built. With ``carry`` each layer's membrane carries from
    one label to the next, decaying over ``rest_steps`` (the paper); otherwise every label
    starts from rest. ``states`` holds each layer's starting membrane ``[N, H]`` (or ``None``).
    Returns per layer the final traces (or spike counts) ``[C, N, H]``, and the membranes
    left at the end (``None`` without ``carry``).
    """
    outputs: list[Array] = []
    vs: list[Array] = []
    for k in range(num_labels):
        current = first_current(k)
        t, n, _ = current.shape
        spikes = None
        for i, w in enumerate(weights):
            h = w.shape[0]
            if spikes is not None:  # the previous layer's output drives this one
                current = (spikes.reshape(t * n, -1) @ w.T).reshape(t, n, h)
            if k == 0:
                outputs.append(_array.empty(current, (num_labels, n, h)))
                vs.append(_start_membrane(states[i] if carry else None, current, n, h))
            v = vs[i] if carry else _array.zeros(current, (n, h))
            tr = _array.zeros(current, (n, h))
            spikes = neuron_forward(_array.contiguous(current), v, tr, d, backend)
            outputs[i][k] = spikes.sum(0) if counts else tr
            if carry:
                rest_inplace(v, d, rest_steps)
        current = spikes = None  # freed before the next label's current is made (a batch's peak memory)
    return outputs, (vs if carry else [None] * len(weights))


def _start_membrane(state: Array | None, like: Array, n: int, h: int) -> Array:
    """A layer's first membrane ``[n, h]`` when labels carry it: a copy of ``state`` where it
    has that shape (the network's state from the previous batch), else zeros."""
    if state is not None and tuple(state.shape) == (n, h):
        return _array.contiguous(_array.copy(state))
    return _array.zeros(like, (n, h))


def score_labels_present(
    first_spikes,
    num_labels: int,
    weights: list[Array],
    d: Dynamics,
    states: list[Array | None],
    carry: bool,
    rest_steps: int,
    present,
    rows: int,
    counts: bool = False,
) -> tuple[list[Array], list[Array]]:
    """:func:`score_labels` with every layer's presentation one launch of the whole
    presentation kernel (torch tensors; ``kernels.present`` on a GPU).

    ``first_spikes(k)`` returns layer 1's input spikes ``[T, N, D']`` for label k (see
    :func:`label_spikes`); ``present(x, w, v, neuron, trace, None, rest_steps)`` presents
    spikes ``x`` ``[T, R, D]`` to weights ``w`` from membranes ``v`` ``[R, H]`` (updated in
    place, then resting ``rest_steps`` steps) and returns spikes ``[T, R, H]`` and the final
    trace ``[R, H]``; ``rows`` is the most samples one launch may take. Without ``carry``
    every label starts from rest, so all labels' samples run together, ``rows`` at a time; with
    ``carry`` the labels run one after another (``rows >= N``), each layer's membrane resting
    between them. Same returns as :func:`score_labels`."""
    torch = _array.xp(weights[0])
    if not carry:
        x = torch.cat([first_spikes(k) for k in range(num_labels)], dim=1)  # [T, C * N, D'], label-major
        t, cn, _ = x.shape
        outputs = []
        for w in weights:
            h = w.shape[0]
            spikes = x.new_empty(t, cn, h)
            final = x.new_empty(cn, h)
            for r0 in range(0, cn, rows):
                r1 = min(cn, r0 + rows)
                s, tr = present(x[:, r0:r1].contiguous(), w, x.new_zeros(r1 - r0, h), d.neuron, d.trace, None, 0)
                spikes[:, r0:r1] = s
                final[r0:r1] = s.sum(0) if counts else tr
            outputs.append(final.reshape(num_labels, cn // num_labels, h))
            x = spikes
        return outputs, [None] * len(weights)
    outputs, vs = [], []
    for k in range(num_labels):
        x = first_spikes(k)
        n = x.shape[1]
        if n > rows:
            raise ValueError(f"{n} samples do not fit one launch of at most {rows}")
        for i, w in enumerate(weights):
            h = w.shape[0]
            if k == 0:
                outputs.append(x.new_empty(num_labels, n, h))
                vs.append(_start_membrane(states[i], x, n, h))
            x, tr = present(x, w, vs[i], d.neuron, d.trace, None, rest_steps)
            outputs[i][k] = x.sum(0) if counts else tr
    return outputs, vs


def label_spikes(
    image_rates: Array,
    label_rates: Array,
    image_slice: slice,
    label_slice: slice,
    width: int,
    steps: int,
    rng,
    coding: str = "bernoulli",
):
    """Input spikes of every candidate label for :func:`score_labels_present` (torch): the
    draws :func:`label_currents` makes with ``share``, in its order (one draw of image spikes,
    one uniform per step, image and label position, shared by every label), so both scorers
    see the same spikes. Returns ``spikes(k)`` ``[T, N, width]`` for label k."""
    torch = _array.xp(image_rates)
    n, lw = image_rates.shape[0], label_rates.shape[1]
    keep = torch.arange(image_slice.start, image_slice.stop, device=image_rates.device)
    image = encode_spikes(image_rates.index_select(1, keep), steps, rng, coding)  # [T, N, S]
    u = torch.rand(steps, n, lw, generator=rng, device=image_rates.device) if coding == "bernoulli" else None

    def spikes(k: int):
        out = image_rates.new_zeros(steps, n, width)
        out[:, :, image_slice] = image
        rate = label_rates[k]  # [L]
        if u is None:
            out[:, :, label_slice] = regular_spikes(rate.expand(n, lw), steps)
        else:
            out[:, :, label_slice] = (u < rate).to(out.dtype)
        return out

    return spikes


def label_currents(
    image_rates: Array,
    label_rates: Array,
    image_slice: slice,
    label_slice: slice,
    w: Array,
    steps: int,
    rng,
    share: bool = True,
    coding: str = "bernoulli",
):
    """Draw input spikes for every candidate label; returns ``current(k)``, layer 1's input
    current ``[T, N, H]`` for label k.

    ``image_rates`` ``[N, D]`` are the images' spike probabilities (the embedded input holds
    positions ``image_slice`` of them at the same positions); ``label_rates`` ``[C, L]`` those
    of each label's code, at ``label_slice`` of the embedded input (``w`` is ``[H, D']``).
    With ``share`` all labels of an image see the same image spikes and the same uniform
    draws for their label positions (common random numbers), so the image part of the
    current is computed once, not C times; and when every active label position has the
    same rate (binary label codes) one draw of label spikes serves every label, each label
    adding a small product over its own active positions.
    """
    c, width = label_rates.shape
    n = image_rates.shape[0]
    h = w.shape[0]
    if not share:
        rates = _embedded_rates(image_rates, label_rates, image_slice, label_slice, w.shape[1])  # [C, N, D']
        spikes = bernoulli_spikes(rates, steps, rng)  # [T, C, N, D']
        full = _array.swap01((spikes.reshape(steps * c * n, -1) @ w.T).reshape(steps, c, n, h))
        return lambda k: full[k]
    w_lab = w[:, label_slice]
    if _array.is_torch(image_rates):
        torch = _array.xp(image_rates)
        keep_idx = torch.arange(image_slice.start, image_slice.stop, device=image_rates.device)
        w_shared = w.index_select(1, keep_idx)
        shared_rates = image_rates.index_select(1, keep_idx)
        if image_rates.device.type == "cpu":
            _, index = encode_spikes(shared_rates, steps, rng, coding, index=True, dense=False)
            shared = index.matmul(w_shared)  # [T*N, H]
        else:
            spikes = encode_spikes(shared_rates, steps, rng, coding)
            shared = spikes.reshape(steps * n, -1) @ w_shared.T
        u = torch.rand(steps, n, width, generator=rng, device=image_rates.device) if coding == "bernoulli" else None
        code = label_rates  # [C, L]
        level = code.max()
        if bool(((code == 0) | (code == level)).all()):
            # Binary codes: label c's spikes are (u < level) on c's active positions.
            if u is None:  # regular coding: every active position fires on the same steps
                fired = regular_spikes(level.reshape(1), steps).expand(steps, n * width).reshape(steps * n, width)
            else:
                fired = (u < level).to(image_rates.dtype).reshape(steps * n, width)
            active = [(code[k] > 0).nonzero().squeeze(1) for k in range(c)]

            def current(k: int):
                on = active[k]
                if not on.numel():
                    return shared.reshape(steps, n, h)
                return torch.addmm(shared, fired.index_select(1, on), w_lab.index_select(1, on).T).reshape(steps, n, h)

            return current
        if u is None:
            label = _array.swap01(regular_spikes(code[:, None, :].expand(c, n, width), steps))  # [C, T, N, L]
        else:
            label = (u[None] < code[:, None, None, :]).to(image_rates.dtype)  # [C, T, N, L]
    else:
        keep_idx = np.arange(image_slice.start, image_slice.stop)
        shared = _shared_current(image_rates[:, keep_idx], w[:, keep_idx], steps, rng, coding)
        return _numpy_label_current(shared, label_rates, w[:, label_slice], steps, n, rng, coding, image_rates.dtype)
    return lambda k: (shared + label[k].reshape(steps * n, width) @ w_lab.T).reshape(steps, n, h)


def _numpy_label_current(
    shared: np.ndarray, label_rates: np.ndarray, w_lab: np.ndarray, steps: int, n: int, rng, coding: str, dtype
) -> Any:
    """``current(k)`` of :func:`label_currents` on numpy: the image part ``shared``
    ``[T * N, H]`` plus label k's spikes ``[T * N, L]`` times ``w_lab`` ``[H, L]``. Each
    label's spikes are made when its current is asked for, from draws shared by all labels
    (one ``[T, N, L]`` array, booleans where the code is binary), never a ``[C, T, N, L]``
    array: the same values, a fraction of the memory of a large batch (``dtype``: the
    Bernoulli spikes', the image rates')."""
    width = label_rates.shape[1]
    h = w_lab.shape[0]
    if coding == "regular":

        def spikes(k: int) -> np.ndarray:
            return regular_spikes(np.broadcast_to(label_rates[k], (n, width)), steps)

    else:
        u = rng.random((steps, n, width), dtype=np.float32)
        level = label_rates.max()
        if bool(((label_rates == 0) | (label_rates == level)).all()):
            # binary codes: u < rate is (u < level) where the rate is level, never where it is 0
            fired, active = u < level, label_rates > 0
            del u

            def spikes(k: int) -> np.ndarray:
                return (fired & active[k]).astype(dtype)

        else:

            def spikes(k: int) -> np.ndarray:
                return (u < label_rates[k]).astype(dtype)

    def current(k: int) -> np.ndarray:
        out = spikes(k).reshape(steps * n, width) @ w_lab.T
        if out.dtype == shared.dtype:
            out += shared  # shared + out, added in place (IEEE addition commutes)
        else:
            out = shared + out
        return out.reshape(steps, n, h)

    return current


def _embedded_rates(image_rates: Array, label_rates: Array, image_slice: slice, label_slice: slice, width: int):
    """Every label's embedded rates ``[C, N, D']``, for the path that draws them all."""
    c, n = label_rates.shape[0], image_rates.shape[0]
    out = _array.zeros(image_rates, (c, n, width))
    out[:, :, image_slice] = image_rates[:, image_slice]
    out[:, :, label_slice] = label_rates[:, None, :]
    return out


_CHUNK_STEPS = 32


def _shared_current(rates: np.ndarray, w: np.ndarray, steps: int, rng, coding: str) -> np.ndarray:
    """``[T * N, H]`` current of the image spikes (numpy), drawn and multiplied a few steps at a
    time: the uniform draws come in the same order as one ``[T, N, S]`` draw, so the result is
    the same, but memory stays bounded and a long run stays interruptible between chunks."""
    n = rates.shape[0]
    if coding != "bernoulli" or steps <= _CHUNK_STEPS:
        return encode_spikes(rates, steps, rng, coding).reshape(steps * n, -1) @ w.T
    out = np.empty((steps * n, w.shape[0]), dtype=np.result_type(w.dtype, np.float32))
    wt = w.T
    for t0 in range(0, steps, _CHUNK_STEPS):
        t1 = min(steps, t0 + _CHUNK_STEPS)
        spikes = bernoulli_spikes(rates, t1 - t0, rng)
        np.matmul(spikes.reshape((t1 - t0) * n, -1), wt, out=out[t0 * n : t1 * n])
        del spikes  # before the next chunk's are drawn
    return out


def spike_currents(spikes: Array, w: Array):
    """``current(k)`` for given input spikes ``[C, T, N, D']`` of every label: layer 1's input
    current ``[T, N, H]`` of label k (``w`` ``[H, D']``), the counterpart of :func:`label_currents`."""
    _, t, n, _ = spikes.shape

    def current(k: int) -> Array:
        return (spikes[k].reshape(t * n, -1) @ w.T).reshape(t, n, -1)

    return current
