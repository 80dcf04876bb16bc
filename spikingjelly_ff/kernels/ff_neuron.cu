// CUDA kernels of spikingjelly-ff: the multi-step spiking FF neuron and the fused
// eligibility/weight update. Launched from Python through cupy.RawModule.
//
// Every arithmetic step uses an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, ...)
// so that nvcc cannot contract a*b+c into an FMA: the results must equal, bit for bit,
// the torch reference in spikingjelly_ff/dynamics.py, which rounds after every op.
//
// Layouts: time-major [T, N*H] for currents, spikes and traces; [N*H] for state.
// form: 0 = beta (V <- beta V + I), 1 = lif (SpikingJelly LIFNode op order).
// trace_kind: 0 = count, 1 = leaky, 2 = hard, 3 = none (trace = spike).

#ifndef SJFF_HOST_EMULATION
#define SJFF_RN_MUL(a, b) __fmul_rn((a), (b))
#define SJFF_RN_ADD(a, b) __fadd_rn((a), (b))
#define SJFF_RN_SUB(a, b) __fsub_rn((a), (b))
#define SJFF_RN_DIV(a, b) __fdiv_rn((a), (b))
// NVRTC (what CuPy compiles with) has no math headers, so no INFINITY: spell out its bits.
#define SJFF_NEG_INF __int_as_float((int)0xff800000u)
#endif

struct NeuronArgs {
    int form;
    float beta;
    float tau;
    int decay_input;
    float v_threshold;
    float v_reset;  // with a soft reset: the lif form's rest potential, 0
    int fire_ge;
    int trace_kind;
    float trace_decay;
    float trace_one_minus_decay;  // (float)(1.0 - decay), rounded on the host in double first
    float trace_increment;        // (float)1 / (float)scale
    // 0: divide by tau. Else multiply by it: torch on CUDA computes x / scalar as
    // x * ((float)1 / (float)scalar), and the kernel must equal torch on the same device.
    float tau_recip;
    int soft_reset;  // 1: a spike lowers V by v_threshold (v_reset=None); 0: V = v_reset
};

#define SJFF_NEURON_PARAMS                                                                          \
    const int form, const float beta, const float tau, const int decay_input, const float v_threshold, \
        const float v_reset, const int fire_ge, const int trace_kind, const float trace_decay,          \
        const float trace_one_minus_decay, const float trace_increment, const float tau_recip, const int soft_reset
#define SJFF_NEURON_ARGS                                                                                 \
    NeuronArgs a = {form,       beta,        tau,                   decay_input,                 \
                    v_threshold, v_reset,     fire_ge,               trace_kind,                  \
                    trace_decay, trace_one_minus_decay, trace_increment, tau_recip, soft_reset}

__device__ __forceinline__ float sjff_over_tau(float x, const NeuronArgs& a) {
    return a.tau_recip != 0.0f ? SJFF_RN_MUL(x, a.tau_recip) : SJFF_RN_DIV(x, a.tau);
}

__device__ __forceinline__ float sjff_charge(float v, float x, const NeuronArgs& a) {
    if (a.form == 0) {
        return SJFF_RN_ADD(SJFF_RN_MUL(v, a.beta), x);
    }
    if (a.decay_input) {
        return SJFF_RN_ADD(v, sjff_over_tau(SJFF_RN_SUB(x, SJFF_RN_SUB(v, a.v_reset)), a));
    }
    return SJFF_RN_ADD(SJFF_RN_SUB(v, sjff_over_tau(SJFF_RN_SUB(v, a.v_reset), a)), x);
}

__device__ __forceinline__ bool sjff_fires(float v, const NeuronArgs& a) {
    return a.fire_ge ? (v >= a.v_threshold) : (v > a.v_threshold);
}

// The membrane after a spike: v_reset, or v - v_threshold for a soft reset.
__device__ __forceinline__ float sjff_reset(float v, const NeuronArgs& a) {
    return a.soft_reset ? SJFF_RN_SUB(v, a.v_threshold) : a.v_reset;
}

__device__ __forceinline__ float sjff_trace(float tr, bool s, const NeuronArgs& a) {
    switch (a.trace_kind) {
        case 0:
            return SJFF_RN_ADD(tr, s ? a.trace_increment : 0.0f);
        case 1:
            return SJFF_RN_ADD(SJFF_RN_MUL(tr, a.trace_decay), SJFF_RN_MUL(s ? 1.0f : 0.0f, a.trace_one_minus_decay));
        case 2:
            return s ? 1.0f : SJFF_RN_MUL(tr, a.trace_decay);
        default:
            return s ? 1.0f : 0.0f;
    }
}

// One thread per neuron (n, h); loops over the T steps. No k-WTA.
extern "C" __global__ void sjff_neuron_forward(
    const float* __restrict__ current,  // [T, NH]
    float* __restrict__ v,              // [NH], in/out
    float* __restrict__ trace,          // [NH], in/out
    float* __restrict__ spikes,         // [T, NH], out
    float* __restrict__ trace_seq,      // [T, NH], out, or null
    const int T, const int NH, SJFF_NEURON_PARAMS) {
    SJFF_NEURON_ARGS;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= NH) return;
    float vi = v[i];
    float tr = trace[i];
    for (int t = 0; t < T; ++t) {
        const long long k = (long long)t * NH + i;
        vi = sjff_charge(vi, current[k], a);
        const bool s = sjff_fires(vi, a);
        if (s) vi = sjff_reset(vi, a);
        tr = sjff_trace(tr, s, a);
        spikes[k] = s ? 1.0f : 0.0f;
        if (trace_seq) trace_seq[k] = tr;
    }
    v[i] = vi;
    trace[i] = tr;
}

// k-th largest of x[0..n) (1-based k), by quickselect on the scratch copy.
__device__ float sjff_kth_largest(float* s, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = s[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (s[i] > pivot) ++i;
            while (s[j] < pivot) --j;
            if (i <= j) {
                const float tmp = s[i];
                s[i] = s[j];
                s[j] = tmp;
                ++i;
                --j;
            }
        }
        if (want <= j) {
            hi = j;
        } else if (want >= i) {
            lo = i;
        } else {
            break;
        }
    }
    return s[want];
}

// One thread per sample row n; k-WTA needs the whole row at each step.
extern "C" __global__ void sjff_neuron_forward_kwta(
    const float* __restrict__ current,  // [T, N, H]
    float* __restrict__ v,              // [N, H], in/out
    float* __restrict__ trace,          // [N, H], in/out
    float* __restrict__ spikes,         // [T, N, H], out
    float* __restrict__ trace_seq,      // [T, N, H], out, or null
    float* __restrict__ scratch,        // [N, H]
    const int T, const int N, const int H, const int k, SJFF_NEURON_PARAMS) {
    SJFF_NEURON_ARGS;
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float* vr = v + (long long)n * H;
    float* tr = trace + (long long)n * H;
    float* sc = scratch + (long long)n * H;
    for (int t = 0; t < T; ++t) {
        const long long base = ((long long)t * N + n) * H;
        for (int h = 0; h < H; ++h) {
            vr[h] = sjff_charge(vr[h], current[base + h], a);
            sc[h] = vr[h];
        }
        const float kth = k < H ? sjff_kth_largest(sc, H, k) : SJFF_NEG_INF;
        for (int h = 0; h < H; ++h) {
            const bool s = sjff_fires(vr[h], a) && vr[h] >= kth;
            if (s) vr[h] = sjff_reset(vr[h], a);
            tr[h] = sjff_trace(tr[h], s, a);
            spikes[base + h] = s ? 1.0f : 0.0f;
            if (trace_seq) trace_seq[base + h] = tr[h];
        }
    }
}

// An eligibility entry below ``e_floor`` in magnitude becomes 0 (hebbian.ELIGIBILITY_FLOOR).
__device__ __forceinline__ float sjff_floored(const float e, const float e_floor) {
    return fabsf(e) < e_floor ? 0.0f : e;
}

// e <- e * keep + dw * tau (0 below e_floor) ;  w <- w + e * eta   (one pass over the weights)
extern "C" __global__ void sjff_eligibility_apply(
    float* __restrict__ e, float* __restrict__ w, const float* __restrict__ dw,
    const long long n, const float keep, const float tau, const float eta, const float e_floor) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float ei = sjff_floored(SJFF_RN_ADD(SJFF_RN_MUL(e[i], keep), SJFF_RN_MUL(dw[i], tau)), e_floor);
    e[i] = ei;
    w[i] = SJFF_RN_ADD(w[i], SJFF_RN_MUL(ei, eta));
}
