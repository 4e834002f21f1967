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
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fusedopt/mixed_generated.h"

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

// torch.lerp's formula (ATen Lerp.h): two forms for accuracy at either end of the weight, the
// first for |weight| < 0.5 (Schedule-Free's eval() weight 1 - 1/beta1 is negative). The weight
// is a per-tensor constant, so the branch is uniform across a loop.
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T lerp_(T self, T end, T weight) {
  return weight < T(0.5) && weight > T(-0.5) ? self + weight * (end - self)
                                             : end - (end - self) * (T(1) - weight);
}

// Note [Tensor lr arithmetic]
// torch.optim keeps a Tensor lr as a 0-d tensor, so the scalars it derives from the lr (AdamW's
// 1 - lr*wd, Adam's lr/(1 - beta1^t)) are tensor ops in the lr's dtype: the Python float operand
// is cast to the op's math type (fp32, or fp64 for an fp64 lr), the result is rounded to the lr's
// dtype. A float lr is plain fp64 arithmetic (fusedopt passes it as an fp64 tensor). Computing in
// fp64 instead changes an fp64 param's update by up to 6e-8 of it; with a bf16 lr, torch's
// 1 - lr*wd even rounds to 1. fusedopt.reference.lr_arith is the definition.
enum LrDtype : int32_t { kLrDouble, kLrFloat, kLrHalf, kLrBFloat16 };

// The operand of an lr op as the op's math type holds it. Sums, products and quotients of two
// such operands, computed in double and rounded to float, are the correctly rounded fp32 results.
C10_HOST_DEVICE inline double lr_operand(double x, int32_t dt) {
  return dt == kLrDouble ? x : static_cast<double>(static_cast<float>(x));
}

// An lr op's result, computed in double, as the 0-d tensor of the lr's dtype stores it (fp16 and
// bf16 round from the fp32 math result, as torch does).
C10_HOST_DEVICE inline double lr_store(double x, int32_t dt) {
  switch (dt) {
    case kLrFloat: return static_cast<float>(x);
    case kLrHalf: return static_cast<float>(c10::Half(static_cast<float>(x)));
    case kLrBFloat16: return static_cast<float>(c10::BFloat16(static_cast<float>(x)));
    default: return x;
  }
}

// 1 - lr*weight_decay, the decoupled decay factor, in the lr's arithmetic.
C10_HOST_DEVICE inline double lr_decay_factor(double lr, int32_t dt, double weight_decay) {
  return lr_store(1.0 - lr_store(lr * lr_operand(weight_decay, dt), dt), dt);
}

// Per-tensor constants of an Adam step, computed once on the host in double precision.
template <typename T>
struct AdamScalars {
  T lr;                     // learning rate
  T beta1, beta2;           // EMA coefficients
  T one_minus_beta1;        // lerp weight (1 - beta1)
  T one_minus_beta2;        // (1 - beta2)
  T eps;                    //
  T weight_decay;           //
  T decay_factor;           // 1 - lr*weight_decay (decoupled decay, AdamW)
  T neg_step_size;          // -lr / (1 - beta1^t)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  T inv_grad_scale;         // 1/grad_scale for AMP (1 when no scaler)
};

// Note [per-tensor scalars]
// The make_*_scalars functions turn a step's hyper-parameters into the constants the element
// math uses, in double as torch.optim computes them, then rounded once to opmath_t. The CPU ops
// (once per tensor on the host) and the CUDA functors (once per block, on the device) both call
// them, so the two backends cannot drift apart.
template <typename T>
C10_HOST_DEVICE inline AdamScalars<T> make_adam_scalars(double lr, int32_t lr_dt, double beta1,
                                                        double beta2, double eps,
                                                        double weight_decay, double step,
                                                        double inv_grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2 = 1.0 - std::pow(beta2, step);
  AdamScalars<T> s;
  s.lr = static_cast<T>(lr);
  s.beta1 = static_cast<T>(beta1);
  s.beta2 = static_cast<T>(beta2);
  s.one_minus_beta1 = static_cast<T>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  s.eps = static_cast<T>(eps);
  s.weight_decay = static_cast<T>(weight_decay);
  s.decay_factor = static_cast<T>(lr_decay_factor(lr, lr_dt, weight_decay));
  s.neg_step_size = static_cast<T>(-lr_store(lr / lr_operand(bc1, lr_dt), lr_dt));
  s.bias_correction2_sqrt = static_cast<T>(std::sqrt(bc2));
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

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
  // torch divides by sqrt(1 - beta2^t); we multiply by its reciprocal (a loop invariant the
  // compiler hoists): within an ulp of torch's denom, and one vector division fewer per element,
  // which on the CPU is the difference between compute- and memory-bound for bf16 params.
  const T denom = sqrt_(denom_src) * (T(1) / s.bias_correction2_sqrt) + s.eps;
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

// See Note [per-tensor scalars].
template <typename T>
C10_HOST_DEVICE inline SgdScalars<T> make_sgd_scalars(double lr, double momentum, double dampening,
                                                      double weight_decay, double inv_grad_scale) {
  SgdScalars<T> s;
  s.neg_lr = static_cast<T>(-lr);
  s.momentum = static_cast<T>(momentum);
  s.one_minus_dampening = static_cast<T>(1.0 - dampening);
  s.weight_decay = static_cast<T>(weight_decay);
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

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

// torch.sign: -1, 0 or +1, and 0 for NaN (as ATen's CPU and CUDA kernels compute it).
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T sign_(T x) {
  return T(x > T(0)) - T(x < T(0));
}

template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T abs_(T x) {
  return std::abs(x);
}

template <typename T>
struct LionScalars {
  T neg_lr;  // -lr
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;
  T decay_factor;  // 1 - lr*weight_decay (decoupled)
  T inv_grad_scale;
};

// See Note [per-tensor scalars].
template <typename T>
C10_HOST_DEVICE inline LionScalars<T> make_lion_scalars(double lr, int32_t lr_dt, double beta1,
                                                        double beta2, double weight_decay,
                                                        double inv_grad_scale) {
  LionScalars<T> s;
  s.neg_lr = static_cast<T>(-lr);
  s.beta1 = static_cast<T>(beta1);
  s.one_minus_beta1 = static_cast<T>(1.0 - beta1);
  s.beta2 = static_cast<T>(beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  s.decay_factor = static_cast<T>(lr_decay_factor(lr, lr_dt, weight_decay));
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

// One Lion element (Chen et al., 2023). The order is lion-pytorch's:
//   p *= 1 - lr*wd;  c = beta1*m + (1-beta1)*g;  p += -lr*sign(c);  m = beta2*m + (1-beta2)*g.
// sign(c) is discontinuous at 0: where c is within rounding of 0, backends computing c in
// different precisions may step in different directions (the tests bound how often).
template <bool MAXIMIZE, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void lion_element(T& p, T g, T& m, const LionScalars<T>& s) {
  g = g * s.inv_grad_scale;
  if (MAXIMIZE) g = -g;
  p = p * s.decay_factor;
  const T c = m * s.beta1 + s.one_minus_beta1 * g;  // mul(beta1).add(g, alpha=1-beta1)
  p = p + s.neg_lr * sign_(c);                      // add_(sign(c), alpha=-lr)
  m = m * s.beta2 + s.one_minus_beta2 * g;
}

// LAMB (You et al., 2020) is split in three pieces because the trust ratio ||p||/||u|| needs
// the whole tensor before any element of p may change (Note [LAMB passes] in cpu/lamb.cpp):
// the norm pass and the update pass both compute u with these functions from the same inputs,
// so the norms belong to the u that is applied, bit for bit.
template <typename T>
struct LambScalars {
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;
  T bias_correction1;  // 1 - beta1^t, or 1 without bias correction
  T bias_correction2;  // 1 - beta2^t, or 1
  T eps;
  T weight_decay;
  T inv_grad_scale;  // 1/grad_scale (which carries the max_grad_norm clip factor too)
};

template <bool MAXIMIZE, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void lamb_moments(T g, T& m, T& v, const LambScalars<T>& s) {
  g = g * s.inv_grad_scale;
  if (MAXIMIZE) g = -g;
  m = m * s.beta1 + s.one_minus_beta1 * g;      // mul(beta1).add(g, alpha=1-beta1)
  v = v * s.beta2 + s.one_minus_beta2 * g * g;  // mul(beta2).addcmul(g, g, value=1-beta2)
}

// u = (m/bc1) / (sqrt(v/bc2) + eps) + wd*p
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T lamb_direction(T p, T m, T v, const LambScalars<T>& s) {
  const T u = (m / s.bias_correction1) / (sqrt_(v / s.bias_correction2) + s.eps);
  return s.weight_decay != T(0) ? u + s.weight_decay * p : u;  // 0 * inf would be NaN
}

// p = p - lr*r*u, with neg_step = -(lr*r) for this tensor.
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void lamb_apply(T& p, T u, T neg_step) {
  p = p + neg_step * u;
}

template <typename T>
struct ScheduleFreeScalars {
  T beta2, one_minus_beta2;
  T bias_correction2;  // 1 - beta2^(k+1)
  T eps;
  T weight_decay;
  T ckp1;            // the weight of the new point in the average x (a lerp weight)
  T y_step;          // lr*(beta1*(1 - ckp1) - 1), lr the warmed-up one
  T neg_lr;          // -lr
  T inv_grad_scale;  // 1/grad_scale (which carries the max_grad_norm clip factor too)
};

// See Note [per-tensor scalars]. lr is the warmed-up lr (lr*sched, computed by the optimizer in
// fp64); the y coefficient is schedulefree's Python float arithmetic (fp64), rounded once.
template <typename T>
C10_HOST_DEVICE inline ScheduleFreeScalars<T> make_schedule_free_scalars(
    double scheduled_lr, double beta1, double beta2, double eps, double weight_decay, double ckp1,
    double bias_correction2, double inv_grad_scale) {
  ScheduleFreeScalars<T> s;
  s.beta2 = static_cast<T>(beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  s.bias_correction2 = static_cast<T>(bias_correction2);
  s.eps = static_cast<T>(eps);
  s.weight_decay = static_cast<T>(weight_decay);
  s.ckp1 = static_cast<T>(ckp1);
  s.y_step = static_cast<T>(scheduled_lr * (beta1 * (1.0 - ckp1) - 1.0));
  s.neg_lr = static_cast<T>(-scheduled_lr);
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

// One Schedule-Free AdamW element (Defazio et al., 2024), y the param, in the order of
// schedulefree.AdamWScheduleFree.step:
//   v = beta2 v + (1-beta2) g^2;  u = g / (sqrt(v / bc2) + eps) + wd*y;
//   y = lerp(y, z, ckp1) + lr*(beta1*(1-ckp1) - 1)*u;  z = z - lr*u.
// It divides by bc2 as schedulefree does (not a reciprocal product), to stay within its ulp.
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void schedule_free_adamw_element(T& y, T g, T& z, T& v,
                                                                 const ScheduleFreeScalars<T>& s) {
  g = g * s.inv_grad_scale;
  v = v * s.beta2;
  v = v + s.one_minus_beta2 * g * g;  // addcmul_
  T u = g / (sqrt_(v / s.bias_correction2) + s.eps);
  u = s.weight_decay != T(0) ? u + s.weight_decay * y : u;  // 0 * inf would be NaN
  y = lerp_(y, z, s.ckp1);
  y = y + s.y_step * u;
  z = z + s.neg_lr * u;  // sub_(u, alpha=lr)
}

// Schedule-Free's train/eval swap, theta.lerp_(z, w) as schedulefree's train() and eval() do it:
// w = 1 - beta1 moves x to y (train), w = 1 - 1/beta1 moves y back to x (eval). The weight is a
// Python float there, so it is rounded to the math type first (fp32, or fp64 for fp64 params).
template <typename T>
struct ScheduleFreeSwapScalars {
  T weight;
};

template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void schedule_free_swap_element(
    T& theta, T z, const ScheduleFreeSwapScalars<T>& s) {
  theta = lerp_(theta, z, s.weight);
}

// Adafactor (torch.optim.Adafactor's for-loop, torch/optim/_adafactor.py), element by element.
// A vector's update direction is rsqrt(max(v, eps1^2)) * g, v its variance, as torch computes
// it. A matrix's is the same of the factored estimate (r c) / rmean (r its row's row_var, c its
// column's col_var, rmean = max(mean(row_var), eps1)), computed factored (Note [factored
// direction]): g * min(a b, cap) with a = rsqrt(r / rmean) per row, b = rsqrt(c) per column
// and cap = rsqrt(eps1^2), since rsqrt is decreasing.
//
// Note [factored direction]
// torch computes the estimate (r c) / rmean and then rsqrt of it clamped at eps1^2: a
// division, a square root and a reciprocal per element, which bound the step on a CPU where
// the data is in cache (the divider). rsqrt((r c) / rmean) = rsqrt(r / rmean) rsqrt(c): the
// factors are O(m + n) per matrix, each computed in fp64 and rounded once to the opmath type
// (to within half an ulp of the exact value: the fp64 quotient and square root are correctly
// rounded, and their error is far below fp32's), so an element costs two products and a min.
// The direction is then within about 1.5 ulp of the exact rsqrt of the estimate, where torch's
// four roundings leave up to about 2: the results differ from torch's by fp32 rounding, as any
// reordering does. Edge cases as torch: a zero row or column mean (r or c 0) makes a factor
// inf, the product inf, and the min cap, as torch's clamp of a 0 estimate; inf or NaN grads
// make the statistics inf or NaN, and the factors NaN where torch's inf / inf is NaN (rsqrt of
// inf / inf per row, or 0 * inf across: a row's inf r gives a NaN factor, a column's inf c a
// factor 0 that an inf row factor multiplies); min keeps a NaN product. cap = rsqrt of eps1^2
// as rounded to the opmath type: where it underflows to 0 (eps1 = 1e-30 in fp32) cap is inf,
// as torch's clamp at 0 is no clamp. Where torch's fp32 r c itself underflows (a subnormal
// estimate with eps1^2 = 0) or overflows (grads over ~4e9), its rsqrt is inf or 0 where the
// factored form stays finite and near the exact value.
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T adafactor_row_factor(T r, T rmean) {
  return static_cast<T>(1.0 / sqrt_(static_cast<double>(r) / static_cast<double>(rmean)));
}

template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T adafactor_col_factor(T c) {
  return static_cast<T>(1.0 / sqrt_(static_cast<double>(c)));
}

// rsqrt(max(x, eps1_sq)) = min(rsqrt(x), cap) with cap = adafactor_col_factor(eps1_sq).
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T adafactor_factored_direction(T a, T b, T g, T cap) {
  const T f = a * b;
  return (cap < f ? cap : f) * g;  // min; a NaN product stays NaN (the comparison is false)
}

template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T adafactor_direction(T v, T g, T eps1_sq) {
  v = v < eps1_sq ? eps1_sq : v;  // clamp_(min=): NaN stays NaN
  return (T(1) / sqrt_(v)) * g;
}

// p.mul_(1 - lr*wd) (decay 1 without weight decay), then p.add_(u, alpha=-alpha/denom).
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void adafactor_apply(T& p, T u, T decay, T neg_step) {
  p = p * decay;
  p = p + neg_step * u;
}

// The authors' constant keeping |m| / (rho*bs*h + eps) finite where h = 0.
constexpr double kSophiaEps = 1e-15;

template <typename T>
struct SophiaScalars {
  T neg_lr;  // -lr
  T beta1, one_minus_beta1;
  T rho_bs;        // rho * bs
  T eps;           // kSophiaEps
  T decay_factor;  // 1 - lr*weight_decay (decoupled)
  T inv_grad_scale;
};

// See Note [per-tensor scalars].
template <typename T>
C10_HOST_DEVICE inline SophiaScalars<T> make_sophia_scalars(double lr, int32_t lr_dt, double beta1,
                                                            double rho, double bs,
                                                            double weight_decay,
                                                            double inv_grad_scale) {
  SophiaScalars<T> s;
  s.neg_lr = static_cast<T>(-lr);
  s.beta1 = static_cast<T>(beta1);
  s.one_minus_beta1 = static_cast<T>(1.0 - beta1);
  s.rho_bs = static_cast<T>(rho * bs);
  s.eps = static_cast<T>(kSophiaEps);
  s.decay_factor = static_cast<T>(lr_decay_factor(lr, lr_dt, weight_decay));
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

// One SophiaG element, in the order of the authors' released code (Liu et al., 2023):
//   p *= 1 - lr*wd;  m = beta1*m + (1-beta1)*g;
//   p += -lr * sign(m) * min(|m| / (rho*bs*h + 1e-15), 1).
// The clamp lets NaN through, as torch.clamp does.
template <bool MAXIMIZE, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void sophia_element(T& p, T g, T& m, T h,
                                                    const SophiaScalars<T>& s) {
  g = g * s.inv_grad_scale;
  if (MAXIMIZE) g = -g;
  p = p * s.decay_factor;
  m = m * s.beta1 + s.one_minus_beta1 * g;
  T ratio = abs_(m) / (s.rho_bs * h + s.eps);
  ratio = ratio > T(1) ? T(1) : ratio;
  p = p + s.neg_lr * sign_(m) * ratio;  // addcmul_(sign(m), ratio, value=-lr)
}

template <typename T>
struct SophiaHessianScalars {
  T beta2, one_minus_beta2;
  T inv_grad_scale;
};

// Sophia's curvature EMA: h = beta2*h + (1-beta2)*g*g, on whatever grads the caller produced
// (the Gauss-Newton-Bartlett estimator's, in the authors' recipe).
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void sophia_hessian_element(T& h, T g,
                                                            const SophiaHessianScalars<T>& s) {
  g = g * s.inv_grad_scale;
  h = h * s.beta2 + s.one_minus_beta2 * g * g;
}

template <typename T>
struct MuonMomentumScalars {
  T momentum, one_minus_momentum;
  T inv_grad_scale;
};

// Muon's momentum, in torch.optim.Muon's order: b.lerp_(g, 1 - mu), then the matrix to
// orthogonalize, g.lerp(b, mu) with nesterov (else b). Each is a tensor of its own dtype in
// torch, so b is rounded to the state dtype S before the nesterov lerp reads it, and the
// result to the grads' dtype G before the caller rounds it into the updates' dtype. b is
// returned in opmath, already rounded to S.
template <bool NESTEROV, typename S, typename G, typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE T muon_momentum_element(T g, T& b,
                                                        const MuonMomentumScalars<T>& s) {
  g = g * s.inv_grad_scale;
  b = static_cast<T>(static_cast<S>(lerp_(b, g, s.one_minus_momentum)));
  if (!NESTEROV) return b;
  return static_cast<T>(static_cast<G>(lerp_(g, b, s.momentum)));
}

template <typename T>
struct MuonScalars {
  T decay_factor;  // 1 - lr*wd
  T neg_step;      // -lr*lr_ratio
  T inv_grad_scale;
};

// torch.optim.Muon turns a Tensor lr into a Python float, so both scalars are fp64 products
// whatever the lr's dtype (unlike Note [Tensor lr arithmetic]).
template <typename T>
C10_HOST_DEVICE inline MuonScalars<T> make_muon_scalars(double lr, double weight_decay,
                                                        double lr_ratio, double inv_grad_scale) {
  MuonScalars<T> s;
  s.decay_factor = static_cast<T>(1.0 - lr * weight_decay);
  s.neg_step = static_cast<T>(-(lr * lr_ratio));
  s.inv_grad_scale = static_cast<T>(inv_grad_scale);
  return s;
}

// Muon's update with the orthogonalized momentum o: p.mul_(1 - lr*wd), then
// p.add_(o, alpha=-lr*ratio).
template <typename T>
C10_HOST_DEVICE FUSEDOPT_INLINE void muon_element(T& p, T o, const MuonScalars<T>& s) {
  o = o * s.inv_grad_scale;
  p = p * s.decay_factor;
  p = p + s.neg_step * o;
}

// Note [mixed precision]
// An op may get, besides params (dtype P) and grads (P):
//   * states in their own dtype S (one S for all state lists of a call): S == P, or S in
//     {float32, bfloat16} for P != float64. The math runs in opmath(P) (fp32 for every mixed
//     case); moments are loaded into it and rounded to nearest into S when stored.
//   * master_params: one float32 tensor per float16/bfloat16 param. theta is read from the
//     master, the new theta is written to the master and rounded to nearest into the param,
//     in the same pass; the param is never read.
//   * sr_seeds: one int64 one-element tensor per bfloat16 param (exclusive with master_params).
//     Each seed is advanced (seed + 1) by the op before use; theta is read from the param and
//     the new theta is rounded into it stochastically: sr_bf16_bits(theta, noise) with
//     noise = sr_noise(sr_key(seed), j), j the element's index in the param's memory order
//     (row-major for a param that is not dense). Counter-based, so the result does not depend
//     on threads, blocks or backends: fusedopt.reference computes the same bits.
// found_inf set => nothing changes, seeds included.

// How the param is read and written.
enum ParamMode : int {
  kPlain = 0,       // read and written in its own dtype
  kMaster = 1,      // read from the fp32 master; written to the master and rounded into the param
  kStochastic = 2,  // bf16 param, written with stochastic rounding
};

// FUSEDOPT_FOR_EACH_MIXED(X): every (param dtype, state dtype, ParamMode) the compiled kernels
// are built for, generated from fusedopt/_opdefs.py's MIXED (its one definition) for the CPU
// dispatch (common/mixed.h) and the CUDA one (cuda/functors.h). fusedopt::check_mixed admits
// exactly these.

C10_HOST_DEVICE FUSEDOPT_INLINE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

// murmur3's 32-bit finalizer: a bijection with full avalanche.
C10_HOST_DEVICE FUSEDOPT_INLINE uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// The per-(tensor, step) key of the stochastic-rounding noise, from the advanced seed.
C10_HOST_DEVICE FUSEDOPT_INLINE uint32_t sr_key(uint64_t seed) {
  return fmix32(static_cast<uint32_t>(seed) ^
                fmix32(static_cast<uint32_t>(seed >> 32) + 0x9E3779B9u));
}

// 16 random bits (0..65535) for element j.
C10_HOST_DEVICE FUSEDOPT_INLINE uint32_t sr_noise(uint32_t key, uint64_t j) {
  return fmix32((static_cast<uint32_t>(j) * 0x9E3779B1u) ^ key ^
                (static_cast<uint32_t>(j >> 32) * 0x85EBCA77u)) >>
         16;
}

// The bf16 bits of x rounded stochastically: x's fp32 bits plus the noise, truncated, so x
// rounds up in magnitude with probability (its low 16 bits) / 2^16 (unbiased). inf and NaN are
// rounded to nearest, as c10::BFloat16 does (NaN becomes 0x7FC0).
C10_HOST_DEVICE FUSEDOPT_INLINE uint16_t sr_bf16_bits(float x, uint32_t noise) {
  const uint32_t u = float_bits(x);
  const bool special = (u & 0x7F800000u) == 0x7F800000u;
  const uint32_t kept = (u & 0x007FFFFFu) != 0u ? 0x7FC0u : (u >> 16);
  return static_cast<uint16_t>(special ? kept : (u + noise) >> 16);
}

}  // namespace fusedopt
