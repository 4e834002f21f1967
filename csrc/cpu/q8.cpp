// The encode tables (Note [encode by table] in q8.h) and the 8-bit ops' staging and work
// split.
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
