"""One launch per presentation: the CuPy launcher of ``sjff_present`` (``ff_present.cu``).

A layer's input steps, its learning window's updates and its rest steps run in one kernel;
see docs/gpu.md for the work split. ``present_launch`` builds the launch for tensors on any
device, so the host emulation test checks the launcher's arguments on the CPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

from spikingjelly_ff.functional.goodness import hebbian_gain
from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.kernels.cupy_backend import device_ptr, kernel, neuron_args, stream

PRESENT_THREADS = 256
PRESENT_STAGED = 8192  # floats of shared memory for staging other blocks' goodness sums
PRESENT_SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a launch may use without opt-in
PROB_CODES = {"sigmoid": 0, "symmetric": 1, "polar": 2}
# An inference launch sums each neuron's current in its block, input by input, where the
# per-step path has cuBLAS; measured on an H200 (docs/gpu.md) it scored as fast or faster at
# two neurons per block (884->200 on 132 multiprocessors: 1.02-1.7x the per-step path) and
# slower from three on (884->300 to 884->2000: 0.28-0.90x).
INFERENCE_NEURONS_PER_BLOCK = 2
_BARRIERS: dict[tuple[str, int], torch.Tensor] = {}


def learn_args(prob: Probability, goodness_kind: str, h: int, n: int, tau: float | None, eta: float) -> tuple:
    """``LearnArgs`` of ff_present.cu, in order: the probability, the goodness halves, the
    delta's scale gain / N (a float32 of the float64 quotient, as ``hebbian_delta`` scales)
    and the eligibility constants as ``eligibility_apply`` rounds them, with its floor."""
    f = np.float32
    gain = hebbian_gain(goodness_kind, h, prob.split)
    return (
        np.int32(PROB_CODES[prob.kind]),
        f(prob.alpha),
        f(prob.theta),
        f(prob.eps),
        f(prob.clip),
        np.int32(h // 2 if prob.split else h),
        np.int32(goodness_kind == "mean_squares"),
        f(gain / max(n, 1)),
        np.int32(tau is not None),
        f(1.0 - tau) if tau is not None else f(1.0),
        f(tau) if tau is not None else f(0.0),
        f(eta),
        f(ELIGIBILITY_FLOOR),
    )


def present_blocks(h: int, sms: int) -> tuple[int, int]:
    """(neurons per block, blocks): at most one block per multiprocessor, so that all are
    resident together, as the grid barrier needs."""
    hb = -(-h // max(1, sms))
    return hb, -(-h // hb)


def present_chunk(n: int, blocks: int) -> int:
    """Blocks whose goodness sums (2 per sample) a block stages in shared memory at a time."""
    return max(1, min(blocks, PRESENT_STAGED // (2 * max(n, 1))))


def present_shared_floats(n: int, d: int, hb: int, has_e: bool, chunk: int, learns: bool = True) -> int:
    """Floats of shared memory per block (the layout at the top of ``sjff_present``). A launch
    that does not learn touches only the weights, membranes and traces: the Hebbian
    coefficients, modulations and staged goodness sums get no room."""
    state = hb * d * (2 if has_e else 1) + 2 * n * hb
    return state + (n * hb + 2 * n + chunk * 2 * n if learns else 0)


@functools.cache
def _multiprocessors(device: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device).attributes["MultiProcessorCount"])


@functools.cache
def _shared_limit(device: int) -> int:
    """Bytes of dynamic shared memory one ``sjff_present`` block may have: the device's opt-in
    maximum, set on the kernel once, or the 48 KiB every device allows."""
    import cupy

    optin = int(cupy.cuda.Device(device).attributes.get("MaxSharedMemoryPerBlockOptin", 0))
    if optin <= PRESENT_SHARED_LIMIT:
        return PRESENT_SHARED_LIMIT
    try:
        kernel("sjff_present").max_dynamic_shared_size_bytes = optin
    except Exception:  # noqa: BLE001 - a CuPy without the attribute: stay within 48 KiB
        return PRESENT_SHARED_LIMIT
    return optin


def tensors_fit(x: torch.Tensor, w: torch.Tensor, v: torch.Tensor, e: torch.Tensor | None = None) -> bool:
    """The kernel reads raw float32 memory: every tensor float32 and on one CUDA device."""
    ts = (x, w, v) if e is None else (x, w, v, e)
    return all(t.dtype == torch.float32 and t.is_cuda and t.device == x.device for t in ts)


def present_enabled() -> bool:
    """``SJFF_PRESENT=0`` turns the one-launch presentation off (benchmarks compare the paths)."""
    return os.environ.get("SJFF_PRESENT", "1") != "0"


def present_supported(
    p: NeuronParams,
    goodness_kind: str,
    n: int,
    d: int,
    h: int,
    has_e: bool,
    device: int,
    split: bool = False,
    learns: bool = True,
) -> bool:
    """Whether ``present`` can run this layer: no k-WTA, a quadratic goodness (over two equal
    halves for a split probability) and state that fits in one block's shared memory (less
    of it for a launch that does not ``learn``)."""
    if not present_enabled() or (p.kwta is not None and p.kwta < h) or n < 1:
        return False
    if goodness_kind not in ("sum_squares", "mean_squares") or (split and h % 2):
        return False
    hb, blocks = present_blocks(h, _multiprocessors(device))
    return 4 * present_shared_floats(n, d, hb, has_e, present_chunk(n, blocks), learns) <= _shared_limit(device)


def inference_rows(p: NeuronParams, rows: int, d: int, h: int, device: int, least: int = 1) -> int:
    """The samples per launch of an inference presentation (``kernels.present_rows``):
    ``rows`` or the largest of its halvings that :func:`present_supported` takes (the shared
    memory grows with the samples of a launch), else ``least`` if it fits; else 0, also for a
    layer that gives a block more than ``INFERENCE_NEURONS_PER_BLOCK`` neurons (the per-step
    path scores it faster)."""
    if present_blocks(h, _multiprocessors(device))[0] > INFERENCE_NEURONS_PER_BLOCK:
        return 0
    r = rows
    while r >= max(1, least):
        if present_supported(p, "sum_squares", r, d, h, False, device, learns=False):
            return r
        r //= 2
    return least if least >= 1 and present_supported(p, "sum_squares", least, d, h, False, device, learns=False) else 0


def warm_up() -> None:
    """Compile the module now (NVRTC, about a second) rather than inside the first batch."""
    for name in ("sjff_neuron_forward", "sjff_eligibility_apply", "sjff_present"):
        kernel(name)


def present(
    x: torch.Tensor,
    w: torch.Tensor,
    v: torch.Tensor,
    p: NeuronParams,
    tp: TraceParams,
    learn: tuple[torch.Tensor, torch.Tensor | None, Probability, str, int, float | None, float] | None = None,
    rest_steps: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One presentation of spikes ``x`` ``[T, N, D]`` (0/1) to weights ``w`` ``[H, D]`` (any
    strides) and membranes ``v`` ``[N, H]`` (updated in place), in one launch. With
    ``learn = (y, e, probability, goodness, first, tau, eta)`` the weights (and ``e``, laid out
    like ``w``) learn after every step t >= first. ``rest_steps`` steps with no input follow.
    Returns spikes ``[T, N, H]`` and the trace after the last input step ``[N, H]``."""
    e = None if learn is None else learn[1]
    if not tensors_fit(x, w, v, e):
        raise TypeError("the one-launch presentation needs float32 tensors on one CUDA device (x, w, v and e)")
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("the one-launch presentation needs CuPy (pip install 'spikingjelly-ff[cuda]')") from exc
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    launch = present_launch(x, w, v, p, tp, learn, rest_steps, _multiprocessors(device))
    if launch.shared_bytes > _shared_limit(device):
        raise ValueError(f"the layer needs {launch.shared_bytes} bytes of shared memory per block")
    with cupy.cuda.Device(device), stream(x.device):
        kernel("sjff_present")((launch.blocks,), (PRESENT_THREADS,), launch.args, shared_mem=launch.shared_bytes)
    if launch.v is not v:
        v.copy_(launch.v)
    return launch.spikes, launch.trace


@dataclass
class PresentLaunch:
    """Everything one ``sjff_present`` launch needs: the grid, the shared memory, the
    arguments in the kernel's order (device addresses as numpy uint64) and the tensors they
    point to, which must stay alive until the kernel has run."""

    blocks: int
    shared_bytes: int
    args: tuple
    spikes: torch.Tensor
    trace: torch.Tensor
    v: torch.Tensor
    keep: tuple


def present_launch(x, w, v, p: NeuronParams, tp: TraceParams, learn, rest_steps: int, sms: int) -> PresentLaunch:
    """The launch of :func:`present` for a device with ``sms`` multiprocessors, on tensors of
    any device (the host emulation test runs it on CPU tensors)."""
    x = x.contiguous()
    t_steps, n, d = x.shape
    h = w.shape[0]
    v_c = v if v.is_contiguous() else v.contiguous()
    if learn is None:
        y, e, first, prob, goodness_kind, tau, eta = torch.zeros(n, device=x.device), None, t_steps, None, "", None, 0.0
    else:
        y, e, prob, goodness_kind, first, tau, eta = learn
        y = y.to(torch.float32).contiguous()
        if e is not None and e.stride() != w.stride():
            raise ValueError(f"e and w need one memory layout, got strides {e.stride()} and {w.stride()}")
    shape = (t_steps, n, d, h, w.stride(0), w.stride(1))
    blocks, shared, sizes, fixed = _fixed_args(shape, first, rest_steps, p, tp, prob, goodness_kind, tau, eta, sms)
    has_e = bool(fixed[-4])
    spikes = torch.empty(t_steps, n, h, dtype=torch.float32, device=x.device)
    trace = torch.empty(n, h, dtype=torch.float32, device=x.device)
    bits, cols, partial = _scratch(x.device, sizes)
    bar = _barrier(x.device, _stream_key(x.device))
    pointers = (x, bits, cols, w, e if has_e else None, v_c, trace, spikes, y, partial, bar)
    args = (*(np.uint64(0) if t is None else device_ptr(t) for t in pointers), *fixed)
    return PresentLaunch(blocks, shared, args, spikes, trace, v_c, pointers)


@functools.lru_cache(maxsize=64)
def _fixed_args(shape, first, rest_steps, p, tp, prob, goodness_kind, tau, eta, sms) -> tuple:
    """(blocks, shared bytes, scratch sizes, the launch's arguments after its pointers): the
    same from one batch to the next, so built once (NeuronParams and friends are frozen)."""
    t_steps, n, d, h, stride_h, stride_d = shape
    if prob is None:  # no learning: the learning arguments are placeholders
        la = learn_args(Probability(), "sum_squares", h, n, None, 0.0)
    else:
        la = learn_args(prob, goodness_kind, h, n, tau, eta)
    hb, blocks = present_blocks(h, sms)
    chunk = present_chunk(n, blocks)
    fixed = (
        *(np.int32(k) for k in (t_steps, n, d, h, hb)),
        np.int64(stride_h),
        np.int64(stride_d),
        *(np.int32(k) for k in (first, rest_steps, p.silent_at_rest, chunk)),
        *neuron_args(p, tp),
        *la,
    )
    sizes = (t_steps * n * ((d + 31) // 32), t_steps * d * ((n + 31) // 32) if first < t_steps else 1, 4 * blocks * n)
    return blocks, 4 * present_shared_floats(n, d, hb, bool(la[8]), chunk, first < t_steps), sizes, fixed


_SCRATCH: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _scratch(device: torch.device, sizes: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's scratch buffers (packed input by input and by sample, goodness sums), kept
    per device, stream and size: launches on one stream run one after another, so the next
    launch may reuse them."""
    key = (str(device), _stream_key(device), sizes)
    if key not in _SCRATCH:
        if len(_SCRATCH) > 16:
            _SCRATCH.clear()
        bits, cols, partial = sizes
        _SCRATCH[key] = (
            torch.empty(bits, dtype=torch.int32, device=device),
            torch.empty(cols, dtype=torch.int32, device=device),
            torch.empty(partial, dtype=torch.float32, device=device),
        )
    return _SCRATCH[key]


def _barrier(device: torch.device, on: int) -> torch.Tensor:
    """The grid barrier's two counters for launches on stream ``on`` of ``device``, zeroed
    once: every launch leaves them ready for the next, and launches on one stream run one
    after another."""
    key = (str(device), on)
    if key not in _BARRIERS:
        _BARRIERS[key] = torch.zeros(2, dtype=torch.int32, device=device)
    return _BARRIERS[key]


def _stream_key(device: torch.device) -> int:
    """The stream launches on ``device`` go to (0 for the CPU tensors of the emulation test)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
