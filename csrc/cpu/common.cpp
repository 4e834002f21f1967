#include "common.h"

namespace fusedopt::cpu {

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

}  // namespace fusedopt::cpu
