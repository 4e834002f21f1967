// The per-op arguments of the CUDA kernels (besides the launch table): hyperparameters as the
// op received them, and the scalars read on the device (Note [scalars on the device]). The
// per-element constants are derived from them per block, in double, as the CPU kernels derive
// them per call (functors.h).
#pragma once

#include <cstdint>

#include "kernel_table.h"

namespace fusedopt::cuda {

// The int32_t mode flags are read by the functors whose template leaves them to run time (the
// mixed-precision combinations: Note [mixed precision on the GPU] in functors.h); the dispatchers
// set them from the op's arguments.
struct AdamParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay, eps;
  int32_t decoupled, maximize;
};

struct SgdParams {
  ScalarArg lr, grad_scale, found_inf;
  double momentum, dampening, weight_decay;
  int32_t nesterov, maximize;
};

struct LionParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay;
  int32_t maximize;
};

struct SophiaParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, rho, bs, weight_decay;
  int32_t maximize;
};

struct SophiaHessianParams {
  ScalarArg grad_scale, found_inf;
  double beta2;
};

// LAMB's two passes share these (Note [LAMB passes] in csrc/cpu/lamb.cpp, and the LAMB
// functors in functors.h).
struct LambParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay, eps;
  double trust_clip;
  int32_t bias_correction;
  int32_t has_trust_clip;
  int32_t maximize;
  int32_t steps_done;            // the counters already hold this step (phase 2)
  int32_t finish_sums;           // pass 1 stores the sums of squares, not their roots (phase 1)
  double* partials;              // [global block][2]: sums of p^2 and u^2
  unsigned long long* counters;  // [param]: blocks done (Note [multi-tensor reductions])
  double* norms;                 // [param][2]: ||p||, ||u|| (pass 1 writes, pass 2 reads them)
};

struct SumSqParams {
  double* partials;  // [global block]
};

}  // namespace fusedopt::cuda
