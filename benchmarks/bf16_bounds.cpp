// What bounds AdamW with bf16 params and states at one thread (benchmarks/README.md, "bf16
// params: a compute roofline"). Standalone: the tree's chunk helpers and element math, compiled
// with the extension's flags; not part of the build.
//
//   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -std=c++17 -Icsrc \
//       -Icsrc/include -isystem $(python -c "import torch,os;print(os.path.dirname(
//       torch.__file__))")/include benchmarks/bf16_bounds.cpp -o /tmp/bf16_bounds
//   /tmp/bf16_bounds           # the loops in L1 and from memory, G elements/s of CPU time
//   /tmp/bf16_bounds sqrt      # the FMA-refined square root against vsqrtps, all 2^32 inputs
//
// Needs a CPU with AVX512-BF16. Rows marked "bound only" do not compute AdamW's results: they
// show what the loop would run at without a part of its work.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "cpu/bf16_simd.h"

namespace {

using fusedopt::AdamScalars;
using bf = c10::BFloat16;

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define BOUNDS_INLINE FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16

// sqrt(x) from vrsqrt14ps (relative error < 2^-14): one Goldschmidt step for the root s and the
// half reciprocal root h, then s + (x - s*s)*h with the residual exact in an FMA. Equal to
// vsqrtps for every positive x in [2^-102, FLT_MAX]; below, x - s*s loses bits to underflow.
BOUNDS_INLINE __m512 fma_sqrt(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 y = _mm512_rsqrt14_ps(x);
  __m512 s = _mm512_mul_ps(x, y);
  __m512 h = _mm512_mul_ps(half, y);
  const __m512 r = _mm512_fnmadd_ps(s, h, half);
  s = _mm512_fmadd_ps(s, r, s);
  h = _mm512_fmadd_ps(h, r, h);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(s, s, x), h, s);
}

// a/b from vrcp14ps: two Newton steps for 1/b, then two Markstein corrections q + (a - b*q)*y.
// Timed only: not shown exact here.
BOUNDS_INLINE __m512 fma_div(__m512 a, __m512 b) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 y = _mm512_rcp14_ps(b);
  y = _mm512_fmadd_ps(_mm512_fnmadd_ps(b, y, one), y, y);
  y = _mm512_fmadd_ps(_mm512_fnmadd_ps(b, y, one), y, y);
  __m512 q = _mm512_mul_ps(a, y);
  q = _mm512_fmadd_ps(_mm512_fnmadd_ps(b, q, a), y, q);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(b, q, a), y, q);
}

__attribute__((noinline)) FUSEDOPT_TARGET_AVX512BF16 void check_sqrt() {
  uint64_t differ = 0, differ_in_range = 0;
  __m512i bits = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo = _mm512_set1_epi32(0x0C800000), hi = _mm512_set1_epi32(0x7F800000);
  for (uint64_t k = 0; k < (uint64_t{1} << 32); k += 16) {
    const __m512 x = _mm512_castsi512_ps(bits);
    const __mmask16 ne = _mm512_cmpneq_epi32_mask(_mm512_castps_si512(fma_sqrt(x)),
                                                  _mm512_castps_si512(_mm512_sqrt_ps(x)));
    const __mmask16 in_range =
        _mm512_cmpge_epu32_mask(bits, lo) & _mm512_cmplt_epu32_mask(bits, hi);
    differ += __builtin_popcount(ne);
    differ_in_range += __builtin_popcount(ne & in_range);
    bits = _mm512_add_epi32(bits, _mm512_set1_epi32(16));
  }
  printf("all 2^32 inputs: %llu differ from vsqrtps, %llu of them in [2^-102, FLT_MAX]\n",
         static_cast<unsigned long long>(differ), static_cast<unsigned long long>(differ_in_range));
}

// The loops. kTree: the kernel's chunk loop (adam_element over fp32 chunks). The others spell
// the same element math (AdamW, lerp weight < 0.5) with intrinsics and swap one part.
enum Loop { kTree, kIntrinsics, kFmaSqrt, kFmaDiv, kNoDivider, kAddOnly, kReadOnly };

template <int L>
BOUNDS_INLINE void chunk_math(const AdamScalars<float>& s, __m512& p, __m512 g, __m512& m,
                              __m512& v) {
  g = _mm512_mul_ps(g, _mm512_set1_ps(s.inv_grad_scale));
  p = _mm512_mul_ps(p, _mm512_set1_ps(s.decay_factor));
  m = _mm512_add_ps(m, _mm512_mul_ps(_mm512_set1_ps(s.one_minus_beta1), _mm512_sub_ps(g, m)));
  v = _mm512_mul_ps(v, _mm512_set1_ps(s.beta2));
  v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(s.one_minus_beta2), g), g));
  const __m512 root = L == kFmaSqrt ? fma_sqrt(v) : L == kNoDivider ? v : _mm512_sqrt_ps(v);
  const __m512 denom = _mm512_add_ps(
      _mm512_mul_ps(root, _mm512_set1_ps(1.0f / s.bias_correction2_sqrt)), _mm512_set1_ps(s.eps));
  const __m512 num = _mm512_mul_ps(_mm512_set1_ps(s.neg_step_size), m);
  const __m512 step = L == kFmaDiv      ? fma_div(num, denom)
                      : L == kNoDivider ? _mm512_mul_ps(num, denom)
                                        : _mm512_div_ps(num, denom);
  p = _mm512_add_ps(p, step);
}

template <int L>
__attribute__((noinline)) FUSEDOPT_TARGET_AVX512BF16 float run(bf* __restrict p,
                                                               const bf* __restrict g,
                                                               bf* __restrict m, bf* __restrict v,
                                                               int64_t n,
                                                               const AdamScalars<float>& s) {
  using namespace fusedopt::cpu;
  using namespace fusedopt::cpu::bf16x32;
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i + kChunk <= n; i += kChunk) {
    if (n >= kPrefetchMin && i + kPrefetchAhead + kChunk <= n) {
      for (const bf* a :
           {static_cast<const bf*>(p), g, static_cast<const bf*>(m), static_cast<const bf*>(v)}) {
        prefetch_lines<kChunk>(a, i + kPrefetchAhead);
      }
    }
    alignas(64) float pc[kChunk], gc[kChunk], mc[kChunk], vc[kChunk];
    load(p + i, pc);
    load(g + i, gc);
    load(m + i, mc);
    load(v + i, vc);
    if (L == kTree) {
      float unused = 0;
      for (int j = 0; j < kChunk; ++j) {
        fusedopt::adam_element<true, false, false>(pc[j], gc[j], mc[j], vc[j], unused, s);
      }
    } else if (L == kReadOnly) {
      for (float* a : {pc, gc, mc, vc}) {
        sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_load_ps(a), _mm512_load_ps(a + 16)));
      }
      continue;
    } else {
      for (int h = 0; h < kChunk; h += 16) {
        __m512 pv = _mm512_load_ps(pc + h), mv = _mm512_load_ps(mc + h);
        __m512 vv = _mm512_load_ps(vc + h);
        const __m512 gv = _mm512_load_ps(gc + h);
        if (L == kAddOnly) {
          pv = _mm512_add_ps(pv, gv);
          mv = _mm512_add_ps(mv, gv);
          vv = _mm512_add_ps(vv, gv);
        } else {
          chunk_math<L>(s, pv, gv, mv, vv);
        }
        _mm512_store_ps(pc + h, pv);
        _mm512_store_ps(mc + h, mv);
        _mm512_store_ps(vc + h, vv);
      }
    }
    store(pc, p + i);
    store(mc, m + i);
    store(vc, v + i);
  }
  return _mm512_reduce_add_ps(sum);
}

struct Arrays {
  std::vector<bf> p, g, m, v;
  explicit Arrays(int64_t n) : p(n), g(n), m(n), v(n) {
    for (int64_t i = 0; i < n; ++i) {
      p[i] = bf(1.0f + (i % 1000) * 1e-3f);
      g[i] = bf(((i * 7919) % 13 - 6.5f) * 1e-2f);
      m[i] = bf(1e-3f);
      v[i] = bf(1e-4f);
    }
  }
};

using Fn = float (*)(bf*, const bf*, bf*, bf*, int64_t, const AdamScalars<float>&);
const Fn kLoops[] = {run<kTree>,      run<kIntrinsics>, run<kFmaSqrt>, run<kFmaDiv>,
                     run<kNoDivider>, run<kAddOnly>,    run<kReadOnly>};
const char* const kNames[] = {
    "AdamW chunks (the kernel's)",      "AdamW, intrinsics (vsqrtps, vdivps)",
    "AdamW, FMA-refined sqrt",          "AdamW, FMA-refined division",
    "bound only: no sqrt, no division", "bound only: add-only, same traffic",
    "bound only: read the 4 arrays"};
constexpr int kCount = sizeof(kLoops) / sizeof(kLoops[0]);

// Medians of interleaved rounds, G elements/s of this thread's CPU time. From memory each pass
// follows a 256 MiB pass over another buffer, as the bench does between steps.
void measure(int64_t n, int passes, int rounds) {
  const auto s = fusedopt::make_adam_scalars<float>(1e-3, fusedopt::kLrDouble, 0.9, 0.999, 1e-8,
                                                    0.01, 10, 1.0);
  Arrays a(n);
  std::vector<char> evict(n > 65536 ? 256 << 20 : 0, 1);
  volatile float sink = 0;
  std::vector<double> rate[kCount];
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < kCount; ++k) {
      const int l = (r + k) % kCount;
      for (size_t b = 0; b < evict.size(); b += 64) evict[b] = static_cast<char>(evict[b] + 1);
      const double t0 = cpu_seconds();
      for (int it = 0; it < passes; ++it) {
        sink = sink + kLoops[l](a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, s);
      }
      rate[l].push_back(static_cast<double>(n) * passes / (cpu_seconds() - t0) / 1e9);
    }
  }
  for (int l = 0; l < kCount; ++l) {
    std::sort(rate[l].begin(), rate[l].end());
    printf("  %-38s %5.2f G elem/s (max %.2f)\n", kNames[l], rate[l][rounds / 2], rate[l].back());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "sqrt") == 0) {
    check_sqrt();
    return 0;
  }
  printf("in L1 (1,024 elements, 50,000 passes):\n");
  measure(1024, 50000, 9);
  printf("from memory (24Mi elements, 192 MiB, one pass):\n");
  measure(24 << 20, 1, 9);
  return 0;
}
