// Per-element optimizer math, written once and called by every compiled backend.
//
// Note [one definition of the math]
// Each function updates ONE element in registers: the kernels (CPU loops in csrc/cpu, CUDA
// functors in csrc/cuda) only load storage into opmath_t, call these, and store. The CPU SIMD
// paths get their vector code from the compiler vectorizing loops around these inline calls, so
// the functions are branch-free where it matters (ternaries, not ifs) and the modes are
// template parameters, never run-time flags.
//
// The operation order mirrors torch.optim's single-tensor (for-loop) implementation, so that in
// fp32 our results agree with torch's to within an ulp or two rather than to a tolerance.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDOPT_INLINE __forceinline__
#else
#define FUSEDOPT_INLINE inline __attribute__((always_inline))
#endif

namespace fusedopt {

template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T sqrt_(T x) {
  return std::sqrt(x);
}

// torch.lerp's formula (ATen Lerp.h): two forms for accuracy at either end of the weight.
// The weight is a per-tensor constant, so the branch is uniform across a loop.
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T lerp_(T self, T end, T weight) {
  return weight < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

// Per-tensor constants of an Adam step, computed once on the host in double precision.
template <typename T>
struct AdamScalars {
  T lr;                  // learning rate
  T beta1, beta2;        // EMA coefficients
  T one_minus_beta1;     // lerp weight (1 - beta1)
  T one_minus_beta2;     // (1 - beta2)
  T eps;                 //
  T weight_decay;        //
  T decay_factor;        // 1 - lr*weight_decay (decoupled decay, AdamW)
  T neg_step_size;       // -lr / (1 - beta1^t)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  T inv_grad_scale;      // 1/grad_scale for AMP (1 when no scaler)
};

// One Adam/AdamW element. DECOUPLED: AdamW-style decay on the param (else L2 added to the grad).
template <bool DECOUPLED, bool AMSGRAD, bool MAXIMIZE, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void adam_element(T& p, T g, T& m, T& v, T& vmax,
                                                  const AdamScalars<T>& s) {
  g = g * s.inv_grad_scale;
  if (MAXIMIZE) g = -g;
  if (DECOUPLED) {
    p = p * s.decay_factor;
  } else {
    g = s.weight_decay != T(0) ? g + s.weight_decay * p : g;  // 0 * inf would be NaN
  }
  m = lerp_(m, g, s.one_minus_beta1);
  v = v * s.beta2;
  v = v + s.one_minus_beta2 * g * g;  // addcmul_: self + value * t1 * t2
  T denom_src = v;
  if (AMSGRAD) {
    vmax = (vmax > v || vmax != vmax) ? vmax : v;  // torch.maximum: a NaN on either side wins
    denom_src = vmax;
  }
  const T denom = sqrt_(denom_src) / s.bias_correction2_sqrt + s.eps;
  p = p + s.neg_step_size * m / denom;  // addcdiv_: self + value * t1 / t2
}

template <typename T>
struct SgdScalars {
  T neg_lr;
  T momentum;
  T one_minus_dampening;
  T weight_decay;
  T inv_grad_scale;
};

// One SGD element. MOMENTUM: a buffer exists; FIRST: the buffer is being created this step
// (it becomes the decayed grad, as torch clones it); NESTEROV: look-ahead.
template <bool MOMENTUM, bool FIRST, bool NESTEROV, bool MAXIMIZE, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void sgd_element(T& p, T g, T& buf, const SgdScalars<T>& s) {
  g = g * s.inv_grad_scale;
  if (MAXIMIZE) g = -g;
  g = s.weight_decay != T(0) ? g + s.weight_decay * p : g;
  if (MOMENTUM) {
    buf = FIRST ? g : buf * s.momentum + s.one_minus_dampening * g;  // mul_ then add_(alpha)
    g = NESTEROV ? g + s.momentum * buf : buf;
  }
  p = p + s.neg_lr * g;
}

}  // namespace fusedopt
