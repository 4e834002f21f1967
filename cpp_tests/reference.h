// The optimizer updates restated element by element in long double, straight from the formulas
// in the docstrings of fusedopt/reference/adam.py and sgd.py (which mirror torch.optim), with no
// code shared with csrc/. Each result also carries a magnitude `mag`: the sum of the absolute
// values of the terms that produced it, propagated through the formula. An implementation that
// computes the same formula in a precision with unit roundoff u differs from the exact value by
// at most a small multiple of u * mag (first-order rounding-error analysis); where terms cancel,
// mag is much larger than the result, and so is the error that a correct kernel can make.
//
// Note [reference precision]
// long double (80-bit x87 on x86-64: 64-bit significand, u = 2^-64) so that the fp64 kernels are
// compared against something more precise than themselves. On platforms where long double is
// double the fp64 tolerance still holds: it is written as a multiple of the fp64 roundoff and
// the reference's own error is of the same order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace fusedopt_test {

using Ref = long double;

struct AdamHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double weight_decay = 0.0;
  double eps = 1e-8;
  bool decoupled = false;  // AdamW
  bool amsgrad = false;
  bool maximize = false;
  double grad_scale = 1.0;  // AMP: grads arrive multiplied by this
};

// beta1 < 0.5 takes the other branch of lerp; a big eps; decay; an AMP grad scale.
inline AdamHyper adam_low_betas(double lr, double weight_decay, double grad_scale) {
  AdamHyper h;
  h.lr = lr;
  h.beta1 = 0.3;
  h.beta2 = 0.5;
  h.eps = 1e-3;
  h.weight_decay = weight_decay;
  h.grad_scale = grad_scale;
  return h;
}

struct AdamRef {
  Ref p, m, v, vmax;        // the new values (vmax: unchanged when !amsgrad)
  Ref mag_p, mag_m, mag_v;  // magnitudes for the tolerances (see the top of this file)
  // The bias corrections 1 - beta^t are computed on the host in double (as torch.optim does),
  // with a relative error of about u_double * beta^t / (1 - beta^t): large for beta2 = 0.999 at
  // small t (500 u at t = 2). Its effect on p, in units of the fp64 roundoff whatever the opmath.
  Ref host_p;
};

// The per-tensor quantities of one step. t: the step number after the increment (1 first).
struct AdamStep {
  AdamHyper h;
  Ref bc1, bc2;  // bias corrections 1 - beta^t
  Ref host_rel;  // relative error of the host's double bias corrections, in u_double
};

inline AdamStep adam_step(const AdamHyper& h, double t) {
  AdamStep s{h, 0, 0, 0};
  const Ref pow1 = std::pow(Ref(h.beta1), Ref(t)), pow2 = std::pow(Ref(h.beta2), Ref(t));
  s.bc1 = 1 - pow1;
  s.bc2 = 1 - pow2;
  s.host_rel = pow1 / s.bc1 + pow2 / s.bc2;
  return s;
}

inline AdamRef adam_reference(Ref p, Ref g, Ref m, Ref v, Ref vmax, const AdamStep& st) {
  const AdamHyper& h = st.h;
  const Ref lr = h.lr, b1 = h.beta1, b2 = h.beta2, wd = h.weight_decay, eps = h.eps;
  g = g / Ref(h.grad_scale);
  if (h.maximize) g = -g;
  Ref mag_g = std::fabs(g);
  if (h.decoupled) {
    p = p * (1 - lr * wd);
  } else if (wd != 0) {
    mag_g += std::fabs(wd * p);
    g = g + wd * p;
  }
  AdamRef r;
  r.m = m + (1 - b1) * (g - m);
  r.v = b2 * v + (1 - b2) * g * g;
  r.vmax = vmax;
  Ref vhat = r.v;
  if (h.amsgrad) {
    r.vmax = std::isnan(vmax) || std::isnan(r.v) ? std::numeric_limits<Ref>::quiet_NaN()
                                                 : std::max(vmax, r.v);
    vhat = r.vmax;
  }
  const Ref denom = std::sqrt(vhat) / std::sqrt(st.bc2) + eps;
  const Ref step_size = lr / st.bc1;
  r.p = p - step_size * r.m / denom;
  r.mag_m = std::fabs(m) + mag_g;
  r.mag_v = b2 * std::fabs(v) + (1 - b2) * mag_g * mag_g;
  // A relative error e in vhat moves denom by at most e/2 relative (sqrt halves it, + eps only
  // shrinks it), and e <= u * mag_v / vhat.
  const Ref vhat_rel = vhat > 0 ? r.mag_v / vhat : 0;
  r.mag_p = std::fabs(p) + step_size * (r.mag_m + std::fabs(r.m) * vhat_rel) / denom;
  r.host_p = step_size * std::fabs(r.m) / denom * st.host_rel;
  return r;
}

inline AdamRef adam_reference(Ref p, Ref g, Ref m, Ref v, Ref vmax, double t, const AdamHyper& h) {
  return adam_reference(p, g, m, v, vmax, adam_step(h, t));
}

struct SgdHyper {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;
  bool first = false;  // the step that creates the momentum buffers
  double grad_scale = 1.0;
};

struct SgdRef {
  Ref p, buf;
  Ref mag_p, mag_buf;
};

inline SgdRef sgd_reference(Ref p, Ref g, Ref buf, const SgdHyper& h) {
  const Ref lr = h.lr, mu = h.momentum, wd = h.weight_decay;
  g = g / Ref(h.grad_scale);
  if (h.maximize) g = -g;
  Ref mag_g = std::fabs(g);
  if (wd != 0) {
    mag_g += std::fabs(wd * p);
    g = g + wd * p;
  }
  SgdRef r;
  r.buf = buf;
  r.mag_buf = std::fabs(buf);
  Ref mag_u = mag_g;
  if (mu != 0) {
    if (h.first) {
      r.buf = g;
      r.mag_buf = mag_g;
    } else {
      r.buf = mu * buf + (1 - Ref(h.dampening)) * g;
      r.mag_buf = mu * std::fabs(buf) + std::fabs(1 - Ref(h.dampening)) * mag_g;
    }
    if (h.nesterov) {
      g = g + mu * r.buf;
      mag_u = mag_g + mu * r.mag_buf;
    } else {
      g = r.buf;
      mag_u = r.mag_buf;
    }
  }
  r.p = p - lr * g;
  r.mag_p = std::fabs(p) + lr * mag_u;
  return r;
}

// Note [tolerances]
// eps below is machine epsilon, one ulp at 1.0: fp32 2^-23, fp64 2^-52, bf16 2^-7, fp16 2^-10; a
// correctly rounded operation errs by at most eps/2 relative. A kernel result k for the exact
// value r (of the stored inputs: the reference reads them back, so input rounding is not counted)
// may differ from r by:
//   - the opmath arithmetic (fp32 for fp32/bf16/fp16, fp64 for fp64): about ten roundings along
//     the longest path (Adam's p), counting the per-tensor constants rounded to opmath and the
//     FMA contractions each ISA's copy of the loop may or may not make, each at most eps_op/2 of
//     the magnitude of its term. First-order: ~5 eps_op * mag. We allow kOpmathUlps = 16 eps_op *
//     mag; the math test prints the worst case it sees (about 2.3 eps * mag);
//   - the store into the storage dtype: at most eps_storage/2 * |r|. We allow eps_storage * |r|
//     because the opmath value may sit across a rounding boundary from r. For bf16/fp16 this is
//     the dominant term, and the op tests see errors up to half of the tolerance, as expected;
//   - for fp16, results below 2^-14 are subnormal and rounded to absolute steps of 2^-24: the
//     storage's denorm_min is added (negligible for the other dtypes);
//   - the host's fp64 bias corrections (AdamRef::host_p), 16 eps_fp64 * host_p.
// The tests also require most param updates to exceed their tolerance, so that a kernel that
// skipped them could not pass.
constexpr double kOpmathUlps = 16.0;

inline Ref tolerance(Ref r, Ref mag, double eps_storage, double eps_opmath, double denorm_storage,
                     Ref host_mag = 0) {
  constexpr double kHostEps = std::numeric_limits<double>::epsilon();
  return eps_storage * std::fabs(r) + kOpmathUlps * (eps_opmath * mag + kHostEps * host_mag) +
         denorm_storage;
}

// NaN matches NaN, infinities must be equal, finite values within tol.
inline bool close(Ref k, Ref r, Ref tol) {
  if (std::isnan(r)) return std::isnan(k);
  if (std::isinf(r)) return k == r;
  return std::isfinite(k) && std::fabs(k - r) <= tol;
}

}  // namespace fusedopt_test
