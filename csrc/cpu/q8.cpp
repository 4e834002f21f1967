// The encode tables (Note [encode by table] in q8.h) and the 8-bit ops' shared checks and
// work split.
#include "q8.h"

#include <mutex>

namespace fusedopt::cpu::q8 {
namespace {

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
    std::memcpy(t->qmap[r], q + r * kBlock, sizeof t->qmap[r]);
    for (int k = 0; k + 1 < kBlock; ++k) {
      t->mid[r][k] = (t->qmap[r][k] + t->qmap[r][k + 1]) * 0.5f;
    }
    t->mid[r][kBlock - 1] = std::numeric_limits<float>::infinity();
    t->table[r].bits = 0;
    for (int bits = 5; bits <= kMaxBits && !build_table(t->table[r], t->mid[r], bits); ++bits) {
    }
  }
  return t;
}

}  // namespace

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

void check(const char* op, const at::Tensor& qmaps, at::TensorList params,
           const std::vector<AuxList>& lists, bool stochastic) {
  TORCH_CHECK(qmaps.scalar_type() == at::kFloat && qmaps.dim() == 2 && qmaps.size(0) == 2 &&
                  qmaps.size(1) == kBlock && qmaps.is_cpu(),
              op, ": qmaps must be a float32 CPU tensor of shape (2, 256), got ",
              qmaps.scalar_type(), " ", qmaps.sizes());
  for (const AuxList& l : lists) {
    const at::ScalarType dtype = l.blocks ? at::kFloat : at::kByte;
    TORCH_CHECK(l.tensors.size() == params.size(), op, ": expected ", l.name, " to have ",
                params.size(), " tensors (one per param), got ", l.tensors.size());
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      const bool ok_shape = l.blocks ? (t.dim() == 1 && t.size(0) == num_blocks(params[i].numel()))
                                     : t.sizes().equals(params[i].sizes());
      TORCH_CHECK(t.scalar_type() == dtype && ok_shape && t.is_contiguous() && t.is_cpu(), op, ": ",
                  l.name, "[", i, "] must be a contiguous ", dtype, " CPU tensor of ",
                  l.blocks ? "one element per block of 256" : "the param's shape", ", got ",
                  t.scalar_type(), " ", t.sizes());
    }
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
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
}

Staged::Staged(const at::Tensor& t, bool written) {
  if (t.is_contiguous()) {
    work = t;
  } else {
    work = t.contiguous();
    if (written) dest = t;
  }
}

Step::Step(at::TensorList params, at::TensorList grads,
           const std::optional<at::TensorList>& master_params, const at::Tensor& qmaps) {
  const size_t n = params.size();
  const bool master = master_params.has_value() && !master_params->empty();
  ps_.resize(n);
  gs_.resize(n);
  if (master) ms_.resize(n);
  first_block_.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    ps_[i] = Staged(params[i], true);
    gs_[i] = Staged(grads[i], false);
    if (master) ms_[i] = Staged((*master_params)[i], true);
    first_block_[i + 1] = first_block_[i] + num_blocks(params[i].numel());
  }
  const at::Tensor maps = qmaps.contiguous();
  tables_ = cached_tables(maps.data_ptr<float>());
}

void Step::write_back() const {
  for (const Staged& s : ps_) s.write_back();
  for (const Staged& s : ms_) s.write_back();
}

}  // namespace fusedopt::cpu::q8
