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
#include <type_traits>
#include <vector>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

constexpr int64_t kQBlock = 256;

int64_t num_blocks(int64_t n) { return (n + kQBlock - 1) / kQBlock; }

// Note [encode by table]
// The code of x is the number of midpoints below x (Note [8-bit states]); eight halvings of a
// binary search find it, at eight dependent table reads per element. For |x| <= 1 (every
// block with a finite absmax) one read does: the floats that share their sign, their exponent
// (those below 2^-24 all together) and their top `bits` mantissa bits form a bucket, and where
// no bucket holds two midpoints, the code of x is its bucket's count of midpoints below it,
// plus one if x lies above the bucket's midpoint. Inside a bucket that comparison is one of the
// low mantissa bits (reversed for negative x). Each entry packs count << 18 | threshold, the
// value of the low bits from which x counts the midpoint (2^low_bits: none). The tables are
// built and checked against the search for every bucket, per call; for a map where buckets of
// 8 bits still hold two midpoints there is no table and the search runs. The result is the
// search's, bit for bit.
constexpr int kRows = 26;    // the exponents 103..127 (|x| in [2^-24, 1]), and all below
constexpr int kMaxBits = 8;  // mantissa bits of a bucket
constexpr int kCountShift = 18;

struct EncodeTable {
  int bits = 0;  // 0: no table
  alignas(64) int32_t entry[2 * kRows << kMaxBits];
};

// The maps (decode), their search keys (encode: the midpoints, +inf last) and tables, per call.
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
        // The bucket's magnitudes [lo, hi]: row 0 is every float below 2^-24 (its top 0 only).
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

void build_tables(QTables& q) {
  for (int r = 0; r < 2; ++r) {
    q.table[r].bits = 0;
    for (int bits = 5; bits <= kMaxBits && !build_table(q.table[r], q.mid[r], bits); ++bits) {
    }
  }
}

// One block's moments, encoded: absmax (NaN if the block holds one), then each value's code,
// the number of midpoints below value * (1 / absmax) (Note [encode by table]).
FUSEDOPT_INLINE void encode_block(const float* __restrict x, int64_t n, uint8_t* __restrict codes,
                                  float* __restrict absmax, const float* __restrict mid,
                                  const EncodeTable& table) {
  // |x| as bits orders as |x| does, NaN above +inf: an integer max (which the compiler
  // vectorizes) is the largest |x|, NaN if the block holds one (as torch.amax).
  uint32_t top_bits = 0;
  for (int64_t i = 0; i < n; ++i) top_bits = std::max(top_bits, to_bits(x[i]) & 0x7FFFFFFFu);
  const float mx = from_bits(top_bits);
  *absmax = mx;
  const float r = 1.f / (mx == 0.f ? 1.f : mx);
  const int bits = table.bits;
  if (bits == 0 || !(mx <= std::numeric_limits<float>::max())) {  // no table, or inf/NaN
    for (int64_t j = 0; j < n; ++j) codes[j] = static_cast<uint8_t>(search(mid, x[j] * r));
    return;
  }
  const uint32_t low_bits = 23 - bits;
  const uint32_t low_mask = (1u << low_bits) - 1;
  const uint32_t top_mask = (1u << bits) - 1;
  const int32_t* __restrict entry = table.entry;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = to_bits(x[j] * r);
    const uint32_t sign = u >> 31;
    const uint32_t e = (u >> 23) & 0xFFu;
    const uint32_t row = e < 103 ? 0u : e - 102;
    const uint32_t top = e < 103 ? 0u : (u >> low_bits) & top_mask;
    const int32_t ent = entry[((sign * kRows + row) << bits) + top];
    const uint32_t low = (u & low_mask) ^ (low_mask & (0u - sign));
    codes[j] = static_cast<uint8_t>(
        (ent >> kCountShift) + (static_cast<int32_t>(low) >= (ent & ((1 << kCountShift) - 1))));
  }
}

// The blocks of one param from element 0 of the pointers (a multiple of kQBlock into the
// tensor), n elements; am/av its blocks' absmax.
template <typename param_t, int MODE, bool DECOUPLED, bool MAXIMIZE>
struct Adam8bitBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  uint8_t* __restrict cm, uint8_t* __restrict cv,
                                  float* __restrict am, float* __restrict av,
                                  float* __restrict master, int64_t n,
                                  const AdamScalars<float>* scalars, const QTables* tables,
                                  uint32_t key, int64_t j0) {
    const AdamScalars<float> s = *scalars;
    const QTables& t = *tables;
    // Plain pointers, so that the compiler gathers through them.
    const float* __restrict qm = t.qmap[0];
    const float* __restrict qv = t.qmap[1];
    for (int64_t b = 0; b * kQBlock < n; ++b) {
      const int64_t o = b * kQBlock;
      const int64_t len = std::min(kQBlock, n - o);
      alignas(64) float mb[kQBlock];
      alignas(64) float vb[kQBlock];
      const float dm = am[b];
      const float dv = av[b];
      // Separate loops, each simple enough for the compiler to vectorize (the decode and the
      // encode with gathers).
      const uint8_t* __restrict bm = cm + o;
      const uint8_t* __restrict bv = cv + o;
      for (int64_t i = 0; i < len; ++i) {
        mb[i] = qm[bm[i]] * dm;
        vb[i] = qv[bv[i]] * dv;
      }
      param_t* __restrict pb = p + o;
      const param_t* __restrict gb = g + o;
      float* __restrict mp = MODE == kMaster ? master + o : nullptr;
      for (int64_t i = 0; i < len; ++i) {
        float pi = load_param<MODE, float>(pb, mp, i);
        float mi = mb[i];
        float vi = vb[i];
        float unused = 0.f;
        adam_element<DECOUPLED, false, MAXIMIZE>(pi, static_cast<float>(gb[i]), mi, vi, unused, s);
        store_param<MODE, float>(pb, mp, i, pi, key, j0 + o);
        mb[i] = mi;
        vb[i] = vi;
      }
      encode_block(mb, len, cm + o, am + b, t.mid[0], t.table[0]);
      encode_block(vb, len, cv + o, av + b, t.mid[1], t.table[1]);
    }
  }
};

// The contiguous tensor a kernel works on for `t`: t itself, or a copy written back after.
struct Staged {
  at::Tensor work;
  at::Tensor dest;  // defined when `work` is a copy to write back

  Staged() = default;
  Staged(const at::Tensor& t, bool written) {
    if (t.is_contiguous()) {
      work = t;
    } else {
      work = t.contiguous();
      if (written) dest = t;
    }
  }
  void write_back() const {
    if (dest.defined()) dest.copy_(work);
  }
};

void check_list(const char* op, at::TensorList params, at::TensorList list, const char* name,
                at::ScalarType dtype, bool blocks) {
  TORCH_CHECK(list.size() == params.size(), op, ": expected ", name, " to have ", params.size(),
              " tensors (one per param), got ", list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    const bool ok_shape = blocks ? (t.dim() == 1 && t.size(0) == num_blocks(params[i].numel()))
                                 : t.sizes().equals(params[i].sizes());
    TORCH_CHECK(t.scalar_type() == dtype && ok_shape && t.is_contiguous() && t.is_cpu(), op, ": ",
                name, "[", i, "] must be a contiguous ", dtype, " CPU tensor of ",
                blocks ? "one element per block of 256" : "the param's shape", ", got ",
                t.scalar_type(), " ", t.sizes());
  }
}

}  // namespace

void adam8bit_(const ops::adam8bit_::Args& a) {
  const char* op = op_label<ops::adam8bit_>();
  // The 8-bit arguments first: Update below counts the steps.
  const at::Tensor& qmaps = a.qmaps;
  TORCH_CHECK(qmaps.scalar_type() == at::kFloat && qmaps.dim() == 2 && qmaps.size(0) == 2 &&
                  qmaps.size(1) == kQBlock && qmaps.is_cpu(),
              op, ": qmaps must be a float32 CPU tensor of shape (2, 256), got ",
              qmaps.scalar_type(), " ", qmaps.sizes());
  check_list(op, a.params, a.exp_avgs, "exp_avgs", at::kByte, false);
  check_list(op, a.params, a.exp_avg_sqs, "exp_avg_sqs", at::kByte, false);
  check_list(op, a.params, a.exp_avg_absmaxs, "exp_avg_absmaxs", at::kFloat, true);
  check_list(op, a.params, a.exp_avg_sq_absmaxs, "exp_avg_sq_absmaxs", at::kFloat, true);
  const bool stochastic = a.sr_seeds.has_value() && !a.sr_seeds->empty();
  for (size_t i = 0; i < a.params.size(); ++i) {
    const at::Tensor& p = a.params[i];
    const at::ScalarType dt = p.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                ": 8-bit states need float32, bfloat16 or float16 params; params[", i, "] is ", dt);
    // Stochastic rounding's noise follows the param's memory order, the blocks its row-major
    // order: a dense param in another layout would need both at once.
    TORCH_CHECK_NOT_IMPLEMENTED(
        !stochastic || p.is_contiguous() || p.numel() <= 1 || !p.is_non_overlapping_and_dense(), op,
        ": stochastic rounding of a param that is dense but not "
        "contiguous with 8-bit states (params[",
        i, "])");
  }
  Update u(op, a, {});
  if (u.skip || a.params.empty()) return;

  QTables tables;
  const at::Tensor maps = qmaps.contiguous();
  const float* q = maps.data_ptr<float>();
  for (int r = 0; r < 2; ++r) {
    for (int k = 0; k < kQBlock; ++k) tables.qmap[r][k] = q[r * kQBlock + k];
    for (int k = 0; k + 1 < kQBlock; ++k) {
      tables.mid[r][k] = (tables.qmap[r][k] + tables.qmap[r][k + 1]) * 0.5f;
    }
    tables.mid[r][kQBlock - 1] = std::numeric_limits<float>::infinity();
  }
  build_tables(tables);

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
    first_block[i + 1] = first_block[i] + num_blocks(a.params[i].numel());
  }
  const Isa isa = current_isa();

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    if constexpr (std::is_same_v<at::opmath_type<param_t>, float>) {
      auto go = [&]<bool D, bool M>() {
        using Body = Adam8bitBody<param_t, MODE, D, M>;
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
            run_isa<Body>(isa, static_cast<param_t*>(ps[i].work.data_ptr()) + o,
                          static_cast<const param_t*>(gs[i].work.data_ptr()) + o,
                          a.exp_avgs[i].data_ptr<uint8_t>() + o,
                          a.exp_avg_sqs[i].data_ptr<uint8_t>() + o,
                          a.exp_avg_absmaxs[i].data_ptr<float>() + lb,
                          a.exp_avg_sq_absmaxs[i].data_ptr<float>() + lb, mp, len, &sc[i], &tables,
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
