// Runs the CUDA kernels of ff_neuron.cu on the CPU, one simulated thread after another, so
// that their logic is tested on machines without a GPU (tests/test_kernels.py). The kernels
// use no shared memory and no __syncthreads, so sequential emulation is exact.
// Build: g++ -O2 -ffp-contract=off -shared -fPIC host_emulation.cpp -o libsjff_emu.so

#include <cmath>

#define SJFF_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define SJFF_RN_MUL(a, b) ((float)((float)(a) * (float)(b)))
#define SJFF_RN_ADD(a, b) ((float)((float)(a) + (float)(b)))
#define SJFF_RN_SUB(a, b) ((float)((float)(a) - (float)(b)))
#define SJFF_RN_DIV(a, b) ((float)((float)(a) / (float)(b)))
#define SJFF_NEG_INF (-INFINITY)

struct Dim3 {
    int x = 0;
};
static thread_local Dim3 blockIdx, threadIdx, blockDim;

#include "ff_neuron.cu"

extern "C" {

void emu_neuron_forward(const float* current, float* v, float* trace, float* spikes, float* trace_seq, int T, int NH,
                        NeuronArgs a) {
#define SJFF_UNPACK a.form, a.beta, a.tau, a.decay_input, a.v_threshold, a.v_reset, a.fire_ge, a.trace_kind, \
                    a.trace_decay, a.trace_one_minus_decay, a.trace_increment, a.tau_recip
    blockDim.x = 1;
    threadIdx.x = 0;
    for (int b = 0; b < NH; ++b) {
        blockIdx.x = b;
        sjff_neuron_forward(current, v, trace, spikes, trace_seq, T, NH, SJFF_UNPACK);
    }
}

void emu_neuron_forward_kwta(const float* current, float* v, float* trace, float* spikes, float* trace_seq,
                             float* scratch, int T, int N, int H, int k, NeuronArgs a) {
    blockDim.x = 1;
    threadIdx.x = 0;
    for (int b = 0; b < N; ++b) {
        blockIdx.x = b;
        sjff_neuron_forward_kwta(current, v, trace, spikes, trace_seq, scratch, T, N, H, k, SJFF_UNPACK);
    }
}

void emu_eligibility_apply(float* e, float* w, const float* dw, long long n, float keep, float tau, float eta) {
    blockDim.x = 1;
    threadIdx.x = 0;
    for (long long b = 0; b < n; ++b) {
        blockIdx.x = (int)b;
        sjff_eligibility_apply(e, w, dw, n, keep, tau, eta);
    }
}
}
