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

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

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

// The count as stored: LAMB's phase 2, whose phase 1 stored this step's increment.
C10_HOST_DEVICE inline double stored_step(const void* step, uint8_t flags) {
  if (flags & kStepDouble) return *static_cast<const double*>(step);
  return static_cast<double>(*static_cast<const float*>(step));
}

// What a functor's prologue sees of its parameter.
struct SlotInfo {
  const void* step;
  int32_t index;
  uint8_t flags;
  const void* seed;  // the param's stochastic-rounding seed (int64), or nullptr
};

// The noise key of a param's stochastic rounding this step: from its seed as advanced by this
// step, which increment_steps_block stores after the update (as the step counters).
C10_HOST_DEVICE inline uint32_t next_sr_key(const void* seed) {
  return sr_key(static_cast<uint64_t>(*static_cast<const int64_t*>(seed)) + 1u);
}

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

// The element types of a functor's arrays, in the order of the op's lists; they may differ
// (Note [mixed precision on the GPU] in functors.h).
template <class... T>
struct ArrayTypes {
  static constexpr int size = sizeof...(T);
  template <int D>
  using at = std::tuple_element_t<D, std::tuple<T...>>;
  static constexpr int min_bytes = std::min({static_cast<int>(sizeof(T))...});
};

// fn(std::integral_constant<int, d>) for d = 0, ..., N-1: loops over arrays of different types.
template <class Fn, int... D>
C10_HOST_DEVICE FUSEDOPT_INLINE void static_for_impl(Fn& fn, std::integer_sequence<int, D...>) {
  (fn(std::integral_constant<int, D>{}), ...);
}

template <int N, class Fn>
C10_HOST_DEVICE FUSEDOPT_INLINE void static_for(Fn&& fn) {
  static_for_impl(fn, std::make_integer_sequence<int, N>{});
}

// Functor interface (csrc/cuda/functors.h):
//   opmath_t               the math type
//   Arrays                 ArrayTypes of the arrays of a parameter, in the order of the op's lists
//   kArrays                Arrays::size
//   kDepth                 pointers per slot: the arrays, then the seed if kSeeded
//   kSeeded                the slot's last pointer is the param's stochastic-rounding seed
//   kSrArray               the array stored with stochastic rounding (State::key), or -1
//   kRead, kWrite          bit masks of the arrays loaded and stored
//   kReduce                doubles each element adds to the block's sums (0: none)
//   kFinish                the last block of each tensor calls finish(index, sums)
//   State                  per-block constants (a POD, held in shared memory)
//   skip()                 found_inf is set: the block changes nothing
//   prologue(SlotInfo)     the State of a block (reads lr, the step counter, the seed, ...)
//   apply(x, state, acc)   one element: x[kArrays] in opmath, acc[kReduce]
//   partials()             (kReduce) where block sums go: [global block][kReduce]
//   counters(), finish()   (kFinish) per-tensor arrival counters, and the per-tensor result
template <class F, int D>
using array_t = typename F::Arrays::template at<D>;

// The stored value of array D: rounded to nearest, or stochastically for the param of an op
// with sr_seeds (j: the element's index in its tensor, the noise counter).
template <class F, int D>
C10_HOST_DEVICE FUSEDOPT_INLINE array_t<F, D> to_storage(typename F::opmath_t x,
                                                         const typename F::State& s, int64_t j) {
  if constexpr (D == F::kSrArray) {
    static_assert(std::is_same_v<array_t<F, D>, c10::BFloat16>, "stochastic rounding is to bf16");
    const uint32_t noise = sr_noise(s.key, static_cast<uint64_t>(j));
    return c10::BFloat16(sr_bf16_bits(static_cast<float>(x), noise), c10::BFloat16::from_bits());
  } else {
    return static_cast<array_t<F, D>>(x);
  }
}

// Element i of a chunk whose element 0 is element j0 of its tensor.
template <class F>
C10_HOST_DEVICE FUSEDOPT_INLINE void apply_scalar(const F& f, const typename F::State& s,
                                                  void* const* ptr, int i, int64_t j0,
                                                  double* acc) {
  using opmath_t = typename F::opmath_t;
  opmath_t x[F::kArrays];
  static_for<F::kArrays>([&](auto dc) {
    constexpr int d = decltype(dc)::value;
    using T = array_t<F, d>;
    if constexpr ((F::kRead >> d) & 1u) {
      x[d] = static_cast<opmath_t>(static_cast<const T*>(ptr[d])[i]);
    } else {
      x[d] = opmath_t(0);
    }
  });
  f.apply(x, s, acc);
  static_for<F::kArrays>([&](auto dc) {
    constexpr int d = decltype(dc)::value;
    if constexpr ((F::kWrite >> d) & 1u) {
      static_cast<array_t<F, d>*>(ptr[d])[i] = to_storage<F, d>(x[d], s, j0 + i);
    }
  });
}

// One thread's share of a chunk of n elements, element 0 being element j0 of its tensor.
// Vector path: V elements per step, V = 16 bytes of the narrowest array (so each array moves
// whole 16-byte vectors: one for the narrowest, two for an fp32 array beside bf16 ones); thread
// tid takes steps tid, tid + nthreads, ... (consecutive threads, consecutive vectors:
// coalesced); the elements after the last whole step, and every element of a misaligned
// parameter, take the scalar loop.
template <class F>
C10_HOST_DEVICE FUSEDOPT_INLINE void thread_chunk(const F& f, const typename F::State& s,
                                                  void* const* ptr, int n, int64_t j0,
                                                  bool vector_ok, int tid, int nthreads,
                                                  double* acc) {
  using opmath_t = typename F::opmath_t;
  constexpr int A = F::kArrays;
  constexpr int V = kVectorBytes / F::Arrays::min_bytes;
  int tail = 0;
  if (vector_ok) {
    const int packs = n / V;
    for (int k = tid; k < packs; k += nthreads) {
      opmath_t x[V][A];
      static_for<A>([&](auto dc) {
        constexpr int d = decltype(dc)::value;
        using P = Pack<array_t<F, d>, V>;
        if constexpr ((F::kRead >> d) & 1u) {
          const P r = static_cast<const P*>(ptr[d])[k];
          FUSEDOPT_UNROLL
          for (int j = 0; j < V; ++j) x[j][d] = static_cast<opmath_t>(r.v[j]);
        } else {
          FUSEDOPT_UNROLL
          for (int j = 0; j < V; ++j) x[j][d] = opmath_t(0);
        }
      });
      FUSEDOPT_UNROLL
      for (int j = 0; j < V; ++j) f.apply(x[j], s, acc);
      static_for<A>([&](auto dc) {
        constexpr int d = decltype(dc)::value;
        using P = Pack<array_t<F, d>, V>;
        if constexpr ((F::kWrite >> d) & 1u) {
          P r;
          FUSEDOPT_UNROLL
          for (int j = 0; j < V; ++j) {
            r.v[j] = to_storage<F, d>(x[j][d], s, j0 + static_cast<int64_t>(k) * V + j);
          }
          static_cast<P*>(ptr[d])[k] = r;
        }
      });
    }
    tail = packs * V;
  }
  for (int i = tail + tid; i < n; i += nthreads) apply_scalar(f, s, ptr, i, j0, acc);
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
  static_assert(F::kDepth == F::kArrays + (F::kSeeded ? 1 : 0) && F::kDepth <= kMaxDepth);
  constexpr int W = F::kReduce > 0 ? F::kReduce : 1;
  const BlockWork w = locate(t, block);
  ex.each([&](int tid) {
    if (tid == 0) {
      *sh.flag = f.skip();
      if (!*sh.flag) {
        const void* seed = nullptr;
        if constexpr (F::kSeeded) seed = t.ptr[F::kArrays][w.slot];
        *sh.state = f.prologue(SlotInfo{t.step[w.slot], t.index[w.slot], t.flags[w.slot], seed});
      }
    }
  });
  ex.sync();
  if (*sh.flag) return;  // found_inf: uniform across the block
  void* ptr[F::kArrays];
  static_for<F::kArrays>([&](auto dc) {
    constexpr int d = decltype(dc)::value;
    ptr[d] = static_cast<array_t<F, d>*>(t.ptr[d][w.slot]) + w.offset;
  });
  const bool vector_ok = t.flags[w.slot] & kVectorOk;
  const int nt = ex.nthreads;
  ex.each([&](int tid) {
    double acc[W] = {};
    thread_chunk(f, *sh.state, ptr, w.n, w.offset, vector_ok, tid, nt, acc);
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

// Stores the step increments of an op, and advances its stochastic-rounding seeds (Note [step
// counters on the device]); neither when found_inf is set.
template <class Steps, class Exec>
C10_HOST_DEVICE FUSEDOPT_INLINE void increment_steps_block(const Steps& t,
                                                           const ScalarArg& found_inf, Exec& ex) {
  if (found_inf.get() != 0.0) return;
  ex.each([&](int tid) {
    for (int i = tid; i < t.n; i += ex.nthreads) {
      if (t.kind[i] == kCounterDouble) {
        *static_cast<double*>(t.ptr[i]) += 1.0;
      } else if (t.kind[i] == kCounterInt64) {  // wraps as the CPU's uint64 + 1 does
        int64_t* s = static_cast<int64_t*>(t.ptr[i]);
        *s = static_cast<int64_t>(static_cast<uint64_t>(*s) + 1u);
      } else {
        *static_cast<float*>(t.ptr[i]) += 1.0f;
      }
    }
  });
}

}  // namespace fusedopt::cuda
