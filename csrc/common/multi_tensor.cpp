#include "multi_tensor.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace fusedopt {
namespace {

bool dense_with_strides(const at::Tensor& t, at::IntArrayRef strides) {
  return t.strides() == strides && t.is_non_overlapping_and_dense();
}

}  // namespace

MultiTensor::MultiTensor(const char* op, std::vector<ListSpec> lists, c10::Device device)
    : op_(op), device_(device), lists_(std::move(lists)) {
  TORCH_CHECK(!lists_.empty() && lists_.size() <= kMaxLists, op_, ": bad number of lists");
  const auto& params = lists_[0].tensors;
  const size_t n = params.size();
  for (const auto& l : lists_) {
    TORCH_CHECK(l.tensors.size() == n, op_, ": expected ", l.name, " to have ", n,
                " tensors (one per param), got ", l.tensors.size());
  }
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    // One dtype per call: the kernel is instantiated for params[0]'s dtype and would read any
    // other param's memory with the wrong element size.
    TORCH_CHECK(p.scalar_type() == params[0].scalar_type(), op_, ": params[", i, "] has dtype ",
                p.scalar_type(), " but params[0] has dtype ", params[0].scalar_type(),
                " (call the op once per dtype)");
    const auto st = p.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                op_, ": params[", i, "] has dtype ", st,
                "; supported: float32, float64, float16, bfloat16");
    for (const auto& l : lists_) {
      const at::Tensor& t = l.tensors[i];
      TORCH_CHECK(t.defined(), op_, ": ", l.name, "[", i, "] is undefined");
      TORCH_CHECK(t.layout() == at::kStrided, op_, ": ", l.name, "[", i,
                  "] is sparse; fused optimizers do not support sparse tensors");
      if (device_.is_cpu()) {
        TORCH_CHECK(t.device().is_cpu(), op_, ": ", l.name, "[", i, "] is on ", t.device(),
                    ", expected cpu (this is the CPU kernel)");
      } else {
        TORCH_CHECK(t.device() == device_, op_, ": ", l.name, "[", i, "] is on ", t.device(),
                    ", expected ", device_, " (the device of params[0])");
      }
      if (l.dtype.has_value()) {
        TORCH_CHECK(t.scalar_type() == *l.dtype, op_, ": ", l.name, "[", i, "] has dtype ",
                    t.scalar_type(), ", expected ", *l.dtype);
      } else {
        TORCH_CHECK(t.scalar_type() == p.scalar_type(), op_, ": ", l.name, "[", i, "] has dtype ",
                    t.scalar_type(), " but its param has dtype ", p.scalar_type());
      }
      TORCH_CHECK(t.sizes() == p.sizes(), op_, ": ", l.name, "[", i, "] has shape ", t.sizes(),
                  " but its param has shape ", p.sizes());
      // A written tensor whose elements share memory (an expanded state tensor) has no
      // well-defined in-place result; refuse it here, before anything is written.
      TORCH_CHECK(!l.written || at::has_internal_overlap(t) != at::MemOverlap::Yes, op_, ": ",
                  l.name, "[", i,
                  "] has elements that share memory (e.g. an expanded tensor) "
                  "and cannot be updated in place");
    }
  }
  stage();
}

void MultiTensor::stage() {
  const auto& params = lists_[0].tensors;
  int64_t total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    if (numel == 0) continue;  // nothing to do, and no pointer of it is ever formed
    FlatTuple t;
    t.numel = numel;
    t.index = static_cast<int64_t>(i);
    // The reference layout: the param's own if it is dense, else a contiguous staging copy.
    // Pointers, not Tensor copies: with thousands of small tensors the reference-count traffic
    // of a copy per list and tensor is a measurable part of the step.
    const at::Tensor* ref = &params[i];
    at::Tensor staged_param;  // the staging copy, when the param is not dense
    if (!ref->is_non_overlapping_and_dense()) {
      staged_param = ref->contiguous();
      if (lists_[0].written) {
        writeback_.emplace_back(*ref, staged_param);
      } else {
        keep_alive_.push_back(staged_param);
      }
      ref = &staged_param;
    }
    t.ptr[0] = ref->data_ptr();
    for (size_t k = 1; k < lists_.size(); ++k) {
      const at::Tensor& x = lists_[k].tensors[i];
      if (dense_with_strides(x, ref->strides())) {
        t.ptr[k] = x.data_ptr();
        continue;
      }
      at::Tensor staged = at::empty_like(*ref, ref->options().dtype(x.scalar_type()));
      staged.copy_(x);
      t.ptr[k] = staged.data_ptr();
      if (lists_[k].written) {
        writeback_.emplace_back(x, std::move(staged));
      } else {
        keep_alive_.push_back(std::move(staged));
      }
    }
    total += numel;
    tuples_.push_back(t);
    offsets_.push_back(total);
  }
}

void MultiTensor::join_adjacent(const std::function<bool(int64_t, int64_t)>& joinable) {
  TORCH_CHECK(pieces_.empty(), op_, ": join_adjacent() after reduce()");
  if (tuples_.size() < 2) return;
  std::array<int64_t, kMaxLists> size{};
  for (size_t k = 0; k < lists_.size(); ++k) {
    size[k] = static_cast<int64_t>(lists_[k].tensors[tuples_[0].index].element_size());
  }
  size_t out = 0;
  int64_t last = tuples_[0].index;  // the param last joined into tuples_[out]
  for (size_t i = 1; i < tuples_.size(); ++i) {
    FlatTuple& run = tuples_[out];
    const FlatTuple& t = tuples_[i];
    bool adjacent = joinable(last, t.index);
    for (size_t k = 0; adjacent && k < lists_.size(); ++k) {
      adjacent = static_cast<char*>(run.ptr[k]) + run.numel * size[k] == t.ptr[k];
    }
    if (adjacent) {
      run.numel += t.numel;
    } else {
      tuples_[++out] = t;
    }
    offsets_[out] = offsets_[i];
    last = t.index;
  }
  tuples_.resize(out + 1);
  offsets_.resize(out + 1);
}

void MultiTensor::run(const std::function<void(const FlatTuple&, int64_t, int64_t)>& fn) {
  const int64_t total = total_numel();
  if (total > 0) {
    at::parallel_for(0, total, kGrainSize, [&](int64_t begin, int64_t end) {
      // First tuple whose inclusive end is past `begin`.
      size_t i = std::upper_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin();
      while (begin < end && i < tuples_.size()) {
        const int64_t start = offsets_[i] - tuples_[i].numel;
        const int64_t lo = begin - start;
        const int64_t hi = std::min(end, offsets_[i]) - start;
        fn(tuples_[i], lo, hi);
        begin = start + hi;
        ++i;
      }
    });
  }
  copy_back();
}

void MultiTensor::copy_back() {
  for (auto& [dst, staged] : writeback_) dst.copy_(staged);
}

void MultiTensor::split_into_pieces() {
  const int64_t total = total_numel();
  const int64_t blocks = (total + kGrainSize - 1) / kGrainSize;
  block_pieces_.assign(static_cast<size_t>(blocks) + 1, 0);
  for (size_t i = 0; i < tuples_.size(); ++i) {
    const int64_t start = offsets_[i] - tuples_[i].numel;
    for (int64_t pos = start; pos < offsets_[i];) {
      const int64_t block = pos / kGrainSize;
      const int64_t end = std::min(offsets_[i], (block + 1) * kGrainSize);
      pieces_.push_back({i, pos - start, end - start});
      block_pieces_[block + 1] = pieces_.size();
      pos = end;
    }
  }
}

std::vector<double> MultiTensor::reduce(
    int width, const std::function<void(const FlatTuple&, int64_t, int64_t, double*)>& fn) {
  TORCH_CHECK(width > 0, op_, ": bad reduction width");
  std::vector<double> totals(tuples_.size() * width, 0.0);
  if (total_numel() > 0) {
    if (pieces_.empty()) split_into_pieces();
    std::vector<double> partials(pieces_.size() * width, 0.0);
    const int64_t blocks = static_cast<int64_t>(block_pieces_.size()) - 1;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (size_t k = block_pieces_[b0]; k < block_pieces_[b1]; ++k) {
        const Piece& piece = pieces_[k];
        fn(tuples_[piece.tuple], piece.lo, piece.hi, &partials[k * width]);
      }
    });
    for (size_t k = 0; k < pieces_.size(); ++k) {
      for (int w = 0; w < width; ++w) {
        totals[pieces_[k].tuple * width + w] += partials[k * width + w];
      }
    }
  }
  copy_back();
  return totals;
}

}  // namespace fusedopt
