// The body of one CUDA block of a multi-tensor launch, written once for the GPU and for the
// host simulation that the CPU test suite runs (csrc/cuda/sim.cpp).
//
// Note [one block body, two executors]
// A block's work is written as phases over "threads": `ex.each(fn)` runs fn(tid) for this
// thread (GPU) or for every tid of the block in turn (host), and `ex.sync()` is __syncthreads()
// (GPU) or nothing (host, where each phase finishes before the next starts). Whatever a thread
// hands to a later phase goes through the block's shared memory (`ex` holds it), never through
// a local variable, so both executors compute the same thing in the same order. The simulation
// thus runs the real indexing (64-bit chunk offsets, vector and scalar paths, chunk tails,
// block-to-slot lookup, tree reductions, the last-block finish of per-tensor reductions) on
// every block and thread of a planned launch, on every CI run, without a GPU.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "fusedopt/math.h"
#include "kernel_table.h"

// Loops over the arrays of a parameter: unrolled so that the masks (F::kRead, F::kWrite) fold.
#if defined(__CUDACC__)
#define FUSEDOPT_UNROLL _Pragma("unroll")
#else
#define FUSEDOPT_UNROLL
#endif

namespace fusedopt::cuda {

// Note [step counters on the device]
// A parameter's bias corrections need its step count after this step's increment, in every
// block of the tensor. Blocks run in no particular order, so no block may write the counter
// while others still read it: each block reads the stored count and adds one for itself, and a
// separate tiny launch after the update (increment_steps_block) stores the increments, unless
// found_inf is set. The counter is updated in its own dtype as the CPU kernels do (a float32
// count adds 1.0f), so both backends see the same step values.
C10_HOST_DEVICE inline double next_step(const void* step, uint8_t flags) {
  if (flags & kStepDouble) return *static_cast<const double*>(step) + 1.0;
  return static_cast<double>(*static_cast<const float*>(step) + 1.0f);
}

// What a functor's prologue sees of its parameter.
struct SlotInfo {
  const void* step;
  int32_t index;
  uint8_t flags;
};

// Shims for the few operations that differ between the GPU and the simulation.
C10_HOST_DEVICE inline void fence() {
#ifdef __CUDA_ARCH__
  __threadfence();
#endif
}

C10_HOST_DEVICE inline unsigned long long fetch_add(unsigned long long* p) {
#ifdef __CUDA_ARCH__
  return atomicAdd(p, 1ull);
#else
  return (*p)++;
#endif
}

// A load that bypasses the (non-coherent) L1: partials written by other blocks.
C10_HOST_DEVICE inline double load_coherent(const double* p) {
#ifdef __CUDA_ARCH__
  return __ldcg(p);
#else
  return *p;
#endif
}

template <typename T, int N>
struct alignas(kVectorBytes) Pack {
  T v[N];
};

// Functor interface (csrc/cuda/functors.h):
//   scalar_t, opmath_t     storage and math types
//   kDepth                 arrays per parameter, in the order of the op's lists
//   kRead, kWrite          bit masks of the arrays loaded and stored
//   kReduce                doubles each element adds to the block's sums (0: none)
//   kFinish                the last block of each tensor calls finish(index, sums)
//   State                  per-block constants (a POD, held in shared memory)
//   skip()                 found_inf is set: the block changes nothing
//   prologue(SlotInfo)     the State of a block (reads lr, the step counter, ...)
//   apply(x, state, acc)   one element: x[kDepth] in opmath, acc[kReduce]
//   partials()             (kReduce) where block sums go: [global block][kReduce]
//   counters(), finish()   (kFinish) per-tensor arrival counters, and the per-tensor result
template <class F>
C10_HOST_DEVICE FUSEDOPT_INLINE void apply_scalar(const F& f, const typename F::State& s,
                                                  typename F::scalar_t* const* ptr, int i,
                                                  double* acc) {
  using opmath_t = typename F::opmath_t;
  using scalar_t = typename F::scalar_t;
  opmath_t x[F::kDepth];
  FUSEDOPT_UNROLL
  for (int d = 0; d < F::kDepth; ++d) {
    x[d] = ((F::kRead >> d) & 1u) ? static_cast<opmath_t>(ptr[d][i]) : opmath_t(0);
  }
  f.apply(x, s, acc);
  FUSEDOPT_UNROLL
  for (int d = 0; d < F::kDepth; ++d) {
    if ((F::kWrite >> d) & 1u) ptr[d][i] = static_cast<scalar_t>(x[d]);
  }
}

// One thread's share of a chunk of n elements. Vector path: thread tid takes 16-byte packs
// tid, tid + nthreads, ... (consecutive threads, consecutive packs: coalesced); the elements
// after the last whole pack, and every element of a misaligned parameter, take the scalar loop.
template <class F>
C10_HOST_DEVICE FUSEDOPT_INLINE void thread_chunk(const F& f, const typename F::State& s,
                                                  typename F::scalar_t* const* ptr, int n,
                                                  bool vector_ok, int tid, int nthreads,
                                                  double* acc) {
  using opmath_t = typename F::opmath_t;
  using scalar_t = typename F::scalar_t;
  constexpr int V = kVectorBytes / sizeof(scalar_t);
  using P = Pack<scalar_t, V>;
  int tail = 0;
  if (vector_ok) {
    const int packs = n / V;
    for (int k = tid; k < packs; k += nthreads) {
      P r[F::kDepth];
      FUSEDOPT_UNROLL
      for (int d = 0; d < F::kDepth; ++d) {
        if ((F::kRead >> d) & 1u) r[d] = reinterpret_cast<const P*>(ptr[d])[k];
      }
      FUSEDOPT_UNROLL
      for (int j = 0; j < V; ++j) {
        opmath_t x[F::kDepth];
        FUSEDOPT_UNROLL
        for (int d = 0; d < F::kDepth; ++d) {
          x[d] = ((F::kRead >> d) & 1u) ? static_cast<opmath_t>(r[d].v[j]) : opmath_t(0);
        }
        f.apply(x, s, acc);
        FUSEDOPT_UNROLL
        for (int d = 0; d < F::kDepth; ++d) {
          if ((F::kWrite >> d) & 1u) r[d].v[j] = static_cast<scalar_t>(x[d]);
        }
      }
      FUSEDOPT_UNROLL
      for (int d = 0; d < F::kDepth; ++d) {
        if ((F::kWrite >> d) & 1u) reinterpret_cast<P*>(ptr[d])[k] = r[d];
      }
    }
    tail = packs * V;
  }
  for (int i = tail + tid; i < n; i += nthreads) apply_scalar(f, s, ptr, i, acc);
}

// Block-wide sum of red[w][0, nthreads) into red[w][0]: a fixed tree, so the bits do not
// depend on timing (nthreads is a power of two).
template <int W, class Exec>
C10_HOST_DEVICE FUSEDOPT_INLINE void tree_sum(Exec& ex, double* red) {
  const int nt = ex.nthreads;
  for (int half = nt / 2; half > 0; half /= 2) {
    ex.each([&](int tid) {
      if (tid < half) {
        for (int w = 0; w < W; ++w) red[w * nt + tid] += red[w * nt + tid + half];
      }
    });
    ex.sync();
  }
}

// Note [multi-tensor reductions]
// Each thread sums its elements in fp64; the block's sums (tree_sum) go to
// partials[global block][w]. The blocks of a tensor have consecutive global numbers
// (Note [launch plans]), so its partials are one contiguous run:
//  - per-tensor results (LAMB's norms): every block counts itself in counters[tensor] after
//    writing its partials (__threadfence, atomicAdd); the block that arrives last sums the
//    tensor's run in a fixed order and calls finish(), then resets the counter for the next
//    step (or a CUDA graph's next replay). No host sync, no extra launch, same bits every run.
//  - whole-op results (sum_sq): one final block sums every partial in order (sum_partials).
template <class F>
struct BlockShared {
  typename F::State* state;
  double* red;  // [max(kReduce, 1)][nthreads]
  int* flag;
};

template <class F, class Table, class Exec>
C10_HOST_DEVICE FUSEDOPT_INLINE void run_block(const Table& t, const F& f, int block, Exec& ex,
                                               const BlockShared<F>& sh) {
  using scalar_t = typename F::scalar_t;
  constexpr int W = F::kReduce > 0 ? F::kReduce : 1;
  const BlockWork w = locate(t, block);
  ex.each([&](int tid) {
    if (tid == 0) {
      *sh.flag = f.skip();
      if (!*sh.flag)
        *sh.state = f.prologue(SlotInfo{t.step[w.slot], t.index[w.slot], t.flags[w.slot]});
    }
  });
  ex.sync();
  if (*sh.flag) return;  // found_inf: uniform across the block
  scalar_t* ptr[F::kDepth];
  FUSEDOPT_UNROLL
  for (int d = 0; d < F::kDepth; ++d) ptr[d] = static_cast<scalar_t*>(t.ptr[d][w.slot]) + w.offset;
  const bool vector_ok = t.flags[w.slot] & kVectorOk;
  const int nt = ex.nthreads;
  ex.each([&](int tid) {
    double acc[W] = {};
    thread_chunk(f, *sh.state, ptr, w.n, vector_ok, tid, nt, acc);
    if constexpr (F::kReduce > 0) {
      for (int k = 0; k < W; ++k) sh.red[k * nt + tid] = acc[k];
    }
  });
  if constexpr (F::kReduce > 0) {
    ex.sync();
    tree_sum<W>(ex, sh.red);
    const int64_t global = t.first_block + block;
    ex.each([&](int tid) {
      if (tid == 0) {
        for (int k = 0; k < W; ++k) f.partials()[global * W + k] = sh.red[k * nt];
      }
    });
    if constexpr (F::kFinish) {
      const int32_t index = t.index[w.slot];
      const int64_t chunks = num_chunks(t.numel[w.slot], t.chunk_size);
      ex.each([&](int tid) {
        if (tid == 0) {
          fence();  // this block's partials are visible before it is counted
          const unsigned long long before = fetch_add(&f.counters()[index]);
          *sh.flag = static_cast<int64_t>(before) + 1 == chunks;
          fence();
        }
      });
      ex.sync();
      if (!*sh.flag) return;
      const int64_t base = global - w.chunk;  // the tensor's chunk 0
      ex.each([&](int tid) {
        double sum[W] = {};
        for (int64_t c = tid; c < chunks; c += nt) {
          for (int k = 0; k < W; ++k) sum[k] += load_coherent(&f.partials()[(base + c) * W + k]);
        }
        for (int k = 0; k < W; ++k) sh.red[k * nt + tid] = sum[k];
      });
      ex.sync();
      tree_sum<W>(ex, sh.red);
      ex.each([&](int tid) {
        if (tid == 0) {
          double sums[W];
          for (int k = 0; k < W; ++k) sums[k] = sh.red[k * nt];
          f.finish(index, sums);
          f.counters()[index] = 0;
        }
      });
    }
  }
}

// The final reduction of a whole-op sum: out[0] = sum of partials[0, n) in a fixed order.
template <class Exec>
C10_HOST_DEVICE FUSEDOPT_INLINE void sum_partials_block(const double* partials, int64_t n,
                                                        double* out, Exec& ex, double* red) {
  const int nt = ex.nthreads;
  ex.each([&](int tid) {
    double s = 0.0;
    for (int64_t i = tid; i < n; i += nt) s += partials[i];
    red[tid] = s;
  });
  ex.sync();
  tree_sum<1>(ex, red);
  ex.each([&](int tid) {
    if (tid == 0) out[0] = red[0];
  });
}

// Stores the step increments of an op (Note [step counters on the device]).
template <class Steps, class Exec>
C10_HOST_DEVICE FUSEDOPT_INLINE void increment_steps_block(const Steps& t,
                                                           const ScalarArg& found_inf, Exec& ex) {
  if (found_inf.get() != 0.0) return;
  ex.each([&](int tid) {
    for (int i = tid; i < t.n; i += ex.nthreads) {
      if (t.is_double[i]) {
        *static_cast<double*>(t.ptr[i]) += 1.0;
      } else {
        *static_cast<float*>(t.ptr[i]) += 1.0f;
      }
    }
  });
}

}  // namespace fusedopt::cuda
