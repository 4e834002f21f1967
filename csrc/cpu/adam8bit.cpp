// Adam / AdamW with 8-bit blockwise moments on the CPU (Note [8-bit states] in
// fusedopt/reference/quant.py): one pass per block of 256 elements decodes both moments,
// updates the block in fp32 with fusedopt/math.h's adam_element, and encodes them with the
// block's new absmax. The work is split in whole blocks, so a block is never shared by two
// threads and each thread's result is the reference's, bit for bit.
//
// Bytes per parameter and step (fp32 params): read p, g and the two codes, write p and the
// codes: 16 B, plus 16 B per block of absmax (0.06 B), against 28 B with fp32 moments.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../common/q8.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

#if FUSEDOPT_X86
#include <immintrin.h>
#endif

namespace fusedopt::cpu {
namespace {

constexpr int64_t kQBlock = kQ8Block;
constexpr int64_t kChunk = 16;  // codes decoded at a time (Note [8-bit SIMD])

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
  alignas(64) float qmap[2][kQBlock];
  alignas(64) float mid[2][kQBlock];
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

// Fills t for `mid` with buckets of `bits` mantissa bits; false if a bucket holds two midpoints.
bool build_table(EncodeTable& t, const float* mid, int bits) {
  const int low_bits = 23 - bits;
  const uint32_t low_mask = (1u << low_bits) - 1;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (int row = 0; row < kRows; ++row) {
      for (uint32_t top = 0; top < (1u << bits); ++top) {
        // The bucket's magnitudes [lo, hi]: row 0 is every float below 2^-24, for every top
        // alike (an x of exponent 102 reads row 0 at its top bits).
        uint32_t lo = 0, hi = (103u << 23) - 1;
        if (row > 0) {
          lo = (static_cast<uint32_t>(row + 102) << 23) | (top << low_bits);
          hi = lo | low_mask;
        }
        const uint32_t s = sign << 31;
        const float first = from_bits(s | (sign ? hi : lo));  // the smallest x of the bucket
        const float last = from_bits(s | (sign ? lo : hi));
        const int32_t c0 = search(mid, first);
        const int32_t c1 = search(mid, last);
        int32_t threshold = 1 << low_bits;  // never reached
        if (c1 == c0 + 1 && row > 0) {
          // Both ends' bits share the bucket's, so the midpoint's low bits place it.
          const uint32_t m = to_bits(mid[c0]) & low_mask;
          threshold = static_cast<int32_t>((sign ? low_mask - m : m) + 1);
        } else if (c1 != c0) {
          return false;
        }
        t.entry[((sign * kRows + row) << bits) + top] = (c0 << kCountShift) | threshold;
      }
    }
  }
  t.bits = bits;
  return true;
}

std::shared_ptr<const QTables> build_tables(const float* q) {
  auto t = std::make_shared<QTables>();
  for (int r = 0; r < 2; ++r) {
    std::memcpy(t->qmap[r], q + r * kQBlock, sizeof t->qmap[r]);
    for (int k = 0; k + 1 < kQBlock; ++k) {
      t->mid[r][k] = (t->qmap[r][k] + t->qmap[r][k + 1]) * 0.5f;
    }
    t->mid[r][kQBlock - 1] = std::numeric_limits<float>::infinity();
    t->table[r].bits = 0;
    for (int bits = 5; bits <= kMaxBits && !build_table(t->table[r], t->mid[r], bits); ++bits) {
    }
  }
  return t;
}

// The tables of the maps `q` (2 x 256 floats), built on the first call with their bits (tens of
// thousands of searches: a millisecond, a tenth of a step of 25M params). A few maps are kept,
// the most recently used last.
std::shared_ptr<const QTables> cached_tables(const float* q) {
  constexpr size_t kKept = 4;
  static std::mutex mu;
  static std::vector<std::shared_ptr<const QTables>> kept;
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 0; i < kept.size(); ++i) {
    if (std::memcmp(kept[i]->qmap, q, sizeof kept[i]->qmap) == 0) {
      std::rotate(kept.begin() + i, kept.begin() + i + 1, kept.end());
      return kept.back();
    }
  }
  if (kept.size() == kKept) kept.erase(kept.begin());
  kept.push_back(build_tables(q));
  return kept.back();
}

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
// stays the loop the compiler vectorizes (adam_element). benchmarks/README.md ("8-bit states")
// has the costs.
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
    for (int i = 0; i < kQBlock; i += 8) {
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
    for (int i = 0; i < kQBlock; i += 32) {
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
    for (int i = 0; i < kQBlock; i += 16) {
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
    for (int i = 0; i < kQBlock; i += 16) {
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

// The blocks of one param from element 0 of the pointers (a multiple of kQBlock into the
// tensor), n elements; am/av its blocks' absmax. Q: decode and encode (Note [8-bit SIMD]).
template <class Q, typename param_t, int MODE, bool DECOUPLED, bool MAXIMIZE>
struct Adam8bitBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  uint8_t* __restrict cm, uint8_t* __restrict cv,
                                  float* __restrict am, float* __restrict av,
                                  float* __restrict master, int64_t n,
                                  const AdamScalars<float>* scalars, const QTables* tables,
                                  uint32_t key, int64_t j0) {
    const AdamScalars<float> s = *scalars;
    const QTables& t = *tables;
    for (int64_t b = 0; b * kQBlock < n; ++b) {
      const int64_t o = b * kQBlock;
      const int64_t len = std::min(kQBlock, n - o);
      if (n >= kPrefetchMin && o + kPrefetchAhead + kQBlock <= n) {
        prefetch(p, g, cm, cv, master, o + kPrefetchAhead);
      }
      alignas(64) float mb[kQBlock];
      alignas(64) float vb[kQBlock];
      param_t* __restrict pb = p + o;
      const param_t* __restrict gb = g + o;
      float* __restrict mp = MODE == kMaster ? master + o : nullptr;
      // Decoded a chunk at a time, just before its update: the gathers then run beside the
      // update's divisions and square roots.
      int64_t i = 0;
      for (; i + kChunk <= len; i += kChunk) {
        Q::decode(cm + o + i, t.qmap[0], am[b], mb + i);
        Q::decode(cv + o + i, t.qmap[1], av[b], vb + i);
        update(pb, gb, mp, mb, vb, i, i + kChunk, s, key, j0 + o);
      }
      ScalarQ::decode(cm + o + i, t.qmap[0], am[b], mb + i, len - i);
      ScalarQ::decode(cv + o + i, t.qmap[1], av[b], vb + i, len - i);
      update(pb, gb, mp, mb, vb, i, len, s, key, j0 + o);
      encode(mb, len, cm + o, am + b, t.mid[0], t.table[0]);
      encode(vb, len, cv + o, av + b, t.mid[1], t.table[1]);
    }
  }

  // A block's moments, encoded: absmax, then the codes (a whole block by the table: Q's).
  FUSEDOPT_INLINE static void encode(const float* __restrict x, int64_t n, uint8_t* __restrict c,
                                     float* __restrict absmax_out, const float* __restrict mid,
                                     const EncodeTable& table) {
    if constexpr (std::is_same_v<Q, ScalarQ>) {
      ScalarQ::encode(x, n, c, absmax_out, mid, table);
    } else {
      if (n < kQBlock) return ScalarQ::encode(x, n, c, absmax_out, mid, table);
      const float mx = Q::absmax(x);
      *absmax_out = mx;
      const float r = reciprocal(mx);
      if (!by_table(table, mx, r)) return ScalarQ::codes(x, n, mx, c, mid, table);
      Q::encode(x, r, c, table);
    }
  }

  // Elements [i0, i1) of a block at element j0 of the param (mb, vb: its moments).
  FUSEDOPT_INLINE static void update(param_t* __restrict pb, const param_t* __restrict gb,
                                     float* __restrict mp, float* __restrict mb,
                                     float* __restrict vb, int64_t i0, int64_t i1,
                                     const AdamScalars<float>& s, uint32_t key, int64_t j0) {
    for (int64_t i = i0; i < i1; ++i) {
      float pi = load_param<MODE, float>(pb, mp, i);
      float mi = mb[i];
      float vi = vb[i];
      float unused = 0.f;
      adam_element<DECOUPLED, false, MAXIMIZE>(pi, static_cast<float>(gb[i]), mi, vi, unused, s);
      store_param<MODE, float>(pb, mp, i, pi, key, j0);
      mb[i] = mi;
      vb[i] = vi;
    }
  }

  // The lines of the block at element `at` of every array the step reads (Note [prefetch ahead]
  // in isa.h).
  FUSEDOPT_INLINE static void prefetch(const param_t* p, const param_t* g, const uint8_t* cm,
                                       const uint8_t* cv, const float* master, int64_t at) {
    prefetch_lines<kQBlock>(p, at);
    if (MODE == kMaster) prefetch_lines<kQBlock>(master, at);
    prefetch_lines<kQBlock>(g, at);
    prefetch_lines<kQBlock>(cm, at);
    prefetch_lines<kQBlock>(cv, at);
  }
};

// Calls Adam8bitBody<Q, ...>::run(args...) with the Q of `isa`, compiled for it.
template <typename param_t, int MODE, bool DECOUPLED, bool MAXIMIZE, class... Args>
void run_8bit(Isa isa, Args... args) {
#if FUSEDOPT_X86
  switch (isa) {
    case Isa::kAvx512:
      return run_avx512<Adam8bitBody<Avx512Q, param_t, MODE, DECOUPLED, MAXIMIZE>>(args...);
    case Isa::kAvx2:
      return run_avx2<Adam8bitBody<Avx2Q, param_t, MODE, DECOUPLED, MAXIMIZE>>(args...);
    default: break;
  }
#endif
  (void)isa;
  run_default<Adam8bitBody<ScalarQ, param_t, MODE, DECOUPLED, MAXIMIZE>>(args...);
}

}  // namespace

void adam8bit_(const ops::adam8bit_::Args& a) {
  const char* op = op_label<ops::adam8bit_>();
  // The 8-bit arguments first: Update below counts the steps.
  check_8bit_args(op, a.params, a.qmaps,
                  {{a.exp_avgs, "exp_avgs", false},
                   {a.exp_avg_sqs, "exp_avg_sqs", false},
                   {a.exp_avg_absmaxs, "exp_avg_absmaxs", true},
                   {a.exp_avg_sq_absmaxs, "exp_avg_sq_absmaxs", true}},
                  a.sr_seeds.has_value() && !a.sr_seeds->empty(), c10::kCPU);
  Update u(op, a, {});
  if (u.skip || a.params.empty()) return;

  const at::Tensor maps = a.qmaps.contiguous();
  const std::shared_ptr<const QTables> tables = cached_tables(maps.data_ptr<float>());

  const size_t n = a.params.size();
  const bool master = a.master_params.has_value() && !a.master_params->empty();
  std::vector<Staged> ps(n), gs(n), ms(n);
  std::vector<AdamScalars<float>> sc(n);
  std::vector<int64_t> first_block(n + 1, 0);  // prefix sums of the params' blocks
  for (size_t i = 0; i < n; ++i) {
    ps[i] = Staged(a.params[i], true);
    gs[i] = Staged(a.grads[i], false);
    if (master) ms[i] = Staged((*a.master_params)[i], true);
    sc[i] = i > 0 && u.steps[i] == u.steps[i - 1]
                ? sc[i - 1]
                : make_adam_scalars<float>(u.lr, u.lr_dt, a.beta1, a.beta2, a.eps, a.weight_decay,
                                           u.steps[i], u.inv_scale);
    first_block[i + 1] = first_block[i] + q8_blocks(a.params[i].numel());
  }
  const Isa isa = current_isa();

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    if constexpr (std::is_same_v<at::opmath_type<param_t>, float>) {
      auto go = [&]<bool D, bool M>() {
        // Whole blocks per task: kGrainSize elements' worth.
        at::parallel_for(0, first_block[n], kGrainSize / kQBlock, [&](int64_t b0, int64_t b1) {
          size_t i = std::upper_bound(first_block.begin(), first_block.end(), b0) -
                     first_block.begin() - 1;
          for (int64_t b = b0; b < b1; ++i) {
            const int64_t end = std::min(b1, first_block[i + 1]);
            if (end <= b) continue;
            const int64_t lb = b - first_block[i];  // the first block, in the param
            const int64_t o = lb * kQBlock;
            const int64_t len =
                std::min(end * kQBlock, first_block[i] * kQBlock + a.params[i].numel()) -
                b * kQBlock;
            float* mp = master ? ms[i].work.data_ptr<float>() + o : nullptr;
            run_8bit<param_t, MODE, D, M>(
                isa, static_cast<param_t*>(ps[i].work.data_ptr()) + o,
                static_cast<const param_t*>(gs[i].work.data_ptr()) + o,
                a.exp_avgs[i].data_ptr<uint8_t>() + o, a.exp_avg_sqs[i].data_ptr<uint8_t>() + o,
                a.exp_avg_absmaxs[i].data_ptr<float>() + lb,
                a.exp_avg_sq_absmaxs[i].data_ptr<float>() + lb, mp, len, &sc[i], tables.get(),
                MODE == kStochastic ? u.keys[i] : 0u, o);
            b = end;
          }
        });
      };
      const int mode = (a.decoupled_weight_decay ? 2 : 0) | (a.maximize ? 1 : 0);
      switch (mode) {
        case 0: go.template operator()<false, false>(); break;
        case 1: go.template operator()<false, true>(); break;
        case 2: go.template operator()<true, false>(); break;
        default: go.template operator()<true, true>(); break;
      }
    }
  });
  for (size_t i = 0; i < n; ++i) {
    ps[i].write_back();
    if (master) ms[i].write_back();
  }
}

}  // namespace fusedopt::cpu
