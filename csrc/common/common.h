// Helpers shared by the CPU optimizer kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
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

// Note [metadata prefetch]
// A step over thousands of small tensors reads, per tensor and list, its TensorImpl (dtype,
// device, sizes, strides) and its StorageImpl (the data pointer) before any element. After the
// previous step streamed tens of MB through the caches these are all misses, taken one after the
// other: at one thread they were ~1.3 ms of a 2.1 ms step over 2,000 x 1,024 floats. Loops over
// the lists request them ahead instead: the TensorImpl kMetaAhead tensors ahead and, since its
// storage pointer is read from the TensorImpl, the StorageImpl half as far ahead. A prefetch
// changes no result and never faults.
constexpr size_t kMetaAhead = 16;

// Requests the metadata of tensors[i + kMetaAhead] (its TensorImpl) and of
// tensors[i + kMetaAhead / 2] (its StorageImpl).
inline void prefetch_meta(at::TensorList tensors, size_t i) {
  if (i + kMetaAhead < tensors.size()) {
    const char* impl = reinterpret_cast<const char*>(tensors[i + kMetaAhead].unsafeGetTensorImpl());
    if (impl != nullptr) {
      for (size_t b = 0; b < sizeof(c10::TensorImpl); b += 64) __builtin_prefetch(impl + b);
    }
  }
  if (i + kMetaAhead / 2 < tensors.size()) {
    const c10::TensorImpl* impl = tensors[i + kMetaAhead / 2].unsafeGetTensorImpl();
    if (impl != nullptr) {
      // A tensor without storage has a null StorageImpl here: prefetching it is harmless.
      const char* s = reinterpret_cast<const char*>(impl->unsafe_storage().unsafeGetStorageImpl());
      __builtin_prefetch(s);
      __builtin_prefetch(s + 64);
    }
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
