// The kernels of the 8-bit ops (OpKernels<ops::adam8bit_>, <ops::lion8bit_>, <ops::sgd8bit_>):
// one block body per chunk of whole quantization blocks, written once for the GPU and the host
// simulation (Note [one block body, two executors] in block.h). Host glue: glue.h (Q8HostOp).
//
// Note [8-bit CUDA kernel]
// The rule is Note [8-bit states] in fusedopt/reference/quant.py. The params are planned as
// the other ops' (Note [launch plans]), in chunks of kQ8Chunk elements (fewer in a simulation
// planned with short chunks), each a whole number of 256-element quantization blocks, since
// chunk offsets are multiples of the chunk size: a CUDA block owns its quantization blocks
// alone, and the absmax of block q of a param is at index offset / 256 + q. A slot carries the
// param, the grad, the codes and absmax of each moment and the fp32 master or the seed (7
// pointers); the params, grads and masters are contiguous (Q8HostOp stages any other layout),
// so element i of a chunk is row-major element offset + i of its param, as the blocks are.
// Four phases over the block's threads, the values between them in shared memory:
//   1 the maps into shared memory and their 255 midpoints (fp32 (map[k] + map[k+1]) * 0.5, +inf
//     padded to 256), the per-block constants (thread 0, from the step counter and lr as every
//     op reads them on the device: Note [scalars on the device]);
//   2 per element (thread tid: elements tid, tid + nthreads, ...): decode each moment as
//     map[code] * absmax, load theta, one call of the op's fusedopt/math.h element function
//     (the CPU's and the reference's arithmetic in its order; built with --fmad=false, so no
//     contraction), store the param (rounded, with its master, or stochastically with the
//     element's index in the param as the noise counter), keep the new moments in shared
//     memory and take the max of their |x| bits into the block's word (atomicMax);
//   3 per quantization block: absmax = that max as a float, written out, and the reciprocal
//     1 / absmax (1 for a zero block) by one IEEE division (__fdiv_rn);
//   4 per element: the code is the number of midpoints below x * r (__fmul_rn), found by the
//     reference's eight halvings over the shared midpoints.
// Why the bits are the reference's: every value is an fp32 operation of the same operands in
// the same order, each exactly rounded (no contraction, no fast-math division, no flush to
// zero); the absmax is a max, which does not depend on the order the threads reach it in, and
// |x| compares as its bits do, NaN above +inf, so a block holding a NaN has a NaN absmax (as
// torch.amax: its payload may differ), whose reciprocal makes every x NaN and every code 0; an
// infinite absmax gives r = 0 and codes of 0 (finite values) or NaN (the infinities): code 0;
// the search compares the same fp32 keys with the same strict "<", ties (x on a midpoint) and
// NaN included. The update is the element function the CPU kernels call (adam8bit_'s params
// are its bits; Lion's and SGD's are the reference's, whose 8-bit path rounds after every
// operation as these functions do), with the scalars from make_*_scalars in double as on the
// CPU. Tested through the simulation on every run (tests/test_cuda_q8.py) and on a GPU by
// tests/test_cuda.py (not yet run there).
//
// Per element and step (fp32 params, Adam): read p, g and two codes, write p and two codes:
// 16 B, plus each block's absmax (8 B per 256 elements) and the maps (2 KB per chunk, from
// L2). Not yet measured on a GPU.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "../common/mixed.h"
#include "../common/q8.h"
#include "block.h"
#include "functors.h"  // UpdateScalars, with_flag (functors.h includes this header last)
#include "fusedopt/math.h"
#include "fusedopt/ops_generated.h"
#include "jobs.h"
#include "kernel_table.h"

namespace fusedopt::cuda {

constexpr int64_t kQ8Chunk = 2048;  // elements per CUDA block: 8 quantization blocks
constexpr int kQ8BlocksPerChunk = static_cast<int>(kQ8Chunk / kQ8Block);
constexpr int kQ8Depth = 7;

// The pointers of a slot: the moments' codes at kQ8Codes + k, their absmax at kQ8Absmax + k.
enum Q8Array : int { kQ8Param, kQ8Grad, kQ8Codes, kQ8Absmax = 4, kQ8Extra = 6 };

// The op's mode flags (Q8Params::flags).
enum Q8Flag : int32_t { kQ8Maximize = 1, kQ8Decoupled = 2, kQ8Nesterov = 4, kQ8First = 8 };

// The chunk the host plans for a configured chunk size: whole blocks, at most kQ8Chunk.
inline int64_t q8_chunk(int64_t configured) {
  const int64_t whole = configured / kQ8Block * kQ8Block;
  return whole < kQ8Block ? kQ8Block : (whole > kQ8Chunk ? kQ8Chunk : whole);
}

// The kernels' arguments besides the table: the scalars, the hyperparameters in the op's schema
// order (adam8bit_: beta1, beta2, weight_decay, eps; lion8bit_: beta1, beta2, weight_decay;
// sgd8bit_: momentum, dampening, weight_decay), its flags and the maps on the device.
struct Q8Params : UpdateScalars {
  double hp[4];
  int32_t flags;
  const float* qmaps;  // (2, 256): the signed map, then the unsigned one
};
static_assert(sizeof(Q8Params) <= kFunctorArgBytes, "Q8Params exceed the functor reserve");

// The float of bits u (float_bits' inverse).
C10_HOST_DEVICE FUSEDOPT_INLINE float q8_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return c10::bit_cast<float>(u);
#endif
}

// 1 / absmax, 1 for a zero block; exactly rounded.
C10_HOST_DEVICE FUSEDOPT_INLINE float q8_reciprocal(float mx) {
  const float d = mx == 0.f ? 1.f : mx;
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(1.f, d);
#else
  return 1.f / d;
#endif
}

C10_HOST_DEVICE FUSEDOPT_INLINE float q8_normalized(float x, float r) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(x, r);
#else
  return x * r;
#endif
}

// The number of the 256 sorted keys `mid` below x: the reference's branch-free search.
C10_HOST_DEVICE FUSEDOPT_INLINE uint8_t q8_code(const float* mid, float x) {
  int k = 0;
  for (int step = 128; step > 0; step /= 2) k += mid[k + step - 1] < x ? step : 0;
  return static_cast<uint8_t>(k);
}

// The block's max of |x| as bits (the word starts at 0).
C10_HOST_DEVICE FUSEDOPT_INLINE void q8_max_bits(uint32_t* word, float x) {
  const uint32_t u = float_bits(x) & 0x7FFFFFFFu;
#if defined(__CUDA_ARCH__)
  atomicMax(word, u);
#else
  if (u > *word) *word = u;
#endif
}

// ---- the ops' math: kMoments, kSteps (its scalars use the step count), Scalars, scalars(),
// apply(theta, g, moments, scalars, flags) ------------------------------------------------------
struct Q8AdamMath {
  static constexpr int kMoments = 2;
  static constexpr bool kSteps = true;
  using Scalars = AdamScalars<float>;
  C10_HOST_DEVICE static Scalars scalars(const Q8Params& p, double step) {
    return make_adam_scalars<float>(p.lr.get(), p.lr.lr_dtype(), p.hp[0], p.hp[1], p.hp[3], p.hp[2],
                                    step, 1.0 / p.grad_scale.get());
  }
  C10_HOST_DEVICE FUSEDOPT_INLINE static void apply(float& theta, float g, float* m,
                                                    const Scalars& s, int32_t flags) {
    with_flag<kDyn>(flags & kQ8Decoupled, [&](auto dec) {
      with_flag<kDyn>(flags & kQ8Maximize, [&](auto max) {
        float unused = 0.f;
        adam_element<decltype(dec)::value, false, decltype(max)::value>(theta, g, m[0], m[1],
                                                                        unused, s);
      });
    });
  }
};

struct Q8LionMath {
  static constexpr int kMoments = 1;
  static constexpr bool kSteps = false;
  using Scalars = LionScalars<float>;
  C10_HOST_DEVICE static Scalars scalars(const Q8Params& p, double) {
    return make_lion_scalars<float>(p.lr.get(), p.lr.lr_dtype(), p.hp[0], p.hp[1], p.hp[2],
                                    1.0 / p.grad_scale.get());
  }
  C10_HOST_DEVICE FUSEDOPT_INLINE static void apply(float& theta, float g, float* m,
                                                    const Scalars& s, int32_t flags) {
    with_flag<kDyn>(flags & kQ8Maximize,
                    [&](auto max) { lion_element<decltype(max)::value>(theta, g, m[0], s); });
  }
};

// sgd8bit_ always keeps a buffer; on the first step it becomes the (decayed) grad.
struct Q8SgdMath {
  static constexpr int kMoments = 1;
  static constexpr bool kSteps = false;
  using Scalars = SgdScalars<float>;
  C10_HOST_DEVICE static Scalars scalars(const Q8Params& p, double) {
    return make_sgd_scalars<float>(p.lr.get(), p.hp[0], p.hp[1], p.hp[2], 1.0 / p.grad_scale.get());
  }
  C10_HOST_DEVICE FUSEDOPT_INLINE static void apply(float& theta, float g, float* m,
                                                    const Scalars& s, int32_t flags) {
    with_flag<kDyn>(flags & kQ8First, [&](auto first) {
      with_flag<kDyn>(flags & kQ8Nesterov, [&](auto nesterov) {
        with_flag<kDyn>(flags & kQ8Maximize, [&](auto max) {
          sgd_element<true, decltype(first)::value, decltype(nesterov)::value,
                      decltype(max)::value>(theta, g, m[0], s);
        });
      });
    });
  }
};

// One chunk of a launch (Note [8-bit CUDA kernel]); param_t P, ParamMode MODE.
template <class Math, typename P, int MODE, int ARG_BYTES>
struct Q8Kernel {
  static constexpr int M = Math::kMoments;
  struct Shared {
    float map[M][kQ8Block];
    float mid[M][kQ8Block];
    float x[M][kQ8Chunk];                // the new moments
    uint32_t top[M][kQ8BlocksPerChunk];  // each block's max |x|, as bits
    float recip[M][kQ8BlocksPerChunk];
    typename Math::Scalars sc;
    uint32_t key;
  };

  TableFor<kQ8Depth, ARG_BYTES> t;
  Q8Params p;

  // found_inf is set: no block changes anything (uniform across the launch).
  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  template <class Exec>
  C10_HOST_DEVICE void operator()(int block, Exec& ex, Shared& sh) const {
    const BlockWork w = locate(t, block);
    if (skip()) return;
    const int s = w.slot, n = w.n, nt = ex.nthreads;
    const int blocks = static_cast<int>((n + kQ8Block - 1) / kQ8Block);
    const int64_t first = w.offset / kQ8Block;  // the chunk's first block in its param
    ex.each([&](int tid) {
      for (int k = tid; k < M * kQ8Block; k += nt) {
        const int r = k / kQ8Block, i = k % kQ8Block;
        const float* q = p.qmaps + r * kQ8Block;
        sh.map[r][i] = q[i];
        sh.mid[r][i] =
            i + 1 < kQ8Block ? (q[i] + q[i + 1]) * 0.5f : std::numeric_limits<float>::infinity();
      }
      for (int k = tid; k < M * kQ8BlocksPerChunk; k += nt) {
        sh.top[k / kQ8BlocksPerChunk][k % kQ8BlocksPerChunk] = 0;
      }
      if (tid == 0) {
        sh.sc = Math::scalars(p, Math::kSteps ? next_step(t.step[s], t.flags[s]) : 0.0);
        sh.key = 0;
        if constexpr (MODE == kStochastic) sh.key = next_sr_key(t.ptr[kQ8Extra][s]);
      }
    });
    ex.sync();
    P* param = static_cast<P*>(t.ptr[kQ8Param][s]) + w.offset;
    const P* grad = static_cast<const P*>(t.ptr[kQ8Grad][s]) + w.offset;
    float* master = MODE == kMaster ? static_cast<float*>(t.ptr[kQ8Extra][s]) + w.offset : nullptr;
    uint8_t* codes[M];
    float* absmax[M];
    for (int r = 0; r < M; ++r) {
      codes[r] = static_cast<uint8_t*>(t.ptr[kQ8Codes + r][s]) + w.offset;
      absmax[r] = static_cast<float*>(t.ptr[kQ8Absmax + r][s]) + first;
    }
    ex.each([&](int tid) {
      for (int i = tid; i < n; i += nt) {
        const int b = i / static_cast<int>(kQ8Block);
        float m[M];
        for (int r = 0; r < M; ++r) m[r] = sh.map[r][codes[r][i]] * absmax[r][b];
        float theta = load_param<MODE, float>(param, master, i);
        Math::apply(theta, static_cast<float>(grad[i]), m, sh.sc, p.flags);
        store_param<MODE, float>(param, master, i, theta, sh.key, w.offset);
        for (int r = 0; r < M; ++r) {
          sh.x[r][i] = m[r];
          q8_max_bits(&sh.top[r][b], m[r]);
        }
      }
    });
    ex.sync();
    ex.each([&](int tid) {
      for (int k = tid; k < M * blocks; k += nt) {
        const int r = k / blocks, b = k % blocks;
        const float mx = q8_float(sh.top[r][b]);
        absmax[r][b] = mx;
        sh.recip[r][b] = q8_reciprocal(mx);
      }
    });
    ex.sync();
    ex.each([&](int tid) {
      for (int i = tid; i < n; i += nt) {
        const int b = i / static_cast<int>(kQ8Block);
        for (int r = 0; r < M; ++r) {
          codes[r][i] = q8_code(sh.mid[r], q8_normalized(sh.x[r][i], sh.recip[r][b]));
        }
      }
    });
  }
};

// The launches of a job for Math, the params' dtype and mode, and the table variant; the
// runner launches (or simulates) one kernel object per planned launch (runner.blocks).
template <class Math, class Runner>
void run_8bit(Runner& r, const Job& job, const Q8Params& p, const char* name) {
  auto go = [&](auto param, auto mode, auto bytes) {
    using K = Q8Kernel<Math, decltype(param), decltype(mode)::value, decltype(bytes)::value>;
    std::vector<K> k(1);  // the table is large: on the heap
    k[0].p = p;
    for (const PlannedLaunch& l : job.plan.launches) {
      fill_table(k[0].t, l, job.plan.chunk_size, job.tensors.data());
      r.blocks(job, k[0], l.num_blocks);
    }
  };
  auto with_bytes = [&](auto param, auto mode) {
    with_arg_bytes<Runner>(job, [&](auto bytes) { go(param, mode, bytes); });
  };
  using Plain = std::integral_constant<int, kPlain>;
  using Master = std::integral_constant<int, kMaster>;
  using Stochastic = std::integral_constant<int, kStochastic>;
  if (job.dtype == at::kFloat && job.mode == kPlain) return with_bytes(float{}, Plain{});
  if (job.dtype == at::kBFloat16) {
    if (job.mode == kPlain) return with_bytes(c10::BFloat16{}, Plain{});
    if (job.mode == kMaster) return with_bytes(c10::BFloat16{}, Master{});
    if (job.mode == kStochastic) return with_bytes(c10::BFloat16{}, Stochastic{});
  }
  if (job.dtype == at::kHalf) {
    if (job.mode == kPlain) return with_bytes(c10::Half{}, Plain{});
    if (job.mode == kMaster) return with_bytes(c10::Half{}, Master{});
  }
  TORCH_CHECK(false, name, ": unsupported params ", job.dtype, " in param mode ", job.mode);
}

// The OpKernels of an 8-bit op Op with Math; each op adds its lists(args) (codes, then absmax,
// in the schema's order: the checks' order and the kernels' moments) and params(args, scalars).
template <class Op, class Math>
struct Q8OpKernels {
  using Args = typename Op::Args;
  using Params = Q8Params;
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    run_8bit<Math>(r, job, p, Op::name);
  }
};

template <>
struct OpKernels<ops::adam8bit_> : Q8OpKernels<ops::adam8bit_, Q8AdamMath> {
  static std::vector<Q8List> lists(const Args& a) {
    return {{a.exp_avgs, "exp_avgs", false},
            {a.exp_avg_sqs, "exp_avg_sqs", false},
            {a.exp_avg_absmaxs, "exp_avg_absmaxs", true},
            {a.exp_avg_sq_absmaxs, "exp_avg_sq_absmaxs", true}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    const int32_t flags =
        (a.maximize ? kQ8Maximize : 0) | (a.decoupled_weight_decay ? kQ8Decoupled : 0);
    return {s, {a.beta1, a.beta2, a.weight_decay, a.eps}, flags, nullptr};
  }
};

template <>
struct OpKernels<ops::lion8bit_> : Q8OpKernels<ops::lion8bit_, Q8LionMath> {
  static std::vector<Q8List> lists(const Args& a) {
    return {{a.exp_avgs, "exp_avgs", false}, {a.exp_avg_absmaxs, "exp_avg_absmaxs", true}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, {a.beta1, a.beta2, a.weight_decay, 0.0}, a.maximize ? kQ8Maximize : 0, nullptr};
  }
};

template <>
struct OpKernels<ops::sgd8bit_> : Q8OpKernels<ops::sgd8bit_, Q8SgdMath> {
  static std::vector<Q8List> lists(const Args& a) {
    return {{a.momentum_buffers, "momentum_buffers", false},
            {a.momentum_buffer_absmaxs, "momentum_buffer_absmaxs", true}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    const int32_t flags = (a.maximize ? kQ8Maximize : 0) | (a.nesterov ? kQ8Nesterov : 0) |
                          (a.is_first_step ? kQ8First : 0);
    return {s, {a.momentum, a.dampening, a.weight_decay, 0.0}, flags, nullptr};
  }
};

}  // namespace fusedopt::cuda
