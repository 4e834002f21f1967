// bf16 <-> fp32 conversions of 32 elements at a time, for loops compiled with
// FUSEDOPT_TARGET_AVX512BF16 (used only where avx512_bf16_in_use()).
//
// Note [bf16 chunks]
// A bf16 param or state costs the auto-vectorized loops most of their instructions in the
// conversions, not in the math: c10::BFloat16's round-to-nearest-even is integer code (shift,
// mask, two adds, a NaN compare and blend, a word permute per 32 elements) and the loads are
// widened clumsily, so with 14 B/param of bf16 AdamW runs no faster per element than fp32 does
// and is bound by the two AVX-512 ports, not by memory (benchmarks/README.md, "bf16 roofline").
// The chunked loops load 32 elements of each array into fp32 (exact: a shift), run the same
// element math over the chunk, and round back with one vcvtne2ps2bf16 per array. That
// instruction rounds to nearest even like c10::BFloat16 except for two input classes: it flushes
// denormals to zero and keeps a NaN's sign and payload (c10 writes 0x7FC0). A chunk holding
// either is rounded with c10's code instead, so the bits are those of every other ISA level.
#pragma once

#include "isa.h"

#if FUSEDOPT_X86
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include "fusedopt/math.h"

namespace fusedopt::cpu::bf16x32 {

constexpr int kChunk = 32;

// The maskz forms with a full mask are the plain instructions; GCC 12's unmasked intrinsics
// start from an "undefined" register that -Wmaybe-uninitialized reports.
FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16 __m512 widen(const c10::BFloat16* src) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, bits);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16 void load(const c10::BFloat16* src, float* dst) {
  _mm512_store_ps(dst, widen(src));
  _mm512_store_ps(dst + 16, widen(src + 16));
}

FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16 void load(const float* src, float* dst) {
  _mm512_store_ps(dst, _mm512_loadu_ps(src));
  _mm512_store_ps(dst + 16, _mm512_loadu_ps(src + 16));
}

FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16 void store(const float* src, c10::BFloat16* dst) {
  const __m512 lo = _mm512_load_ps(src);
  const __m512 hi = _mm512_load_ps(src + 16);
  // fpclass 0xA1: quiet NaN, signalling NaN, denormal (Note [bf16 chunks]).
  constexpr int kSpecial = 0x01 | 0x20 | 0x80;
  if (__builtin_expect(_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, kSpecial),
                                           _mm512_fpclass_ps_mask(hi, kSpecial)) == 0,
                       0)) {
    for (int k = 0; k < kChunk; ++k) dst[k] = static_cast<c10::BFloat16>(src[k]);
    return;
  }
  _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
}

FUSEDOPT_INLINE FUSEDOPT_TARGET_AVX512BF16 void store(const float* src, float* dst) {
  _mm512_storeu_ps(dst, _mm512_load_ps(src));
  _mm512_storeu_ps(dst + 16, _mm512_load_ps(src + 16));
}

}  // namespace fusedopt::cpu::bf16x32
#endif
