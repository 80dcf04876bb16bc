// One launch per presentation: a spiking FF layer runs all T input steps of a batch, learns
// after every step t >= first (modulated Hebbian delta through the eligibility trace), then
// the rest steps, with its weights, eligibility, membranes and traces held in shared memory
// the whole time. Launched by cupy_present.present (a CuPy RawModule of this file).
//
// Work split: block b owns output neurons [b * HB, (b + 1) * HB); a neuron's current, its
// weight row and its update need nothing from other neurons. The one thing that crosses
// blocks is a sample's goodness (a sum over all neurons), exchanged through global memory
// with one grid barrier per learning step. The barrier needs every block resident at once:
// the launcher starts at most one block per multiprocessor.
//
// The input spikes (0 or 1) are packed into bit words first, so that a current is a sum over
// the inputs that fired, in ascending input order. Arithmetic uses the same rounded
// intrinsics as ff_neuron.cu (no FMA); the neuron update is ff_neuron.cu's. The sums (currents,
// goodness, delta) run in a different order from cuBLAS, so the torch path agrees to float
// rounding, not bit for bit (tests/library/test_present_kernel.py).
//
// blockDim may be anything down to 1 (the host emulation runs one thread per block).

#include "ff_neuron.cu"

#ifndef SJFF_HOST_EMULATION
#define SJFF_THREADFENCE() __threadfence()
#define SJFF_ATOMIC_INC(p) atomicAdd((p), 1u)
#define SJFF_ATOMIC_ZERO(p) atomicExch((p), 0u)
#define SJFF_FFS(x) __ffs(x)
#define SJFF_SPIN() ((void)0)
// loads and stores through L2, past this multiprocessor's L1 (which other blocks' writes do
// not update): the packed input and the goodness sums other blocks wrote
#define SJFF_LDCG(p) __ldcg(p)
#define SJFF_STCG(p, v) __stcg((p), (v))
#define SJFF_SHARED_FLOATS() \
    extern __shared__ float sjff_smem[];  \
    float* smem = sjff_smem
#endif

// Sense-reversing grid barrier: bar[0] counts arrivals, bar[1] is the generation. bar[0] is
// back to 0 after every barrier, so the buffer serves the next launch as it is.
__device__ __forceinline__ void sjff_grid_sync(unsigned int* bar, const unsigned int nblocks) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* gen = bar + 1;
        const unsigned int g = *gen;
        SJFF_THREADFENCE();  // this block's global writes are visible before it arrives
        if (SJFF_ATOMIC_INC(bar) == nblocks - 1) {
            SJFF_ATOMIC_ZERO(bar);
            SJFF_THREADFENCE();
            SJFF_ATOMIC_INC(bar + 1);
        } else {
            while (*gen == g) SJFF_SPIN();
        }
        SJFF_THREADFENCE();
    }
    __syncthreads();
}

struct LearnArgs {
    int prob_kind;   // 0 sigmoid, 1 symmetric, 2 polar (probability.py)
    float alpha;
    float theta;
    float eps;
    float clip;      // 0: no clamp
    int half;        // neurons in the positive half (H when the probability is not split)
    int mean;        // goodness mean_squares: divide by the half's width
    float gain_n;    // (float)(gain / N), as hebbian_delta scales the summed product
    int has_e;       // eligibility trace in use
    float keep;      // (float)(1 - tau)
    float tau;
    float eta;
    float e_floor;   // eligibility entries below it become 0 (hebbian.ELIGIBILITY_FLOOR)
};

// expf's library code has FMAs of its own (its rounding is expf's, as in torch's sigmoid):
// kept out of line, so that the test of the PTX can tell them from ours.
__device__ __noinline__ float sjff_exp(float z) { return expf(z); }

__device__ __forceinline__ float sjff_sigmoid(float z) {
    return SJFF_RN_DIV(1.0f, SJFF_RN_ADD(1.0f, sjff_exp(-z)));
}

// (M+, M-) of one sample from its goodness, probability.py's modulation in float32.
__device__ void sjff_modulation(float gp, float gn, float y, const LearnArgs& l, float* mp, float* mn) {
    if (l.mean) {
        gp = SJFF_RN_DIV(gp, (float)l.half);
        gn = SJFF_RN_DIV(gn, (float)l.half);
    }
    float p;
    if (l.prob_kind == 0) {
        p = sjff_sigmoid(SJFF_RN_MUL(l.alpha, SJFF_RN_SUB(gp, l.theta)));
        *mp = SJFF_RN_MUL(l.alpha, SJFF_RN_SUB(y, p));
        *mn = 0.0f;
    } else if (l.prob_kind == 1) {
        const float two_eps = SJFF_RN_MUL(2.0f, l.eps);
        const float s = SJFF_RN_ADD(SJFF_RN_ADD(gp, gn), two_eps);
        const float inv_s = SJFF_RN_DIV(1.0f, s);
        p = SJFF_RN_DIV(SJFF_RN_ADD(gp, l.eps), s);
        *mp = SJFF_RN_SUB(SJFF_RN_DIV(y, SJFF_RN_ADD(gp, l.eps)), inv_s);
        *mn = SJFF_RN_SUB(SJFF_RN_DIV(SJFF_RN_SUB(1.0f, y), SJFF_RN_ADD(gn, l.eps)), inv_s);
    } else {
        p = sjff_sigmoid(SJFF_RN_MUL(l.alpha, SJFF_RN_SUB(SJFF_RN_SUB(gp, gn), l.theta)));
        *mp = SJFF_RN_MUL(l.alpha, SJFF_RN_SUB(y, p));
        *mn = -*mp;
    }
    if (l.clip > 0.0f && !(p >= l.clip && p <= SJFF_RN_SUB(1.0f, l.clip))) {
        *mp = 0.0f;
        *mn = 0.0f;
    }
}

// The sum of values[i * stride] over the set bits i of the bit words mask[0..words), in
// ascending i: a current (the weights of the inputs that fired) or a delta (the coefficients
// of the samples whose input fired).
__device__ __forceinline__ float sjff_masked_sum(const unsigned int* mask, const int words, const float* values,
                                                 const int stride) {
    float sum = 0.0f;
    for (int q = 0; q < words; ++q) {
        unsigned int word = SJFF_LDCG(mask + q);
        while (word) {
            const int b = SJFF_FFS(word) - 1;
            word &= word - 1u;
            sum = SJFF_RN_ADD(sum, values[(q * 32 + b) * stride]);
        }
    }
    return sum;
}

// One neuron step of item (n, j) of this block from its current; writes the spike.
__device__ __forceinline__ void sjff_step(float cur, float* vs, float* trs, int k, float* spike, const NeuronArgs& a) {
    float vi = sjff_charge(vs[k], cur, a);
    const bool s = sjff_fires(vi, a);
    if (s) vi = sjff_reset(vi, a);
    vs[k] = vi;
    trs[k] = sjff_trace(trs[k], s, a);
    *spike = s ? 1.0f : 0.0f;
}

// Shared memory, in floats: weights and eligibility rows [HB, D] each; membrane, trace and
// Hebbian coefficient [N, HB] each; per-sample goodness, then modulation, [2, N]; the staged
// goodness sums of `chunk` blocks [chunk, 2, N]. A launch that does not learn (first >= T)
// touches only the weights, membranes and traces and is given room for those alone.
// cupy_present.present_shared_floats() agrees.
extern "C" __global__ void sjff_present(
    const float* __restrict__ x,       // [T, N, D] input spikes (0 or 1)
    unsigned int* __restrict__ bits,   // [T, N, WD] scratch: x packed by input, WD = ceil(D / 32)
    unsigned int* __restrict__ cols,   // [T, D, NW] scratch: x packed by sample, NW = ceil(N / 32)
    float* __restrict__ w,             // weight (h, d) at h * w_sh + d * w_sd; updated in place
    float* __restrict__ e,             // eligibility, same layout as w (unused without has_e)
    float* __restrict__ v,             // [N, H] membrane, in/out
    float* __restrict__ trace,         // [N, H] out: the trace after the last input step
    float* __restrict__ spikes,        // [T, N, H] out (holds currents before it holds spikes)
    const float* __restrict__ y,       // [N] targets (1 positive, 0 negative)
    float* __restrict__ partial,       // [2, gridDim, 2, N] scratch: per-block goodness sums
    unsigned int* __restrict__ bar,    // [2] grid barrier state
    const int T, const int N, const int D, const int H, const int HB, const long long w_sh,
    const long long w_sd, const int first, const int rest_steps, const int silent, const int chunk,
    SJFF_NEURON_PARAMS, const int prob_kind, const float alpha, const float theta, const float eps,
    const float clip, const int half, const int mean, const float gain_n, const int has_e, const float keep,
    const float tau_e, const float eta, const float e_floor) {
    SJFF_NEURON_ARGS;
    const LearnArgs l = {prob_kind, alpha, theta, eps, clip, half, mean, gain_n, has_e, keep, tau_e, eta, e_floor};
    SJFF_SHARED_FLOATS();
    const int WD = (D + 31) / 32, NW = (N + 31) / 32;
    const int tid = threadIdx.x, nt = blockDim.x, blk = blockIdx.x, nb = gridDim.x;
    const int h0 = blk * HB;
    const int hb = H - h0 < HB ? H - h0 : HB;  // neurons this block owns
    const bool learns = first < T;
    float* ws = smem;
    float* es = ws + (long long)HB * D;
    float* vs = es + (has_e ? (long long)HB * D : 0);
    float* trs = vs + N * HB;
    float* coef = trs + N * HB;
    float* mods = coef + N * HB;
    float* staged = mods + 2 * N;

    // 1. pack the input spikes, all blocks together: by input for the currents, by sample
    //    for the weight updates
    const long long by_input = (long long)T * N * WD;
    const long long by_sample = learns ? (long long)T * D * NW : 0;
    for (long long i = (long long)blk * nt + tid; i < by_input + by_sample; i += (long long)nb * nt) {
        unsigned int word = 0;
        if (i < by_input) {
            const long long row = i / WD;
            const int d0 = (int)(i % WD) * 32;
            const float* xr = x + row * D;
            for (int b = 0; b < 32 && d0 + b < D; ++b) {
                if (xr[d0 + b] != 0.0f) word |= 1u << b;
            }
            bits[i] = word;
        } else {
            const long long k = i - by_input;
            const long long td = k / NW;
            const int t = (int)(td / D), d = (int)(td % D), n0 = (int)(k % NW) * 32;
            const float* xc = x + ((long long)t * N + n0) * D + d;
            for (int b = 0; b < 32 && n0 + b < N; ++b) {
                if (xc[(long long)b * D] != 0.0f) word |= 1u << b;
            }
            cols[k] = word;
        }
    }
    // 2. this block's state into shared memory
    for (int i = tid; i < hb * D; i += nt) {
        const int j = i / D, d = i % D;
        const long long g = (long long)(h0 + j) * w_sh + (long long)d * w_sd;
        ws[i] = w[g];
        if (has_e) es[i] = e[g];
    }
    for (int i = tid; i < N * hb; i += nt) {
        const int n = i / hb, j = i % hb;
        vs[n * HB + j] = v[(long long)n * H + h0 + j];
        trs[n * HB + j] = 0.0f;
    }
    sjff_grid_sync(bar, nb);  // every packed word is written

    // 3. the steps before any update see the initial weights: all their currents at once
    //    (parked in `spikes`), then each neuron runs through those steps on its own
    const int pre = learns ? first + 1 : T;
    for (long long i = tid; i < (long long)pre * N * hb; i += nt) {
        const int t = (int)(i / (N * hb)), r = (int)(i % (N * hb)), n = r / hb, j = r % hb;
        const float cur = sjff_masked_sum(bits + ((long long)t * N + n) * WD, WD, ws + (long long)j * D, 1);
        spikes[((long long)t * N + n) * H + h0 + j] = cur;
    }
    __syncthreads();
    for (int i = tid; i < N * hb; i += nt) {
        const int n = i / hb, j = i % hb;
        for (int t = 0; t < pre; ++t) {
            float* out = spikes + ((long long)t * N + n) * H + h0 + j;
            sjff_step(*out, vs, trs, n * HB + j, out, a);
        }
    }
    __syncthreads();

    for (int t = learns ? first : T; t < T; ++t) {
        if (t > first) {  // 4. a step after an update: currents with the new weights
            for (int i = tid; i < N * hb; i += nt) {
                const int n = i / hb, j = i % hb;
                const float cur = sjff_masked_sum(bits + ((long long)t * N + n) * WD, WD, ws + (long long)j * D, 1);
                sjff_step(cur, vs, trs, n * HB + j, spikes + ((long long)t * N + n) * H + h0 + j, a);
            }
            __syncthreads();
        }
        // 5. goodness: this block's share of every sample's sums, then the grid's total
        float* part = partial + (long long)(t & 1) * nb * 2 * N;
        for (int n = tid; n < N; n += nt) {
            float gp = 0.0f, gn = 0.0f;
            for (int j = 0; j < hb; ++j) {
                const float tr = trs[n * HB + j];
                const float sq = SJFF_RN_MUL(tr, tr);
                if (h0 + j < l.half) {
                    gp = SJFF_RN_ADD(gp, sq);
                } else {
                    gn = SJFF_RN_ADD(gn, sq);
                }
            }
            SJFF_STCG(part + ((long long)blk * 2) * N + n, gp);
            SJFF_STCG(part + ((long long)blk * 2 + 1) * N + n, gn);
            mods[n] = 0.0f;
            mods[N + n] = 0.0f;
        }
        sjff_grid_sync(bar, nb);
        // every sample's sums over all blocks, in block order: `chunk` blocks' sums at a time
        // are loaded by all threads together, then each sample's thread adds them
        for (int b0 = 0; b0 < nb; b0 += chunk) {
            const int cb = nb - b0 < chunk ? nb - b0 : chunk;
            const float* src = part + (long long)b0 * 2 * N;
            for (int i = tid; i < cb * 2 * N; i += nt) staged[i] = SJFF_LDCG(src + i);
            __syncthreads();
            for (int n = tid; n < N; n += nt) {
                float gp = mods[n], gn = mods[N + n];
                for (int b = 0; b < cb; ++b) {
                    gp = SJFF_RN_ADD(gp, staged[(b * 2) * N + n]);
                    gn = SJFF_RN_ADD(gn, staged[(b * 2 + 1) * N + n]);
                }
                mods[n] = gp;
                mods[N + n] = gn;
            }
            __syncthreads();
        }
        for (int n = tid; n < N; n += nt) {
            float mp, mn;
            sjff_modulation(mods[n], mods[N + n], y[n], l, &mp, &mn);
            mods[n] = mp;
            mods[N + n] = mn;
        }
        __syncthreads();
        for (int i = tid; i < N * hb; i += nt) {
            const int n = i / hb, j = i % hb;
            const float m = h0 + j < l.half ? mods[n] : mods[N + n];
            coef[n * HB + j] = SJFF_RN_MUL(m, trs[n * HB + j]);
        }
        __syncthreads();
        // 6. delta, eligibility and weights of this block's rows: each weight's delta sums the
        //    coefficients of the samples whose input fired, in ascending sample order
        for (int i = tid; i < hb * D; i += nt) {
            const int j = i / D, d = i % D;
            float dw = sjff_masked_sum(cols + ((long long)t * D + d) * NW, NW, coef + j, HB);
            dw = SJFF_RN_MUL(dw, l.gain_n);
            if (l.has_e) {
                const float decayed = SJFF_RN_ADD(SJFF_RN_MUL(es[i], l.keep), SJFF_RN_MUL(dw, l.tau));
                const float ei = sjff_floored(decayed, l.e_floor);
                es[i] = ei;
                ws[i] = SJFF_RN_ADD(ws[i], SJFF_RN_MUL(ei, l.eta));
            } else {
                ws[i] = SJFF_RN_ADD(ws[i], SJFF_RN_MUL(dw, l.eta));
            }
        }
        __syncthreads();
    }
    // 7. rest steps (no input; where the membrane could reach the threshold it fires and resets)
    for (int i = tid; i < N * hb; i += nt) {
        const int n = i / hb, j = i % hb;
        float vi = vs[n * HB + j];
        for (int r = 0; r < rest_steps; ++r) {
            vi = sjff_charge(vi, 0.0f, a);
            if (!silent && sjff_fires(vi, a)) vi = sjff_reset(vi, a);
        }
        v[(long long)n * H + h0 + j] = vi;
        trace[(long long)n * H + h0 + j] = trs[n * HB + j];
    }
    if (learns) {
        for (int i = tid; i < hb * D; i += nt) {
            const int j = i / D, d = i % D;
            const long long g = (long long)(h0 + j) * w_sh + (long long)d * w_sd;
            w[g] = ws[i];
            if (has_e) e[g] = es[i];
        }
    }
}
