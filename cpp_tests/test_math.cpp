// The shared per-element math (csrc/include/fusedopt/math.h), every template mode, in float and
// double, against the long double restatement in reference.h. No libtorch needed: this is the
// code the CPU loops and the CUDA functors both call.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>

#include "fusedopt/math.h"
#include "harness.h"
#include "reference.h"

namespace {

using fusedopt::AdamScalars;
using fusedopt::SgdScalars;
using fusedopt_test::adam_low_betas;
using fusedopt_test::AdamHyper;
using fusedopt_test::Ref;
using fusedopt_test::SgdHyper;

template <class F, int... I>
void for_each_mode(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}

// The per-tensor constants as the kernels' host code derives them: in double, then rounded to T.
template <typename T>
AdamScalars<T> adam_scalars(const AdamHyper& h, double t) {
  const double bc1 = 1.0 - std::pow(h.beta1, t);
  const double bc2 = 1.0 - std::pow(h.beta2, t);
  AdamScalars<T> s{};
  s.lr = T(h.lr);
  s.beta1 = T(h.beta1);
  s.beta2 = T(h.beta2);
  s.one_minus_beta1 = T(1.0 - h.beta1);
  s.one_minus_beta2 = T(1.0 - h.beta2);
  s.eps = T(h.eps);
  s.weight_decay = T(h.weight_decay);
  s.decay_factor = T(1.0 - h.lr * h.weight_decay);  // a float lr: fp64 (kLrDouble)
  s.neg_step_size = T(-(h.lr / bc1));
  s.bias_correction2_sqrt = T(std::sqrt(bc2));
  s.inv_grad_scale = T(1.0 / h.grad_scale);
  return s;
}

template <typename T>
SgdScalars<T> sgd_scalars(const SgdHyper& h) {
  SgdScalars<T> s{};
  s.neg_lr = T(-h.lr);
  s.momentum = T(h.momentum);
  s.one_minus_dampening = T(1.0 - h.dampening);
  s.weight_decay = T(h.weight_decay);
  s.inv_grad_scale = T(1.0 / h.grad_scale);
  return s;
}

// Values over several orders of magnitude, both signs, rounded to T (so the reference sees
// exactly the kernel's inputs).
template <typename T>
struct Sampler {
  std::mt19937_64 rng{12345};
  std::normal_distribution<double> normal{0.0, 1.0};
  std::uniform_real_distribution<double> expo{-3.0, 3.0};
  T any() { return T(normal(rng) * std::pow(10.0, expo(rng))); }
  T positive() { return T(std::fabs(any())); }
};

struct Worst {
  double ratio = 0;  // max |k - r| / (eps * mag)
  void add(Ref k, Ref r, Ref mag, double eps) {
    if (std::isfinite(r) && mag > 0)
      ratio = std::max(ratio, double(std::fabs(k - r) / (eps * mag)));
  }
};

template <typename T>
void check_value(const char* what, T k, Ref r, Ref mag, Worst& worst, const char* ctx,
                 Ref host_mag = 0) {
  constexpr double eps = std::numeric_limits<T>::epsilon();
  const Ref tol = fusedopt_test::tolerance(r, mag, eps, eps, 0.0, host_mag);
  FO_CHECK(fusedopt_test::close(Ref(k), r, tol), ctx, ": ", what, " = ", double(k), ", reference ",
           double(r), ", difference ", double(Ref(k) - r), ", tolerance ", double(tol));
  worst.add(Ref(k), r, mag + host_mag * std::numeric_limits<double>::epsilon() / eps, eps);
}

std::vector<AdamHyper> adam_hypers() {
  std::vector<AdamHyper> hs;
  AdamHyper a;  // torch defaults, with a non-zero decay
  a.weight_decay = 1e-2;
  hs.push_back(a);
  hs.push_back(adam_low_betas(0.1, 0.5, 1024.0));
  AdamHyper c;  // no decay
  c.lr = 0.05;
  hs.push_back(c);
  return hs;
}

template <typename T>
void adam_random() {
  Worst worst;
  for_each_mode(
      [&](auto mode) {
        constexpr int kMode = decltype(mode)::value;
        constexpr bool D = kMode & 4, A = kMode & 2, M = kMode & 1;
        for (AdamHyper h : adam_hypers()) {
          h.decoupled = D;
          h.amsgrad = A;
          h.maximize = M;
          for (double t : {1.0, 2.0, 10.0, 1000.0}) {
            const AdamScalars<T> s = adam_scalars<T>(h, t);
            Sampler<T> smp;
            for (int i = 0; i < 500; ++i) {
              const T p0 = smp.any(), g = smp.any(), m0 = smp.any();
              const T v0 = smp.positive(), vmax0 = T(double(v0) * (0.5 + (i % 3) * 0.5));
              T p = p0, m = m0, v = v0, vmax = vmax0;
              fusedopt::adam_element<D, A, M>(p, g, m, v, vmax, s);
              const auto r = fusedopt_test::adam_reference(p0, g, m0, v0, vmax0, t, h);
              char ctx[256];
              std::snprintf(ctx, sizeof ctx,
                            "adam<DECOUPLED=%d,AMSGRAD=%d,MAXIMIZE=%d> lr=%g beta1=%g wd=%g t=%g "
                            "p=%g g=%g m=%g v=%g vmax=%g",
                            D, A, M, h.lr, h.beta1, h.weight_decay, t, double(p0), double(g),
                            double(m0), double(v0), double(vmax0));
              check_value<T>("m", m, r.m, r.mag_m, worst, ctx);
              check_value<T>("v", v, r.v, r.mag_v, worst, ctx);
              check_value<T>("p", p, r.p, r.mag_p, worst, ctx, r.host_p);
              if (A) {
                check_value<T>("vmax", vmax, r.vmax, r.mag_v, worst, ctx);
              } else {
                FO_CHECK(vmax == vmax0, ctx, ": vmax was written without amsgrad");
              }
            }
          }
        }
      },
      std::make_integer_sequence<int, 8>{});
  std::printf("  worst error: %.2f eps * mag (tolerance %.0f)\n", worst.ratio,
              fusedopt_test::kOpmathUlps);
}

FO_TEST(adam_element_float) { adam_random<float>(); }
FO_TEST(adam_element_double) { adam_random<double>(); }

std::vector<SgdHyper> sgd_hypers() {
  std::vector<SgdHyper> hs;
  SgdHyper a;
  a.lr = 0.1;
  a.momentum = 0.9;
  a.weight_decay = 1e-2;
  hs.push_back(a);
  SgdHyper b;  // dampening, AMP scale, no decay
  b.lr = 1e-3;
  b.momentum = 0.5;
  b.dampening = 0.25;
  b.grad_scale = 65536.0;
  hs.push_back(b);
  return hs;
}

template <typename T>
void sgd_random() {
  Worst worst;
  // Bits: 8 MOMENTUM, 4 FIRST, 2 NESTEROV, 1 MAXIMIZE. Without MOMENTUM, FIRST and NESTEROV
  // must make no difference (and the buffer is neither read nor written).
  for_each_mode(
      [&](auto mode) {
        constexpr int kMode = decltype(mode)::value;
        constexpr bool MO = kMode & 8, F = kMode & 4, N = kMode & 2, MX = kMode & 1;
        for (SgdHyper h : sgd_hypers()) {
          if (!MO) h.momentum = 0.0;
          h.first = F;
          h.nesterov = N;
          h.maximize = MX;
          if (N) h.dampening = 0.0;  // torch.optim requires it for Nesterov
          const SgdScalars<T> s = sgd_scalars<T>(h);
          Sampler<T> smp;
          for (int i = 0; i < 500; ++i) {
            const T p0 = smp.any(), g = smp.any(), b0 = smp.any();
            T p = p0, buf = b0;
            fusedopt::sgd_element<MO, F, N, MX>(p, g, buf, s);
            const auto r = fusedopt_test::sgd_reference(p0, g, b0, h);
            char ctx[256];
            std::snprintf(ctx, sizeof ctx,
                          "sgd<MOMENTUM=%d,FIRST=%d,NESTEROV=%d,MAXIMIZE=%d> lr=%g mu=%g "
                          "damp=%g wd=%g p=%g g=%g buf=%g",
                          MO, F, N, MX, h.lr, h.momentum, h.dampening, h.weight_decay, double(p0),
                          double(g), double(b0));
            check_value<T>("p", p, r.p, r.mag_p, worst, ctx);
            if (MO) {
              check_value<T>("buf", buf, r.buf, r.mag_buf, worst, ctx);
            } else {
              FO_CHECK(buf == b0, ctx, ": buf was written without momentum");
            }
          }
        }
      },
      std::make_integer_sequence<int, 16>{});
  std::printf("  worst error: %.2f eps * mag (tolerance %.0f)\n", worst.ratio,
              fusedopt_test::kOpmathUlps);
}

FO_TEST(sgd_element_float) { sgd_random<float>(); }
FO_TEST(sgd_element_double) { sgd_random<double>(); }

// Values where the formulas' edge cases show: exact results, infinities and NaNs.
template <typename T>
void edge_cases() {
  const T inf = std::numeric_limits<T>::infinity();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  {
    // beta1 = 0: lerp with weight 1 must return the grad exactly (torch.lerp's second form).
    AdamHyper h;
    h.beta1 = 0.0;
    const auto s = adam_scalars<T>(h, 3);
    T p = 1, m = 5, v = 1, vmax = 0;
    const T g = T(0.123456789);
    fusedopt::adam_element<false, false, false>(p, g, m, v, vmax, s);
    FO_CHECK(m == g, "lerp(m, g, 1) = ", double(m), ", expected g = ", double(g));
  }
  {
    // L2 decay off with an infinite param: the grad must stay finite (0 * inf is NaN).
    AdamHyper h;
    const auto s = adam_scalars<T>(h, 1);
    T p = inf, m = 0, v = 0, vmax = 0;
    fusedopt::adam_element<false, false, false>(p, T(0.5), m, v, vmax, s);
    FO_CHECK(std::isfinite(m) && std::isfinite(v), "m=", double(m), " v=", double(v));
    FO_CHECK(p == inf, "p=", double(p));
  }
  {
    // amsgrad keeps NaN, from either side, like torch.maximum.
    AdamHyper h;
    h.amsgrad = true;
    const auto s = adam_scalars<T>(h, 1);
    T p = 1, m = 0, v = 1, vmax = nan;
    fusedopt::adam_element<true, true, false>(p, T(0.5), m, v, vmax, s);
    FO_CHECK(std::isnan(vmax) && std::isnan(p), "vmax=", double(vmax), " p=", double(p));
    p = 1, m = 0, v = 1, vmax = 2;
    fusedopt::adam_element<true, true, false>(p, nan, m, v, vmax, s);
    FO_CHECK(std::isnan(v) && std::isnan(vmax), "v=", double(v), " vmax=", double(vmax));
  }
  {
    // SGD: L2 decay off with an infinite param; and the first momentum step never reads the
    // old buffer (it may be uninitialized memory).
    SgdHyper h;
    h.momentum = 0.9;
    const auto s = sgd_scalars<T>(h);
    T p = inf, buf = 0;
    fusedopt::sgd_element<true, false, false, false>(p, T(1), buf, s);
    FO_CHECK(std::isfinite(buf) && p == inf, "buf=", double(buf), " p=", double(p));
    p = 1, buf = nan;
    fusedopt::sgd_element<true, true, false, false>(p, T(0.25), buf, s);
    FO_CHECK(buf == T(0.25) && std::isfinite(p), "buf=", double(buf), " p=", double(p));
    p = 1, buf = nan;
    fusedopt::sgd_element<true, true, true, false>(p, T(0.25), buf, s);
    FO_CHECK(buf == T(0.25) && std::isfinite(p), "nesterov: buf=", double(buf), " p=", double(p));
  }
  {
    // A zero grad with zero state leaves the param exactly unchanged (denominator = eps).
    AdamHyper h;
    const auto s = adam_scalars<T>(h, 1);
    T p = T(0.75), m = 0, v = 0, vmax = 0;
    fusedopt::adam_element<false, true, false>(p, T(0), m, v, vmax, s);
    FO_CHECK(p == T(0.75) && m == 0 && v == 0 && vmax == 0, "p=", double(p));
  }
}

FO_TEST(edge_cases_float) { edge_cases<float>(); }
FO_TEST(edge_cases_double) { edge_cases<double>(); }

// Note [Tensor lr arithmetic]: the lr-derived scalars as torch computes them on a 0-d lr tensor.
FO_TEST(tensor_lr_arithmetic) {
  using fusedopt::lr_decay_factor;
  const float lr = 1.2345e-3f;
  // fp32: (1 - lr*wd) with wd cast to fp32 and each result rounded to fp32.
  const float wd = 0.3f;
  const float want = 1.0f - lr * wd;
  FO_CHECK(lr_decay_factor(lr, fusedopt::kLrFloat, 0.3) == double(want), "fp32");
  // fp64 (a float lr): plain double arithmetic.
  FO_CHECK(lr_decay_factor(1.2345e-3, fusedopt::kLrDouble, 0.3) == 1.0 - 1.2345e-3 * 0.3, "fp64");
  // bf16: 1 - 3.7e-4 is closer to 1 than to the next bf16 below it (1 - 2^-9).
  const double bf = float(c10::BFloat16(lr));
  FO_CHECK(lr_decay_factor(bf, fusedopt::kLrBFloat16, 0.3) == 1.0, "bf16");
  // fp16: 1 - 3.7e-4 rounds to the nearest fp16, 1 - 2^-11.
  const double h = float(c10::Half(lr));
  const float prod = float(c10::Half(float(h) * wd));
  FO_CHECK(lr_decay_factor(h, fusedopt::kLrHalf, 0.3) == double(float(c10::Half(1.0f - prod))),
           "fp16");
  FO_CHECK(lr_decay_factor(h, fusedopt::kLrHalf, 0.3) == 1.0 - std::ldexp(1.0, -11), "fp16");
  // lr / bc1 in fp32: the quotient of the fp32 operands, rounded once.
  const double bc1 = 1.0 - 0.9;
  FO_CHECK(fusedopt::lr_store(lr / fusedopt::lr_operand(bc1, fusedopt::kLrFloat),
                              fusedopt::kLrFloat) == double(lr / float(bc1)),
           "lr/bc1");
}

}  // namespace
