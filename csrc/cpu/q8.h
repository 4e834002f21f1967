// 8-bit blockwise optimizer states on the CPU (Note [8-bit states] in
// fusedopt/reference/quant.py): decode, block absmax and encode per ISA, the encode tables, and
// the one-pass block loop and work split that adam8bit_, lion8bit_ and sgd8bit_ run their
// element math in. Each op gives an Op (its param type, mode, scalars, moments and
// element function: Body below) and calls Step::run.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/q8.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

#if FUSEDOPT_X86
#include <immintrin.h>
#endif

namespace fusedopt::cpu::q8 {

constexpr int64_t kBlock = kQ8Block;
constexpr int64_t kChunk = 16;  // codes decoded at a time (Note [8-bit SIMD])

inline int64_t num_blocks(int64_t n) { return q8_blocks(n); }

// Note [encode by table]
// The code of x is the number of midpoints below x (Note [8-bit states]); eight halvings of a
// binary search find it, at eight dependent table reads per element. For |x| <= 1 (every
// block whose absmax and reciprocal are finite: x * (1 / x) never rounds above 1) one read
// does: the floats that share their sign, their exponent (those below 2^-24 all together) and
// their top `bits` mantissa bits form a bucket, and where no bucket holds two midpoints, the
// code of x is its bucket's count of midpoints below it, plus one if x lies above the bucket's
// midpoint. Inside a bucket that comparison is one of the low mantissa bits (reversed for
// negative x). Each entry packs count << 18 | threshold, the value of the low bits from which x
// counts the midpoint (2^low_bits: none). The tables are built and checked against the search
// for every bucket once per distinct map (cached_tables); for a map where buckets of 8 bits
// still hold two midpoints there is no table and the search runs. The result is the search's,
// bit for bit. A block whose absmax is below 2^-128 has an infinite reciprocal (its x are
// infinite or NaN): the search codes it.
constexpr int kRows = 26;  // the exponents 103..127 (|x| in [2^-24, 1]), and all below
constexpr uint32_t kFirstExponent = 102;  // row 0's last: the exponent of row r is r + 102
constexpr int kMaxBits = 8;               // mantissa bits of a bucket
constexpr int kCountShift = 18;
constexpr int32_t kThresholdMask = (1 << kCountShift) - 1;

struct EncodeTable {
  int bits = 0;  // 0: no table
  alignas(64) int32_t entry[2 * kRows << kMaxBits];
};

// The maps (decode), their search keys (encode: the midpoints, +inf last) and tables.
struct QTables {
  alignas(64) float qmap[2][kBlock];
  alignas(64) float mid[2][kBlock];
  EncodeTable table[2];
};

// The number of midpoints below y: the branch-free search.
FUSEDOPT_INLINE int32_t search(const float* __restrict mid, float y) {
  int32_t k = 0;
  k += mid[k + 127] < y ? 128 : 0;
  k += mid[k + 63] < y ? 64 : 0;
  k += mid[k + 31] < y ? 32 : 0;
  k += mid[k + 15] < y ? 16 : 0;
  k += mid[k + 7] < y ? 8 : 0;
  k += mid[k + 3] < y ? 4 : 0;
  k += mid[k + 1] < y ? 2 : 0;
  k += mid[k] < y ? 1 : 0;
  return k;
}

FUSEDOPT_INLINE float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

FUSEDOPT_INLINE uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The tables of the maps `q` (2 x 256 floats), built on the first call with their bits (tens of
// thousands of searches: a millisecond, a tenth of a step of 25M params). A few maps are kept,
// the most recently used last.
std::shared_ptr<const QTables> cached_tables(const float* q);

// Whether a block's codes come from the table: the map has one, and absmax and its reciprocal
// are finite (|x| <= 1).
FUSEDOPT_INLINE bool by_table(const EncodeTable& t, float mx, float r) {
  return t.bits != 0 && mx <= std::numeric_limits<float>::max() &&
         r <= std::numeric_limits<float>::max();
}

FUSEDOPT_INLINE float reciprocal(float mx) { return 1.f / (mx == 0.f ? 1.f : mx); }

// Note [8-bit SIMD]
// Decode (16 codes at a time, each chunk just before its update), block absmax and encode are
// written with intrinsics per ISA (Q, one of ScalarQ, Avx2Q, Avx512Q): the compiler does not
// vectorize the table reads (it emulated each gather with scalar loads and inserts, the most
// expensive part of the step), while an AVX-512 gather of 16 entries from the L1-resident map
// costs about 5 cycles here. Decoding a chunk just before its update lets the gathers run beside
// the update's divisions and square roots (a tenth off the step); encoding the previous block's
// chunks in the same loop, to hide the encode the same way, made the step slower. Each
// element's arithmetic is the scalar code's, so every level gives the same bits; a partial last
// block, and a block the table does not code (by_table), takes the scalar code. The update
// stays the loop the compiler vectorizes (Body::update, over the op's element function: Adam's
// adam_element, Lion's, SGD's). benchmarks/README.md ("8-bit states") has the costs.
struct ScalarQ {
  // n values (kChunk where n is left out) of codes c, decoded.
  FUSEDOPT_INLINE static void decode(const uint8_t* __restrict c, const float* __restrict map,
                                     float scale, float* __restrict out, int64_t n = kChunk) {
    for (int64_t i = 0; i < n; ++i) out[i] = map[c[i]] * scale;
  }

  // |x| as bits orders as |x| does, NaN above +inf: an integer max is the largest |x|, NaN if
  // the block holds one (as torch.amax).
  FUSEDOPT_INLINE static float absmax(const float* __restrict x, int64_t n) {
    uint32_t top_bits = 0;
    for (int64_t i = 0; i < n; ++i) top_bits = std::max(top_bits, to_bits(x[i]) & 0x7FFFFFFFu);
    return from_bits(top_bits);
  }

  // The codes of x[0, n) in a block of absmax mx: the number of midpoints below x * r.
  FUSEDOPT_INLINE static void codes(const float* __restrict x, int64_t n, float mx,
                                    uint8_t* __restrict codes, const float* __restrict mid,
                                    const EncodeTable& table) {
    const float r = reciprocal(mx);
    if (!by_table(table, mx, r)) {
      for (int64_t j = 0; j < n; ++j) codes[j] = static_cast<uint8_t>(search(mid, x[j] * r));
      return;
    }
    const int bits = table.bits;
    const uint32_t low_bits = 23 - bits;
    const uint32_t low_mask = (1u << low_bits) - 1;
    const uint32_t first = kFirstExponent << bits;
    const int32_t* __restrict entry = table.entry;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t u = to_bits(x[j] * r);
      const uint32_t sign = u >> 31;
      const uint32_t bucket = (u & 0x7FFFFFFFu) >> low_bits;  // exponent and top bits
      const uint32_t at = (bucket > first ? bucket - first : 0u) + (sign ? kRows << bits : 0u);
      const int32_t ent = entry[at];
      const uint32_t low = (u & low_mask) ^ (low_mask & (0u - sign));
      codes[j] = static_cast<uint8_t>((ent >> kCountShift) +
                                      (static_cast<int32_t>(low) >= (ent & kThresholdMask)));
    }
  }

  // One block's moments, encoded: absmax, then each value's code (Note [encode by table]).
  FUSEDOPT_INLINE static void encode(const float* __restrict x, int64_t n, uint8_t* __restrict c,
                                     float* __restrict absmax_out, const float* __restrict mid,
                                     const EncodeTable& table) {
    const float mx = absmax(x, n);
    *absmax_out = mx;
    codes(x, n, mx, c, mid, table);
  }
};

#if FUSEDOPT_X86
struct Avx2Q {
  FUSEDOPT_TARGET_AVX2 static uint32_t reduce_max(__m256i x) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
  }

  FUSEDOPT_TARGET_AVX2 static void decode(const uint8_t* __restrict c, const float* __restrict map,
                                          float scale, float* __restrict out) {
    const __m256 s = _mm256_set1_ps(scale);
    for (int i = 0; i < kChunk; i += 8) {
      const __m256i k =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i)));
      const __m256 q = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), map, k,
                                                _mm256_castsi256_ps(_mm256_set1_epi32(-1)), 4);
      _mm256_store_ps(out + i, _mm256_mul_ps(q, s));
    }
  }

  FUSEDOPT_TARGET_AVX2 static float absmax(const float* __restrict x) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i top_bits = _mm256_setzero_si256();
    for (int i = 0; i < kBlock; i += 8) {
      const __m256i u = _mm256_castps_si256(_mm256_load_ps(x + i));
      top_bits = _mm256_max_epu32(top_bits, _mm256_and_si256(u, abs_mask));
    }
    return from_bits(reduce_max(top_bits));
  }

  // A whole block's codes by the table, normalized by r (ScalarQ::codes).
  FUSEDOPT_TARGET_AVX2 static void encode(const float* __restrict x, float r, uint8_t* __restrict c,
                                          const EncodeTable& table) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    const int bits = table.bits;
    const __m128i low_shift = _mm_cvtsi32_si128(23 - bits);
    const __m256i low_mask = _mm256_set1_epi32((1 << (23 - bits)) - 1);
    const __m256i first = _mm256_set1_epi32(static_cast<int32_t>(kFirstExponent << bits));
    const __m256i negative_half = _mm256_set1_epi32(kRows << bits);
    const __m256i threshold_mask = _mm256_set1_epi32(kThresholdMask);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i all = _mm256_set1_epi32(-1);
    // vpackusdw and vpackuswb pack within 128-bit lanes: this puts the 32 codes back in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256 vr = _mm256_set1_ps(r);
    for (int i = 0; i < kBlock; i += 32) {
      __m256i code[4];
      for (int k = 0; k < 4; ++k) {
        const __m256i u = _mm256_castps_si256(_mm256_mul_ps(_mm256_load_ps(x + i + 8 * k), vr));
        const __m256i neg = _mm256_srai_epi32(u, 31);
        const __m256i bucket = _mm256_srl_epi32(_mm256_and_si256(u, abs_mask), low_shift);
        const __m256i at = _mm256_add_epi32(_mm256_max_epi32(_mm256_sub_epi32(bucket, first), zero),
                                            _mm256_and_si256(neg, negative_half));
        const __m256i ent = _mm256_mask_i32gather_epi32(zero, table.entry, at, all, 4);
        const __m256i low = _mm256_and_si256(_mm256_xor_si256(u, neg), low_mask);
        // count + (low >= threshold) = count + 1 + (threshold > low ? -1 : 0)
        const __m256i below = _mm256_cmpgt_epi32(_mm256_and_si256(ent, threshold_mask), low);
        code[k] =
            _mm256_add_epi32(_mm256_add_epi32(_mm256_srli_epi32(ent, kCountShift), one), below);
      }
      const __m256i words = _mm256_packus_epi16(_mm256_packus_epi32(code[0], code[1]),
                                                _mm256_packus_epi32(code[2], code[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + i),
                          _mm256_permutevar8x32_epi32(words, order));
    }
  }
};
struct Avx512Q {
  // The maskz forms with a full mask are the plain instructions; GCC 12's unmasked intrinsics
  // start from an "undefined" register that -Wmaybe-uninitialized reports.
  static constexpr __mmask16 kAll = 0xFFFF;

  FUSEDOPT_TARGET_AVX512 static uint32_t reduce_max(__m512i x) {
    const __m256i h = _mm256_max_epu32(_mm512_maskz_extracti64x4_epi64(0xFF, x, 0),
                                       _mm512_maskz_extracti64x4_epi64(0xFF, x, 1));
    return Avx2Q::reduce_max(h);
  }

  FUSEDOPT_TARGET_AVX512 static void decode(const uint8_t* __restrict c,
                                            const float* __restrict map, float scale,
                                            float* __restrict out) {
    static_assert(kChunk == 16);
    const __m512i k =
        _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
    const __m512 q = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, k, map, 4);
    _mm512_store_ps(out, _mm512_mul_ps(q, _mm512_set1_ps(scale)));
  }

  FUSEDOPT_TARGET_AVX512 static float absmax(const float* __restrict x) {
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i top_bits = _mm512_setzero_si512();
    for (int i = 0; i < kBlock; i += 16) {
      const __m512i u = _mm512_castps_si512(_mm512_load_ps(x + i));
      top_bits = _mm512_maskz_max_epu32(kAll, top_bits, _mm512_and_si512(u, abs_mask));
    }
    return from_bits(reduce_max(top_bits));
  }

  // A whole block's codes by the table, normalized by r (ScalarQ::codes).
  FUSEDOPT_TARGET_AVX512 static void encode(const float* __restrict x, float r,
                                            uint8_t* __restrict c, const EncodeTable& table) {
    const int bits = table.bits;
    const __m512i zero = _mm512_setzero_si512();
    // The constants are written where they are used: the compiler keeps them out of the loop.
    for (int i = 0; i < kBlock; i += 16) {
      const __m512i u =
          _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(x + i), _mm512_set1_ps(r)));
      const __m512i neg = _mm512_maskz_srai_epi32(kAll, u, 31);
      // Row and top bits (Note [encode by table]): the exponent and top bits of |x|, less those
      // of row 0; all below it read row 0.
      const __m512i bucket = _mm512_maskz_srl_epi32(
          kAll, _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm_cvtsi32_si128(23 - bits));
      const __m512i below_rows =
          _mm512_sub_epi32(bucket, _mm512_set1_epi32(static_cast<int32_t>(kFirstExponent << bits)));
      const __m512i at = _mm512_add_epi32(_mm512_maskz_max_epi32(kAll, below_rows, zero),
                                          _mm512_and_si512(neg, _mm512_set1_epi32(kRows << bits)));
      const __m512i ent = _mm512_mask_i32gather_epi32(zero, kAll, at, table.entry, 4);
      const __m512i low =
          _mm512_and_si512(_mm512_xor_si512(u, neg), _mm512_set1_epi32((1 << (23 - bits)) - 1));
      const __mmask16 above =
          _mm512_cmpge_epi32_mask(low, _mm512_and_si512(ent, _mm512_set1_epi32(kThresholdMask)));
      const __m512i count = _mm512_maskz_srli_epi32(kAll, ent, kCountShift);
      const __m512i code = _mm512_mask_add_epi32(count, above, count, _mm512_set1_epi32(1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c + i), _mm512_maskz_cvtepi32_epi8(kAll, code));
    }
  }
};

#endif

// A block of x (n values, their moments after the update), encoded: absmax, then the codes (a
// whole block by the table: Q's; a partial one, or one the table does not code, by ScalarQ).
template <class Q>
FUSEDOPT_INLINE void encode(const float* __restrict x, int64_t n, uint8_t* __restrict c,
                            float* __restrict absmax_out, const float* __restrict mid,
                            const EncodeTable& table) {
  if constexpr (std::is_same_v<Q, ScalarQ>) {
    ScalarQ::encode(x, n, c, absmax_out, mid, table);
  } else {
    if (n < kBlock) return ScalarQ::encode(x, n, c, absmax_out, mid, table);
    const float mx = Q::absmax(x);
    *absmax_out = mx;
    const float r = reciprocal(mx);
    if (!by_table(table, mx, r)) return ScalarQ::codes(x, n, mx, c, mid, table);
    Q::encode(x, r, c, table);
  }
}

// The 8-bit moments of a range of one param: moment k's codes and its blocks' absmax, decoded
// through map row k (Adam: the signed first moment, the unsigned second; Lion and SGD: the
// signed one alone).
template <int K>
struct Moments {
  uint8_t* codes[K];
  float* absmax[K];
};

// The types and constants of an Op (Body below): param_t, its mode (ParamMode), its Scalars,
// its K moments (1 or 2), whether the update reads them (kDecode; SGD's first step does not) and
// whether each chunk's update follows its decode (kInterleave: Adam's, whose divisions and
// square roots then run beside the gathers, and SGD's) or one update runs over the decoded block
// (Lion's: faster so, where SGD's was slower; benchmarks/README.md, "8-bit states").
template <typename param_t_, int MODE, int K, class Scalars_, bool DECODE = true,
          bool INTERLEAVE = true>
struct OpBase {
  using param_t = param_t_;
  using Scalars = Scalars_;
  static constexpr int kMode = MODE;
  static constexpr int kMoments = K;
  static constexpr bool kDecode = DECODE;
  static constexpr bool kInterleave = INTERLEAVE;
};

// The blocks of one param from element 0 of the pointers (a multiple of kBlock into the
// tensor), n elements, updated by Op in one pass per block: decode, the element math in fp32,
// encode with the block's new absmax. Op derives from OpBase and gives
//   element(float& p, float g, float& m0, float& m1, const Scalars& s) (m1: kMoments == 2).
// Q: decode and encode (Note [8-bit SIMD]).
template <class Q, class Op>
struct Body {
  using param_t = typename Op::param_t;
  using Scalars = typename Op::Scalars;
  static constexpr int K = Op::kMoments;
  static constexpr int MODE = Op::kMode;

  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g, Moments<K> mo,
                                  float* __restrict master, int64_t n, const Scalars* scalars,
                                  const QTables* tables, uint32_t key, int64_t j0) {
    const Scalars s = *scalars;
    const QTables& t = *tables;
    for (int64_t b = 0; b * kBlock < n; ++b) {
      const int64_t o = b * kBlock;
      const int64_t len = std::min(kBlock, n - o);
      if (n >= kPrefetchMin && o + kPrefetchAhead + kBlock <= n) {
        prefetch(p, g, mo, master, o + kPrefetchAhead);
      }
      alignas(64) float m[K][kBlock];
      // Not decoded (SGD's first step): zeros, for the compiler, which cannot tell that the
      // update writes every value the encode reads.
      if constexpr (!Op::kDecode) std::memset(m, 0, sizeof m);
      param_t* __restrict pb = p + o;
      const param_t* __restrict gb = g + o;
      float* __restrict mp = MODE == kMaster ? master + o : nullptr;
      float* m1 = nullptr;  // the second moment (K == 2)
      if constexpr (K == 2) m1 = m[1];
      // Decoded a chunk at a time, each just before its update (kInterleave), or the block
      // before one update.
      int64_t i = 0;
      for (; i + kChunk <= len; i += kChunk) {
        if constexpr (Op::kDecode) {
          for (int k = 0; k < K; ++k)
            Q::decode(mo.codes[k] + o + i, t.qmap[k], mo.absmax[k][b], m[k] + i);
        }
        if constexpr (Op::kInterleave) update(pb, gb, mp, m[0], m1, i, i + kChunk, s, key, j0 + o);
      }
      if constexpr (Op::kDecode) {
        for (int k = 0; k < K; ++k) {
          ScalarQ::decode(mo.codes[k] + o + i, t.qmap[k], mo.absmax[k][b], m[k] + i, len - i);
        }
      }
      update(pb, gb, mp, m[0], m1, Op::kInterleave ? i : 0, len, s, key, j0 + o);
      for (int k = 0; k < K; ++k) {
        encode<Q>(m[k], len, mo.codes[k] + o, mo.absmax[k] + b, t.mid[k], t.table[k]);
      }
    }
  }

  // Elements [i0, i1) of a block at element j0 of the param (m0, m1: its moments; one array
  // when K is 1).
  FUSEDOPT_INLINE static void update(param_t* __restrict pb, const param_t* __restrict gb,
                                     float* __restrict mp, float* __restrict m0,
                                     float* __restrict m1, int64_t i0, int64_t i1, const Scalars& s,
                                     uint32_t key, int64_t j0) {
    for (int64_t i = i0; i < i1; ++i) {
      float pi = load_param<MODE, float>(pb, mp, i);
      float a = m0[i];
      float c = 0.f;
      if constexpr (K == 2) c = m1[i];
      Op::element(pi, static_cast<float>(gb[i]), a, c, s);
      store_param<MODE, float>(pb, mp, i, pi, key, j0);
      m0[i] = a;
      if constexpr (K == 2) m1[i] = c;
    }
  }

  // The lines of the block at element `at` of every array the step reads (Note [prefetch ahead]
  // in isa.h).
  FUSEDOPT_INLINE static void prefetch(const param_t* p, const param_t* g, const Moments<K>& mo,
                                       const float* master, int64_t at) {
    prefetch_lines<kBlock>(p, at);
    if (MODE == kMaster) prefetch_lines<kBlock>(master, at);
    prefetch_lines<kBlock>(g, at);
    if constexpr (Op::kDecode) {
      for (int k = 0; k < K; ++k) prefetch_lines<kBlock>(mo.codes[k], at);
    }
  }
};

// Calls Body<Q, Op>::run(args...) with the Q of `isa`, compiled for it.
template <class Op, class... Args>
void run_q8(Isa isa, Args... args) {
#if FUSEDOPT_X86
  switch (isa) {
    case Isa::kAvx512: return run_avx512<Body<Avx512Q, Op>>(args...);
    case Isa::kAvx2: return run_avx2<Body<Avx2Q, Op>>(args...);
    default: break;
  }
#endif
  (void)isa;
  run_default<Body<ScalarQ, Op>>(args...);
}

// The 8-bit arguments' checks (check_8bit_args) and the contiguous staging (Staged) are the
// CUDA backend's too: csrc/common/q8.h.

// One step of an 8-bit op over its params (after Update): the params, grads and master copies
// staged contiguous, the maps' tables, and the work split in whole blocks (a block is never
// shared by two threads, so each thread's result is the reference's, bit for bit).
class Step {
 public:
  Step(at::TensorList params, at::TensorList grads,
       const std::optional<at::TensorList>& master_params, const at::Tensor& qmaps);

  // Runs Op over every param: codes[k][i] and absmax[k][i] its moment k, scalars[i] its
  // scalars (per_param; else scalars[0] for all), keys[i] its stochastic-rounding key.
  template <class Op>
  void run(const std::array<at::TensorList, Op::kMoments>& codes,
           const std::array<at::TensorList, Op::kMoments>& absmax,
           const typename Op::Scalars* scalars, bool per_param, const std::vector<uint32_t>& keys) {
    using param_t = typename Op::param_t;
    const size_t n = ps_.size();
    const Isa isa = current_isa();
    // Whole blocks per task: kGrainSize elements' worth.
    at::parallel_for(0, first_block_[n], kGrainSize / kBlock, [&](int64_t b0, int64_t b1) {
      size_t i =
          std::upper_bound(first_block_.begin(), first_block_.end(), b0) - first_block_.begin() - 1;
      for (int64_t b = b0; b < b1; ++i) {
        const int64_t end = std::min(b1, first_block_[i + 1]);
        if (end <= b) continue;
        const int64_t lb = b - first_block_[i];  // the first block, in the param
        const int64_t o = lb * kBlock;
        const int64_t len =
            std::min(end * kBlock, first_block_[i] * kBlock + ps_[i].work.numel()) - b * kBlock;
        Moments<Op::kMoments> mo;
        for (int k = 0; k < Op::kMoments; ++k) {
          mo.codes[k] = codes[k][i].template data_ptr<uint8_t>() + o;
          mo.absmax[k] = absmax[k][i].template data_ptr<float>() + lb;
        }
        float* mp = ms_.empty() ? nullptr : ms_[i].work.data_ptr<float>() + o;
        run_q8<Op>(isa, static_cast<param_t*>(ps_[i].work.data_ptr()) + o,
                   static_cast<const param_t*>(gs_[i].work.data_ptr()) + o, mo, mp, len,
                   scalars + (per_param ? i : 0), tables_.get(),
                   Op::kMode == kStochastic ? keys[i] : 0u, o);
        b = end;
      }
    });
  }

  // Writes the params (and master copies) that were staged as copies back.
  void write_back() const;

 private:
  std::vector<Staged> ps_, gs_, ms_;
  std::vector<int64_t> first_block_;  // prefix sums of the params' blocks
  std::shared_ptr<const QTables> tables_;
};

// Calls f.template operator()<param_t, MODE>() for the call's param dtype and mode: the 8-bit
// ops take params of an fp32 opmath (check).
template <class F>
void dispatch(const Mixed& mx, F&& f) {
  dispatch_mixed(mx, [&]<typename param_t, typename state_t, int MODE>() {
    if constexpr (std::is_same_v<at::opmath_type<param_t>, float>) {
      f.template operator()<param_t, MODE>();
    }
  });
}

// Calls f.template operator()<B..., flags...>() with the run-time bools `flags` as template
// arguments (the ops' modes).
template <bool... B, class F>
void with_flags(F&& f) {
  f.template operator()<B...>();
}
template <bool... B, class F, class... Flags>
void with_flags(F&& f, bool first, Flags... rest) {
  if (first) {
    with_flags<B..., true>(f, rest...);
  } else {
    with_flags<B..., false>(f, rest...);
  }
}

}  // namespace fusedopt::cpu::q8
