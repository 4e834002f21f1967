#include "common.h"

#include <algorithm>
#include <utility>

namespace fusedopt {

void check_steps(const char* op, at::TensorList steps, size_t n) {
  TORCH_CHECK(steps.size() == n, op, ": expected state_steps to have ", n,
              " tensors (one per param), got ", steps.size());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.defined() && s.numel() == 1, op, ": state_steps[", i,
                "] must be a one-element tensor");
    TORCH_CHECK(s.device().is_cpu(), op, ": state_steps[", i, "] is on ", s.device(),
                ", expected cpu");
    TORCH_CHECK(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, op,
                ": state_steps[", i, "] must be float32 or float64, got ", s.scalar_type());
  }
  check_unshared(op, "state_steps", steps, "step counter");
}

void check_unshared(const char* op, const char* name, at::TensorList tensors, const char* what) {
  // Sorted pointers: a hash map cost ~100 ns per tensor, a visible part of a small step. Tensors
  // allocated one after the other often come in increasing order: then there is nothing to sort.
  const size_t n = tensors.size();
  std::vector<std::pair<const void*, size_t>> ptrs(n);
  bool increasing = true;
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = {tensors[i].data_ptr(), i};
    increasing = increasing && (i == 0 || ptrs[i - 1].first < ptrs[i].first);
  }
  if (increasing) return;
  std::sort(ptrs.begin(), ptrs.end());
  for (size_t k = 1; k < n; ++k) {
    if (ptrs[k].first == ptrs[k - 1].first) {
      const size_t a = std::min(ptrs[k].second, ptrs[k - 1].second);
      const size_t b = std::max(ptrs[k].second, ptrs[k - 1].second);
      TORCH_CHECK(false, op, ": ", name, "[", b, "] shares its memory with ", name, "[", a,
                  "]: every param needs its own ", what);
    }
  }
}

std::vector<double> increment_steps(at::TensorList steps) {
  std::vector<double> out(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    if (s.scalar_type() == at::kFloat) {
      float* v = s.data_ptr<float>();
      *v += 1.0f;
      out[i] = *v;
    } else {
      double* v = s.data_ptr<double>();
      *v += 1.0;
      out[i] = *v;
    }
  }
  return out;
}

std::vector<double> read_steps(at::TensorList steps) {
  std::vector<double> out(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    out[i] = s.scalar_type() == at::kFloat ? *s.data_ptr<float>() : *s.data_ptr<double>();
  }
  return out;
}

}  // namespace fusedopt
