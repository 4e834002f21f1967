// Run-time SIMD selection for the CPU kernels.
//
// Note [SIMD by target attribute]
// The extension is compiled for the baseline ISA (never -march=native). Each hot loop is a
// template instantiated three times on x86-64: inside a function carrying
// __attribute__((target("avx512..."))), one with target("avx2,fma"), and a plain one. The loop
// bodies are always_inline, so the compiler vectorizes each copy for its own ISA, and nothing
// compiled for AVX-512 ever escapes into a shared inline symbol (the one-definition hazard of
// compiling whole files with -mavx512f). The level is picked once at run time from cpuid;
// FUSEDOPT_CPU_CAPABILITY=default|avx2|avx512 lowers it (tests run every level on one machine).
#pragma once

#include <cstdint>

namespace fusedopt::cpu {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The highest level this CPU supports.
Isa detected_isa();
// The level in use: detected_isa(), lowered by FUSEDOPT_CPU_CAPABILITY or set_isa().
Isa current_isa();
// Returns false (and changes nothing) when the CPU lacks `isa`.
bool set_isa(Isa isa);
const char* isa_name(Isa isa);
// Whether the kAvx512 level may use the AVX512-BF16 instructions: the CPU has them and the level
// in use is kAvx512.
bool avx512_bf16_in_use();

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FUSEDOPT_X86 1
#define FUSEDOPT_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi2")))
#define FUSEDOPT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2")))
// AVX-512 with the BF16 conversions (Cooper Lake, Sapphire Rapids, Zen 4 and later): not a level
// of its own, a feature the kAvx512 level uses where the CPU has it (cpu/bf16_simd.h).
#define FUSEDOPT_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,f16c,bmi2")))
#else
#define FUSEDOPT_X86 0
#endif

// Note [prefetch ahead]
// From memory the update loops do not keep enough lines in flight: the hardware prefetchers
// alone leave the core waiting on four streams (p, g, m, v) at once. At one thread the chunked
// bf16 AdamW loop ran at 60% of its rate on L1-resident data and the fp32 loop well below the
// bandwidth one core moves. Requesting each array's lines kPrefetchAhead elements ahead of the
// block being computed lifted the bf16 loop by a third and the fp32 one by a seventh
// (benchmarks/README.md, "What bounds the CPU step"); 512 to 1,024 elements ahead did best,
// 2,048 and more less. Prefetches change no result; a block whose lines ahead would pass the end
// of the range requests none.
constexpr int64_t kPrefetchAhead = 512;
// Shorter ranges request nothing: on 2,000 tensors of 1,024 elements, prefetching each one's
// second half made the bench's `tiny` step 10% slower (the requests compete with the demand
// misses of a tensor the streamers have not yet picked up).
constexpr int64_t kPrefetchMin = 4 * kPrefetchAhead;

// Requests into L1 the lines of x[at, at + kCount).
template <int64_t kCount, typename T>
inline __attribute__((always_inline)) void prefetch_lines(const T* x, int64_t at) {
  const char* line = reinterpret_cast<const char*>(x + at);
  for (int64_t b = 0; b < kCount * static_cast<int64_t>(sizeof(T)); b += 64) {
    __builtin_prefetch(line + b, 0, 3);
  }
}

// Calls Body::run(args...) compiled for the current ISA. Body::run must be always_inline.
template <class Body, class... Args>
void run_default(Args... args) {
  Body::run(args...);
}
#if FUSEDOPT_X86
template <class Body, class... Args>
FUSEDOPT_TARGET_AVX2 void run_avx2(Args... args) {
  Body::run(args...);
}
template <class Body, class... Args>
FUSEDOPT_TARGET_AVX512 void run_avx512(Args... args) {
  Body::run(args...);
}
#endif

template <class Body, class... Args>
inline void run_isa(Isa isa, Args... args) {
#if FUSEDOPT_X86
  switch (isa) {
    case Isa::kAvx512: return run_avx512<Body>(args...);
    case Isa::kAvx2: return run_avx2<Body>(args...);
    default: break;
  }
#endif
  (void)isa;
  run_default<Body>(args...);
}

}  // namespace fusedopt::cpu
