// The host plan of adafactor_ on the CUDA backend and its simulation (adafactor.cpp): the
// params' tensors staged dense, their slots for the kernels (adafactor_kernels.h), the scratch.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "adafactor_kernels.h"
#include "fusedopt/ops_generated.h"
#include "jobs.h"

namespace fusedopt::cuda {

struct AdafactorPlan {
  Job job;
  std::vector<AfSlot> slots;  // the non-empty params, in list order
  int64_t chunk = 0, group = 0;
  at::Tensor part, colpart, rowsum, rpart, neg_step;    // fp64 scratch (AdafactorArgs)
  std::vector<std::pair<at::Tensor, at::Tensor>> back;  // (destination, staged dense copy)
  std::vector<at::Tensor> keep;                         // staged read-only copies

  // After the op's checks: tiles every non-empty param (Note [Adafactor on the GPU]).
  AdafactorPlan(const ops::adafactor_::Args& a, const StepList& steps, const ExecConfig& cfg,
                c10::Device device);
  // The scratch pointers set in `args`.
  void bind(AdafactorArgs& args) const;
  void copy_back() const;
};

}  // namespace fusedopt::cuda
