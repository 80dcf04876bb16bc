// Runs the CUDA kernels of ff_neuron.cu and ff_present.cu on the CPU, so that their logic is
// tested on machines without a GPU (tests/library/test_kernels.py, test_present_kernel.py).
// The per-thread kernels of ff_neuron.cu use no shared memory and no __syncthreads: their
// simulated threads run one after another. The presentation kernel runs every simulated
// thread of every block on its own std::thread (its grid barrier needs all blocks running at
// once; __syncthreads is a std::barrier per block).
// Build: g++ -std=c++20 -O2 -ffp-contract=off -shared -fPIC -pthread host_emulation.cpp -o libsjff_emu.so

#include <atomic>
#include <barrier>
#include <memory>
#include <cmath>
#include <thread>
#include <vector>

#define SJFF_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
#define SJFF_RN_MUL(a, b) ((float)((float)(a) * (float)(b)))
#define SJFF_RN_ADD(a, b) ((float)((float)(a) + (float)(b)))
#define SJFF_RN_SUB(a, b) ((float)((float)(a) - (float)(b)))
#define SJFF_RN_DIV(a, b) ((float)((float)(a) / (float)(b)))
#define SJFF_NEG_INF (-INFINITY)
#define SJFF_THREADFENCE() std::atomic_thread_fence(std::memory_order_seq_cst)
#define SJFF_ATOMIC_INC(p) __atomic_fetch_add((p), 1u, __ATOMIC_SEQ_CST)
#define SJFF_ATOMIC_ZERO(p) __atomic_exchange_n((p), 0u, __ATOMIC_SEQ_CST)
#define SJFF_FFS(x) __builtin_ffs((int)(x))
#define SJFF_SPIN() std::this_thread::yield()
#define SJFF_LDCG(p) (*(p))
#define SJFF_STCG(p, v) (*(p) = (v))
static thread_local float* sjff_emu_smem = nullptr;
#define SJFF_SHARED_FLOATS() float* smem = sjff_emu_smem
static thread_local std::barrier<>* sjff_block_barrier = nullptr;  // null: one thread per block
#define __syncthreads() (sjff_block_barrier ? sjff_block_barrier->arrive_and_wait() : (void)0)

struct Dim3 {
    int x = 0;
};
static thread_local Dim3 blockIdx, threadIdx, blockDim, gridDim;

#include "ff_present.cu"

extern "C" {

void emu_neuron_forward(const float* current, float* v, float* trace, float* spikes, float* trace_seq, int T, int NH,
                        NeuronArgs a) {
#define SJFF_UNPACK a.form, a.beta, a.tau, a.decay_input, a.v_threshold, a.v_reset, a.fire_ge, a.trace_kind, \
                    a.trace_decay, a.trace_one_minus_decay, a.trace_increment, a.tau_recip, a.soft_reset
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

void emu_eligibility_apply(float* e, float* w, const float* dw, long long n, float keep, float tau, float eta,
                           float e_floor) {
    blockDim.x = 1;
    threadIdx.x = 0;
    for (long long b = 0; b < n; ++b) {
        blockIdx.x = (int)b;
        sjff_eligibility_apply(e, w, dw, n, keep, tau, eta, e_floor);
    }
}

// ``nb`` blocks of ``threads`` threads each, ``smem_floats`` floats of shared memory per block.
// Each block's shared memory is followed by as many guard floats again (at least 1024):
// returns how many of them the kernel changed (0: it stayed within the room it was given).
int emu_present(const float* x, unsigned int* bits, unsigned int* cols, float* w, float* e, float* v, float* trace,
                 float* spikes, const float* y, float* partial, unsigned int* bar, int nb, int threads,
                 long long smem_floats, int T, int N, int D, int H, int HB, long long w_sh, long long w_sd, int first,
                 int rest_steps, int silent, int chunk, NeuronArgs a, LearnArgs l) {
    const float sentinel = -1234.5f;
    const long long guard = smem_floats > 1024 ? smem_floats : 1024;
    std::vector<std::vector<float>> shared(nb, std::vector<float>((size_t)(smem_floats + guard), sentinel));
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    for (int b = 0; b < nb; ++b) barriers.emplace_back(new std::barrier<>(threads));
    std::vector<std::thread> pool;
    for (int b = 0; b < nb; ++b) {
        for (int th = 0; th < threads; ++th) {
            std::barrier<>* block_barrier = threads > 1 ? barriers[b].get() : nullptr;
            float* smem = shared[b].data();
            pool.emplace_back([=]() {
                sjff_emu_smem = smem;
                sjff_block_barrier = block_barrier;
                blockIdx.x = b;
                gridDim.x = nb;
                blockDim.x = threads;
                threadIdx.x = th;
                sjff_present(x, bits, cols, w, e, v, trace, spikes, y, partial, bar, T, N, D, H, HB, w_sh, w_sd,
                             first, rest_steps, silent, chunk, SJFF_UNPACK, l.prob_kind, l.alpha, l.theta, l.eps,
                             l.clip, l.half, l.mean, l.gain_n, l.has_e, l.keep, l.tau, l.eta, l.e_floor);
            });
        }
    }
    for (auto& t : pool) t.join();
    int touched = 0;
    for (const auto& block : shared) {
        for (long long i = 0; i < guard; ++i) touched += block[(size_t)(smem_floats + i)] != sentinel;
    }
    return touched;
}
}
