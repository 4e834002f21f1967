// The per-op arguments of the CUDA kernels (besides the launch table): hyperparameters as the
// op received them, and the scalars read on the device (Note [scalars on the device]). The
// per-element constants are derived from them per block, in double, as the CPU kernels derive
// them per call (functors.h).
#pragma once

#include <cstdint>

#include "kernel_table.h"

namespace fusedopt::cuda {

struct AdamParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay, eps;
};

struct SgdParams {
  ScalarArg lr, grad_scale, found_inf;
  double momentum, dampening, weight_decay;
};

struct LionParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay;
};

struct SophiaParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, rho, bs, weight_decay;
};

struct SophiaHessianParams {
  ScalarArg grad_scale, found_inf;
  double beta2;
};

// LAMB's two passes share these (Note [LAMB passes] in csrc/cpu/lamb.cpp).
struct LambParams {
  ScalarArg lr, grad_scale, found_inf;
  double beta1, beta2, weight_decay, eps;
  double trust_clip;
  int32_t bias_correction;
  int32_t has_trust_clip;
  double* partials;              // [global block][2]: sums of p^2 and u^2
  unsigned long long* counters;  // [param]: blocks done (Note [multi-tensor reductions])
  double* neg_steps;             // [param]: -lr * trust ratio, written by pass 1's last blocks
  double* norms;                 // [param][2]: ||p||, ||u||
};

struct SumSqParams {
  double* partials;  // [global block]
};

}  // namespace fusedopt::cuda
