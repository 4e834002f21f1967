// Helpers shared by the CPU optimizer kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "fusedopt/math.h"

namespace fusedopt {

// Note [found_inf and grad_scale]
// torch.amp.GradScaler hands fused optimizers `grad_scale` (grads are still scaled) and
// `found_inf`. When found_inf is set the step must change nothing at all: not params, not state,
// not the step counts. The CPU kernels check it before touching anything.
inline bool skip_for_found_inf(const std::optional<at::Tensor>& found_inf) {
  if (!found_inf.has_value() || !found_inf->defined()) return false;
  TORCH_CHECK(found_inf->numel() == 1, "found_inf must have one element");
  return found_inf->item<double>() != 0.0;
}

inline double inv_grad_scale(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value() || !grad_scale->defined()) return 1.0;
  TORCH_CHECK(grad_scale->numel() == 1, "grad_scale must have one element");
  return 1.0 / grad_scale->item<double>();
}

inline double scalar_value(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.numel() == 1, "Tensor ", what, " must be 1-element");
  return t.item<double>();
}

// The arithmetic of scalars derived from a Tensor lr (Note [Tensor lr arithmetic] in math.h).
inline int32_t lr_dtype(const at::Tensor& lr) {
  switch (lr.scalar_type()) {
    case at::kFloat: return kLrFloat;
    case at::kHalf: return kLrHalf;
    case at::kBFloat16: return kLrBFloat16;
    default: return kLrDouble;
  }
}

// The per-parameter `step` counters: 0-d float tensors on the CPU, as torch.optim keeps them,
// one per param (check_unshared).
void check_steps(const char* op, at::TensorList steps, size_t n);
// Rejects two entries of `tensors` (one-element tensors, one per param: step counters, SR seeds)
// at the same address: "<name>[b] shares its memory with <name>[a]: every param needs its own
// <what>". Such an entry would be incremented once per param that names it, in an order that
// differs between backends (and on a GPU, by racing threads).
void check_unshared(const char* op, const char* name, at::TensorList tensors, const char* what);
// Adds one to every counter and returns the new values (read and written through raw pointers:
// an ATen call per counter would cost more than the whole update of a small tensor).
std::vector<double> increment_steps(at::TensorList steps);
// The counters' values, unchanged (LAMB's second phase).
std::vector<double> read_steps(at::TensorList steps);

}  // namespace fusedopt
