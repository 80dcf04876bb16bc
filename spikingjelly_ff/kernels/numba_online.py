"""One compiled call per presentation: a batch-1 spiking layer with Hebbian learning (numba).

The numpy path (``simulation.online``) spends a sample's time dispatching about forty tiny
numpy calls; here the whole presentation (input currents, neuron steps, the modulated
Hebbian deltas through the eligibility trace, and the write-back of W and e) is one call to
machine code, used by the torch engine's online training and the torch-free runtime alike.

Same arithmetic as ``functional.dynamics`` (float32, each op rounded on its own, no fused
multiply-add) and the same algebra as ``simulation.online``: inside the learning window the
weights after learning step j are W0 + eta A_j e0 + eta tau sum_q B_{j-q} u_q x_q^T, so the
currents are sums over the inputs that spiked and W, e are written once, in one pass, at the
end. The sums run in another order than numpy's BLAS, so weights agree to float rounding;
spikes are equal unless a membrane lands within rounding of the threshold (the tests check
both against the numpy path and the per-step reference).

Optional: without numba, :data:`AVAILABLE` is false and callers keep the numpy path.
"""

from __future__ import annotations

import os

import numpy as np

from spikingjelly_ff.functional.hebbian import ELIGIBILITY_FLOOR
from spikingjelly_ff.functional.params import Dynamics, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import KINDS, Probability

try:  # numba is an optional extra ([fast]); the numpy path needs nothing
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised on installs without the extra
    numba = None
    AVAILABLE = False

__all__ = [
    "AVAILABLE", "charge", "eligibility_apply", "enabled", "modulated", "neuron_constants", "neuron_loop",
    "neuron_step", "plan", "present_online", "rest_beta", "step_switches", "supported", "warm_up",
]  # fmt: skip

_FORM = {"beta": 0, "lif": 1}
_TRACE = {"count": 0, "leaky": 1, "hard": 2, "none": 3}
_GOODNESS = {"sum_squares": 0, "mean_squares": 1}


def enabled() -> bool:
    """numba is installed and ``SJFF_COMPILED`` is not ``0`` (the switch benchmarks and
    debugging use to run the numpy path)."""
    return AVAILABLE and os.environ.get("SJFF_COMPILED", "1") != "0"


def supported(p: NeuronParams, goodness: str, dtype) -> bool:
    """Whether :func:`present_online` handles this layer (no k-WTA, quadratic goodness, float32)."""
    return enabled() and p.kwta is None and goodness in _GOODNESS and np.dtype(dtype) == np.float32


def present_online(
    x: np.ndarray | None,
    wt: np.ndarray,
    et: np.ndarray,
    v: np.ndarray,
    d: Dynamics,
    gain: float,
    y: float,
    first: int,
    tau: float,
    eta: float,
    rest: int = 0,
    draws: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Present one sample ``x`` ``[T, D]`` to a layer and learn at every step t >= ``first``,
    then let it rest ``rest`` steps with no input.

    ``wt``, ``et`` ``[D, H]`` (W and the eligibility trace, input-major, C-contiguous
    float32) and the membrane ``v`` ``[H]`` are updated in place. ``gain`` is dG/dl / l,
    ``tau`` the eligibility constant, ``eta`` this step's learning rate. With ``draws =
    (u [T, L], rates [L], live [L])``, Bernoulli draws of the inputs ``live`` (ascending),
    ``x`` is None: the spikes are made in the same call.
    Returns spikes ``[T, H]`` and the final trace ``[H]`` (float32)."""
    steps = draws[0].shape[0] if draws is not None else x.shape[0]
    consts = plan(d, gain, first, max(0, steps - first), tau)
    if draws is None:
        return _kernel(np.ascontiguousarray(x, dtype=np.float32), wt, et, v, *consts, float(y), float(eta), rest)
    u, rates, live = draws
    return _kernel_draws(u, rates, live, wt.shape[0], wt, et, v, *consts, float(y), float(eta), rest)


_PLANS: dict = {}


def plan(d: Dynamics, gain: float, first: int, k: int, tau):
    """The kernel's constants as a few arrays (numba checks each argument's type on every call,
    so fewer arguments cost less): the neuron's float32 constants, the integer switches, the
    float64 parameters, and A_j = a + ... + a^(j+1), B_m = 1 + ... + a^m (a = 1 - tau) in
    float64 as the numpy path computes them. Cached by the identity of the (immutable)
    parameter objects, a few per run."""
    p, tp, prob, goodness = d.neuron, d.trace, d.probability, d.goodness
    key = (id(p), id(tp), id(prob), goodness, gain, first, k, tau)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is p and hit[1] is tp and hit[2] is prob:
        return hit[3]
    neuron = neuron_constants(p, tp)
    switches = np.array(
        [_FORM[p.form], p.decay_input, p.fire == ">=", _TRACE[tp.kind], KINDS.index(prob.kind), _GOODNESS[goodness],
         first, p.silent_at_rest],
        dtype=np.int64,
    )  # fmt: skip
    floats = np.array([prob.alpha, prob.theta, prob.eps, prob.clip, gain, tau, ELIGIBILITY_FLOOR], dtype=np.float64)
    a = 1.0 - tau
    a_sum = np.cumsum(a ** np.arange(1, k + 1, dtype=np.float64))
    b_sum = np.cumsum(a ** np.arange(k, dtype=np.float64))
    plan = (neuron, switches, floats, a_sum, b_sum)
    if len(_PLANS) > 64:
        _PLANS.clear()
    _PLANS[key] = (p, tp, prob, plan)
    return plan


def neuron_constants(p: NeuronParams, tp: TraceParams) -> np.ndarray:
    """The neuron's and trace's float32 constants as the compiled step reads them: beta, tau,
    v_reset (for a soft reset the lif form's rest potential, 0), v_threshold, trace decay,
    1 - decay, trace increment, and 1 for a soft reset (0: hard)."""
    return np.array(
        [p.beta, p.tau, p.v_rest, p.v_threshold, tp.decay, tp.one_minus_decay, tp.increment, p.soft_reset],
        dtype=np.float32,
    )


def step_switches(p: NeuronParams, tp: TraceParams) -> tuple[int, bool, bool, int]:
    """The compiled step's switches: form, decay_input, fire on >=, trace kind."""
    return _FORM[p.form], bool(p.decay_input), p.fire == ">=", _TRACE[tp.kind]


def warm_up() -> bool:
    """Compile (or load from the disk cache) the kernels now, so that the first Learn does not
    wait for it (about 2 s the first time on a machine). Returns whether they are in use."""
    if not enabled():
        return False
    x = np.ones((3, 2), np.float32)
    w, e, v = np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
    d = Dynamics(NeuronParams(), TraceParams(), Probability("symmetric"), "sum_squares")
    args = (d, 2.0, 1.0, 1, 0.1, 0.1, 1)
    present_online(x, w, e, v, *args)
    one = (np.zeros((3, 1), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))
    present_online(None, w, e, v, *args, draws=one)
    rest_beta(v, 0.5, 1)
    spikes = np.empty((3, 2), np.float32)  # the layer-wide neuron loop (numba_neuron)
    switches, consts = step_switches(d.neuron, d.trace), neuron_constants(d.neuron, d.trace)
    neuron_loop(x, v, v.copy(), spikes, spikes.copy(), *switches, consts)
    return True


def rest_beta(v: np.ndarray, beta: float, steps: int) -> None:
    """``steps`` silent steps of the beta neuron in place on a float32 ``v``: v <- v * beta + 0,
    as ``dynamics.charge`` computes it (the + 0 turns -0.0 into 0.0, as there)."""
    _rest_beta(v.reshape(-1), np.float32(beta), steps)


def _rest_beta_impl(v, beta, steps):
    zero = np.float32(0.0)
    for _ in range(steps):
        for j in range(v.shape[0]):
            v[j] = v[j] * beta + zero


def _csr_impl(x):
    """The inputs that spiked at each step of ``x`` ``[T, D]``, as CSR: step t's are
    ``idx[ptr[t]:ptr[t + 1]]``, ascending (every current is a sum over them)."""
    t_steps, d = x.shape
    ptr = np.zeros(t_steps + 1, np.int64)
    for t in range(t_steps):
        c = 0
        for i in range(d):
            c += x[t, i] != 0.0
        ptr[t + 1] = ptr[t] + c
    idx = np.empty(ptr[t_steps], np.int64)
    for t in range(t_steps):
        c = ptr[t]
        for i in range(d):
            if x[t, i] != 0.0:
                idx[c] = i
                c += 1
    return ptr, idx


def _draws_impl(u, rates, live, d):
    """Spikes ``[T, D]`` and their CSR from Bernoulli draws: input ``live[l]`` spikes at step t
    when ``u[t, l] < rates[l]`` (``simulation.encoding.SampleDraws``; ``live`` ascending)."""
    t_steps, n_live = u.shape
    x = np.zeros((t_steps, d), np.float32)
    ptr = np.zeros(t_steps + 1, np.int64)
    idx = np.empty(t_steps * n_live, np.int64)
    c = 0
    for t in range(t_steps):
        for j in range(n_live):
            if u[t, j] < rates[j]:
                x[t, live[j]] = 1.0
                idx[c] = live[j]
                c += 1
        ptr[t + 1] = c
    return x, ptr, idx[:c]


def _impl(x, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest):
    ptr, idx = _csr(x)
    return _core(x, ptr, idx, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest)


def _impl_draws(u, rates, live, d, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest):
    x, ptr, idx = _draws(u, rates, live, d)
    return _core(x, ptr, idx, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest)


def _charge_impl(vj, cj, form, decay_input, neuron):
    """``dynamics.charge`` of one float32 membrane ``vj`` with current ``cj`` (``neuron``: the
    constants of :func:`neuron_constants`)."""
    if form == 0:
        return vj * neuron[0] + cj
    if decay_input:
        return vj + (cj - (vj - neuron[2])) / neuron[1]
    return vj - (vj - neuron[2]) / neuron[1] + cj


def _neuron_step_impl(vj, cj, trj, form, decay_input, fire_ge, trace_kind, neuron):
    """One unit's charge, fire, reset and trace step, dynamics.py's arithmetic in float32 (each
    op rounded on its own): returns (membrane, trace, spike). ``neuron`` holds the float32
    constants of :func:`neuron_constants`; ``form`` and ``trace_kind`` index _FORM and _TRACE.
    The one compiled copy of the step: the presentation kernel and the neuron loop
    (``numba_neuron``) both call it."""
    v_reset, v_th = neuron[2], neuron[3]
    decay, omd, incr = neuron[4], neuron[5], neuron[6]
    one = np.float32(1.0)
    vj = charge(vj, cj, form, decay_input, neuron)
    s = one if (vj >= v_th if fire_ge else vj > v_th) else np.float32(0.0)
    # both resets computed and one selected: an if/else here kept LLVM from vectorising the
    # neuron loop (the loop 12x slower, all-label testing 3.6x, on AVX-512)
    soft = vj - s * v_th
    hard = vj * (one - s)
    hard = hard + s * v_reset if v_reset != 0.0 else hard
    vj = soft if neuron[7] != 0.0 else hard
    if trace_kind == 0:
        trj = trj + s * incr
    elif trace_kind == 1:
        trj = trj * decay + s * omd
    elif trace_kind == 2:
        trj = trj * decay * (one - s) + s
    else:
        trj = s
    return vj, trj, s


def _neuron_loop_impl(cur, v, tr, spikes, seq, form, decay_input, fire_ge, trace_kind, neuron):
    """Every unit's steps of ``cur`` ``[T, M]`` in place on ``v``, ``tr`` ``[M]``: spikes and (when
    ``seq`` has T rows) the traces into ``[T, M]`` (``numba_neuron.neuron_forward``). Here, in the
    step's file, because numba's disk cache is per file: a kernel in another file that calls
    the step would keep its cached copy of an old step."""
    steps, units = cur.shape
    keep = seq.shape[0] > 0
    for t in range(steps):
        # Two copies of the unit loop, so that LLVM vectorises the one without traces to keep:
        # a conditional store in it, or a copy of the traces after it, left it scalar (all-label
        # testing 4-5x slower on AVX-512; benchmarks/notebook_speed.py shows it)
        if keep:
            for j in range(units):
                vj, trj, s = neuron_step(v[j], cur[t, j], tr[j], form, decay_input, fire_ge, trace_kind, neuron)
                v[j] = vj
                tr[j] = trj
                spikes[t, j] = s
                seq[t, j] = trj
        else:
            for j in range(units):
                vj, trj, s = neuron_step(v[j], cur[t, j], tr[j], form, decay_input, fire_ge, trace_kind, neuron)
                v[j] = vj
                tr[j] = trj
                spikes[t, j] = s


def _core_impl(x, ptr, idx, wt, et, v, neuron, switches, floats, a_sum, b_sum, y, eta, rest):
    form, decay_input, fire_ge, trace_kind = switches[0], switches[1] != 0, switches[2] != 0, switches[3]
    prob_kind, goodness, first, silent = switches[4], switches[5], switches[6], switches[7] != 0
    alpha, theta, eps, clip, gain, tau = floats[0], floats[1], floats[2], floats[3], floats[4], floats[5]
    floor = np.float32(floats[6])  # ELIGIBILITY_FLOOR
    t_steps, d = x.shape
    h = wt.shape[1]
    k = max(0, t_steps - first)
    us = np.zeros((max(k, 1), h), np.float32)  # gain * M * trace of each learning step
    out = np.zeros((t_steps, h), np.float32)
    tr = np.zeros(h, np.float32)
    cur = np.empty(h, np.float32)
    q = np.empty(h, np.float32)
    split = prob_kind != 0
    half = h // 2 if split else h
    no_seq = np.empty((0, h), np.float32)
    for t in range(t_steps):
        # W0 x_t, then (inside the window) eta A_j (e0 x_t) and the deltas learned so far
        _rows_sum(cur, wt, x, idx, ptr, t)
        n_learned = min(max(0, t - first), k)
        if n_learned > 0:
            _rows_sum(q, et, x, idx, ptr, t)
            ca = np.float32(eta * a_sum[n_learned - 1])
            for j in range(h):
                cur[j] += q[j] * ca
            for m in range(n_learned):
                # x_m . x_t over the inputs of learning step m
                ts = first + m
                dot = 0.0
                for c in range(ptr[ts], ptr[ts + 1]):
                    i = idx[c]
                    dot += x[ts, i] * x[t, i]
                if dot != 0.0:
                    cm = np.float32(eta * tau * b_sum[n_learned - 1 - m] * dot)
                    for j in range(h):
                        cur[j] += cm * us[m, j]
        # the vectorised neuron loop, one step of the layer (stepped unit by unit here, it ran scalar)
        neuron_loop(cur.reshape(1, h), v, tr, out[t : t + 1], no_seq, form, decay_input, fire_ge, trace_kind, neuron)
        if t >= first:
            _modulated(tr, us[t - first], split, half, prob_kind, alpha, theta, eps, clip, goodness, gain, y)
    # the rest steps (no input): the membrane decays, and where it could reach the threshold it
    # fires and resets, as simulation.rest does
    zero = np.float32(0.0)
    rest_units(v, rest, form, decay_input, fire_ge, silent, neuron)
    if k == 0:
        return out, tr
    # write-back, one pass over W and e: W += eta A_{K-1} e0 + eta tau sum_q B_{K-1-q} u_q x_q^T,
    # e <- a^K e0 + tau sum_q a^(K-1-q) u_q x_q^T, then 0 below ELIGIBILITY_FLOOR (once per
    # presentation here, after every step on the per-step paths: equal within float tolerance)
    a = 1.0 - tau
    cw = np.float32(eta * a_sum[k - 1])
    ak = np.float32(a**k)
    wq = np.empty(k, np.float32)
    eq = np.empty(k, np.float32)
    for m in range(k):
        wq[m] = np.float32(eta * tau * b_sum[k - 1 - m])
        eq[m] = np.float32(tau * a ** (k - 1 - m))
    hit = np.zeros(d, np.bool_)
    for m in range(k):
        ts = first + m
        for c in range(ptr[ts], ptr[ts + 1]):
            hit[idx[c]] = True
    dw = np.empty(h, np.float32)
    de = np.empty(h, np.float32)
    for i in range(d):
        if hit[i]:
            for j in range(h):
                dw[j] = 0.0
                de[j] = 0.0
            for m in range(k):
                xm = x[first + m, i]
                if xm != 0.0:
                    for j in range(h):
                        dw[j] += (xm * us[m, j]) * wq[m]
                        de[j] += (xm * us[m, j]) * eq[m]
            for j in range(h):
                e0 = et[i, j]
                wt[i, j] = wt[i, j] + e0 * cw + dw[j]
                en = e0 * ak + de[j]
                et[i, j] = zero if abs(en) < floor else en
        else:
            for j in range(h):
                e0 = et[i, j]
                wt[i, j] = wt[i, j] + e0 * cw
                en = e0 * ak
                et[i, j] = zero if abs(en) < floor else en
    return out, tr


def eligibility_apply(e: np.ndarray, w: np.ndarray, dw: np.ndarray, tau: float, eta: float) -> bool:
    """In place, one pass: e <- (1 - tau) e + tau dW (0 below ``ELIGIBILITY_FLOOR``), then
    w <- w + eta e, each op rounded to float32 as ``torch_loop``/``numpy_loop`` round it (the
    batched learning window calls this once per step; the tensor ops make several passes over
    the matrix and two temporaries).
    ``e``, ``w``, ``dw`` share one shape; returns False (nothing done) unless all three are
    float32 and C-contiguous."""
    arrays = (e, w, dw)
    if not all(a.dtype == np.float32 and a.flags.c_contiguous and a.shape == e.shape for a in arrays):
        return False
    f = np.float32
    _eligibility(e.reshape(-1), w.reshape(-1), dw.reshape(-1), f(1.0 - tau), f(tau), f(eta), f(ELIGIBILITY_FLOOR))
    return True


def _eligibility_impl(e, w, dw, a, tau, eta, floor):
    for i in range(e.shape[0]):
        e[i], w[i] = eligibility_step(e[i], w[i], dw[i], a, tau, eta, floor)


def _eligibility_step_impl(e, w, dw, keep, tau, eta, floor):
    """One element of ``eligibility_apply``: (e * keep + dW * tau, 0 below ``floor``; w + e * eta),
    each op rounded to float32. The one compiled copy: the pass above and ``numba_batch`` call it."""
    ei = e * keep + dw * tau
    ei = np.float32(0.0) if abs(ei) < floor else ei  # NaN stays NaN, as in the tensor ops
    return ei, w + ei * eta


def _rest_units_impl(v, steps, form, decay_input, fire_ge, silent, neuron):
    """``steps`` steps without input of every membrane of ``v`` (1-D, in place), as
    ``simulation.rest``: decay, and fire and reset where a spike is possible."""
    zero = np.float32(0.0)
    v_reset, v_th = neuron[2], neuron[3]
    for _ in range(steps):
        if silent:  # no spike possible: a loop without the test, which LLVM vectorises
            for j in range(v.shape[0]):
                v[j] = charge(v[j], zero, form, decay_input, neuron)
        else:
            for j in range(v.shape[0]):
                vj = charge(v[j], zero, form, decay_input, neuron)
                if vj >= v_th if fire_ge else vj > v_th:
                    vj = vj - v_th if neuron[7] != 0.0 else v_reset
                v[j] = vj


def _rows_sum_impl(out, mat, x, idx, ptr, t):
    """out = sum over the inputs i that spiked at step t of x[t, i] * mat[i] (a row of W or e)."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    for c in range(ptr[t], ptr[t + 1]):
        i = idx[c]
        xi = x[t, i]
        for j in range(out.shape[0]):
            out[j] += xi * mat[i, j]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _modulated_impl(tr, out, split, half, prob_kind, alpha, theta, eps, clip, goodness, gain, y):
    """out = gain * M * trace: ``probability.py``'s modulation on scalars (kinds in KINDS order:
    sigmoid, symmetric, polar; M = 0 where P lies outside the clip)."""
    h = tr.shape[0]
    gp = 0.0
    gn = 0.0
    for j in range(half):
        gp += float(tr[j]) * float(tr[j])
    if split:
        for j in range(half, h):
            gn += float(tr[j]) * float(tr[j])
    if goodness == 1:
        gp /= half
        gn /= half
    if prob_kind == 0:
        prob = _sigmoid(alpha * (gp - theta))
        mp = alpha * (y - prob)
        mn = 0.0
    elif prob_kind == 1:
        prob = (gp + eps) / (gp + gn + 2 * eps)
        inv_s = 1.0 / (gp + gn + 2 * eps)
        mp = y / (gp + eps) - inv_s
        mn = (1 - y) / (gn + eps) - inv_s
    else:
        prob = _sigmoid(alpha * (gp - gn - theta))
        mp = alpha * (y - prob)
        mn = -mp
    if clip > 0 and not (clip <= prob <= 1.0 - clip):
        mp = 0.0
        mn = 0.0
    fp = np.float32(mp * gain)
    fn = np.float32(mn * gain)
    for j in range(half):
        out[j] = tr[j] * fp
    for j in range(half, h):
        out[j] = tr[j] * fn


def jit(fn, **options):
    """numba.njit with the machine code cached on disk (later processes skip the compile),
    or without a cache where no writable cache directory exists (a read-only install)."""
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:
        return numba.njit(**options)(fn)


if AVAILABLE:
    # inlined into the kernels at numba's level: as calls they kept the loops from being
    # optimised as one (the presentation kernel ran 1.6x slower)
    charge = jit(_charge_impl, inline="always")
    neuron_step = jit(_neuron_step_impl, inline="always")
    neuron_loop = jit(_neuron_loop_impl, nogil=True)  # the server steps models on worker threads
    _rows_sum = jit(_rows_sum_impl)
    eligibility_step = jit(_eligibility_step_impl, inline="always")
    rest_units = jit(_rest_units_impl, inline="always")
    _eligibility = jit(_eligibility_impl)
    _sigmoid = jit(_sigmoid)
    _modulated = modulated = jit(_modulated_impl)
    _csr = jit(_csr_impl)
    _draws = jit(_draws_impl)
    _core = jit(_core_impl)
    _kernel = jit(_impl)
    _kernel_draws = jit(_impl_draws)
    _rest_beta = jit(_rest_beta_impl)
else:  # pragma: no cover
    charge = _charge_impl
    neuron_step = _neuron_step_impl
    neuron_loop = _neuron_loop_impl
    _rows_sum = _rows_sum_impl
    eligibility_step = _eligibility_step_impl
    rest_units = _rest_units_impl
    _eligibility = _eligibility_impl
    _modulated = modulated = _modulated_impl
    _csr = _csr_impl
    _draws = _draws_impl
    _core = _core_impl
    _kernel = _impl
    _kernel_draws = _impl_draws
    _rest_beta = _rest_beta_impl

# the steps numba_rows runs for each sample of a run (compiled, callable from its kernel)
draws_csr, core = _draws, _core
