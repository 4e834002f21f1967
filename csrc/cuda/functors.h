// Thin per-optimizer functors for the multi-tensor block body (block.h): which arrays to load
// and store, the per-block constants, and one call into the shared math (fusedopt/math.h) per
// element. Modes are template parameters; the dispatchers at the bottom turn the op's flags
// into them once per call, for whichever runner (GPU or host simulation) instantiates them.
//
// The per-block constants mirror the CPU kernels' per-call ones, computed the same way in
// double (csrc/cpu/<op>.cpp); tests/test_cuda_planner.py compares the two backends.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>

#include "block.h"
#include "fusedopt/math.h"
#include "params.h"

namespace fusedopt::cuda {

struct NoState {
  int unused;
};

template <typename scalar_t_, bool DECOUPLED, bool AMSGRAD, bool MAXIMIZE>
struct AdamFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = AdamParams;
  using State = AdamScalars<opmath_t>;
  static constexpr int kDepth = AMSGRAD ? 5 : 4;  // p, g, exp_avg, exp_avg_sq, max
  static constexpr unsigned kRead = AMSGRAD ? 0x1F : 0xF;
  static constexpr unsigned kWrite = AMSGRAD ? 0x1D : 0xD;  // all but g
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return make_adam_scalars<opmath_t>(p.lr.get(), p.beta1, p.beta2, p.eps, p.weight_decay,
                                       next_step(slot.step, slot.flags), 1.0 / p.grad_scale.get());
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    if constexpr (AMSGRAD) {
      adam_element<DECOUPLED, true, MAXIMIZE>(x[0], x[1], x[2], x[3], x[4], s);
    } else {
      opmath_t unused = opmath_t(0);
      adam_element<DECOUPLED, false, MAXIMIZE>(x[0], x[1], x[2], x[3], unused, s);
    }
  }
};

template <typename scalar_t_, bool MOMENTUM, bool FIRST, bool NESTEROV, bool MAXIMIZE>
struct SgdFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = SgdParams;
  using State = SgdScalars<opmath_t>;
  static constexpr int kDepth = MOMENTUM ? 3 : 2;  // p, g, momentum_buffer
  // A buffer created this step is written, never read (it may be uninitialised memory).
  static constexpr unsigned kRead = (MOMENTUM && !FIRST) ? 0x7 : 0x3;
  static constexpr unsigned kWrite = MOMENTUM ? 0x5 : 0x1;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    return make_sgd_scalars<opmath_t>(p.lr.get(), p.momentum, p.dampening, p.weight_decay,
                                      1.0 / p.grad_scale.get());
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    if constexpr (MOMENTUM) {
      sgd_element<true, FIRST, NESTEROV, MAXIMIZE>(x[0], x[1], x[2], s);
    } else {
      opmath_t unused = opmath_t(0);
      sgd_element<false, false, false, MAXIMIZE>(x[0], x[1], unused, s);
    }
  }
};

template <typename scalar_t_, bool MAXIMIZE>
struct LionFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = LionParams;
  using State = LionScalars<opmath_t>;
  static constexpr int kDepth = 3;  // p, g, exp_avg
  static constexpr unsigned kRead = 0x7;
  static constexpr unsigned kWrite = 0x5;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    return make_lion_scalars<opmath_t>(p.lr.get(), p.beta1, p.beta2, p.weight_decay,
                                       1.0 / p.grad_scale.get());
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    lion_element<MAXIMIZE>(x[0], x[1], x[2], s);
  }
};

template <typename scalar_t_, bool MAXIMIZE>
struct SophiaFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = SophiaParams;
  using State = SophiaScalars<opmath_t>;
  static constexpr int kDepth = 4;  // p, g, exp_avg, hessian
  static constexpr unsigned kRead = 0xF;
  static constexpr unsigned kWrite = 0x5;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    return make_sophia_scalars<opmath_t>(p.lr.get(), p.beta1, p.rho, p.bs, p.weight_decay,
                                         1.0 / p.grad_scale.get());
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    sophia_element<MAXIMIZE>(x[0], x[1], x[2], x[3], s);
  }
};

template <typename scalar_t_>
struct SophiaHessianFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = SophiaHessianParams;
  using State = SophiaHessianScalars<opmath_t>;
  static constexpr int kDepth = 2;  // hessian, g
  static constexpr unsigned kRead = 0x3;
  static constexpr unsigned kWrite = 0x1;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    State s;
    s.beta2 = static_cast<opmath_t>(p.beta2);
    s.one_minus_beta2 = static_cast<opmath_t>(1.0 - p.beta2);
    s.inv_grad_scale = static_cast<opmath_t>(1.0 / p.grad_scale.get());
    return s;
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    sophia_hessian_element(x[0], x[1], s);
  }
};

template <typename opmath_t>
C10_HOST_DEVICE inline LambScalars<opmath_t> lamb_scalars(const LambParams& p,
                                                          const SlotInfo& slot) {
  const double step = next_step(slot.step, slot.flags);
  LambScalars<opmath_t> s;
  s.beta1 = static_cast<opmath_t>(p.beta1);
  s.one_minus_beta1 = static_cast<opmath_t>(1.0 - p.beta1);
  s.beta2 = static_cast<opmath_t>(p.beta2);
  s.one_minus_beta2 = static_cast<opmath_t>(1.0 - p.beta2);
  s.bias_correction1 =
      static_cast<opmath_t>(p.bias_correction ? 1.0 - std::pow(p.beta1, step) : 1.0);
  s.bias_correction2 =
      static_cast<opmath_t>(p.bias_correction ? 1.0 - std::pow(p.beta2, step) : 1.0);
  s.eps = static_cast<opmath_t>(p.eps);
  s.weight_decay = static_cast<opmath_t>(p.weight_decay);
  s.inv_grad_scale = static_cast<opmath_t>(1.0 / p.grad_scale.get());
  return s;
}

// LAMB pass 1 (Note [LAMB passes] in csrc/cpu/lamb.cpp): moments, and per tensor the sums of
// p^2 and u^2, with u from the moments as stored; the last block of each tensor turns them
// into -lr * trust ratio for pass 2.
template <typename scalar_t_, bool MAXIMIZE>
struct LambMomentsFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = LambParams;
  using State = LambScalars<opmath_t>;
  static constexpr int kDepth = 4;  // p, g, exp_avg, exp_avg_sq
  static constexpr unsigned kRead = 0xF;
  static constexpr unsigned kWrite = 0xC;
  static constexpr int kReduce = 2;
  static constexpr bool kFinish = true;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }
  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return lamb_scalars<opmath_t>(p, slot);
  }
  C10_HOST_DEVICE double* partials() const { return p.partials; }
  C10_HOST_DEVICE unsigned long long* counters() const { return p.counters; }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double* acc) const {
    lamb_moments<MAXIMIZE>(x[1], x[2], x[3], s);
    const opmath_t m = static_cast<opmath_t>(static_cast<scalar_t>(x[2]));
    const opmath_t v = static_cast<opmath_t>(static_cast<scalar_t>(x[3]));
    const opmath_t u = lamb_direction(x[0], m, v, s);
    acc[0] += static_cast<double>(x[0]) * static_cast<double>(x[0]);
    acc[1] += static_cast<double>(u) * static_cast<double>(u);
  }

  // As csrc/cpu/lamb.cpp turns the sums into the step, in double.
  C10_HOST_DEVICE void finish(int32_t index, const double* sums) const {
    const double p_norm = std::sqrt(sums[0]);
    const double u_norm = std::sqrt(sums[1]);
    double r = (p_norm > 0.0 && u_norm > 0.0) ? p_norm / u_norm : 1.0;
    if (p.has_trust_clip) r = p.trust_clip < r ? p.trust_clip : r;  // std::min(r, clip)
    p.neg_steps[index] = -(p.lr.get() * r);
    p.norms[2 * index] = p_norm;
    p.norms[2 * index + 1] = u_norm;
  }
};

template <typename opmath_t>
struct LambApplyState {
  LambScalars<opmath_t> s;
  opmath_t neg_step;
};

// LAMB pass 2: u recomputed from p and the stored moments, p -= lr * r * u.
template <typename scalar_t_>
struct LambApplyFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = LambParams;
  using State = LambApplyState<opmath_t>;
  static constexpr int kDepth = 4;  // p, g (not read), exp_avg, exp_avg_sq
  static constexpr unsigned kRead = 0xD;
  static constexpr unsigned kWrite = 0x1;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }
  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    State s;
    s.s = lamb_scalars<opmath_t>(p, slot);
    s.neg_step = static_cast<opmath_t>(p.neg_steps[slot.index]);
    return s;
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    const opmath_t u = lamb_direction(x[0], x[2], x[3], s.s);
    lamb_apply(x[0], u, s.neg_step);
  }
};

// Sum of squares in fp64 of values widened as the CPU kernel widens them (through float for
// fp16/bf16, csrc/cpu/norm.cpp).
template <typename scalar_t_>
struct SumSqFunctor {
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t>;
  using Params = SumSqParams;
  using State = NoState;
  static constexpr int kDepth = 1;
  static constexpr unsigned kRead = 0x1;
  static constexpr unsigned kWrite = 0x0;
  static constexpr int kReduce = 1;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return false; }
  C10_HOST_DEVICE State prologue(const SlotInfo&) const { return State{0}; }
  C10_HOST_DEVICE double* partials() const { return p.partials; }
  C10_HOST_DEVICE unsigned long long* counters() const { return nullptr; }
  C10_HOST_DEVICE void finish(int32_t, const double*) const {}

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State&, double* acc) const {
    const double v = static_cast<double>(x[0]);
    acc[0] += v * v;
  }
};

// ---- dispatch: run-time flags to template parameters, once per call ---------------------------
// Runner::run<F>(job, params) launches (or simulates) F over every launch of job.plan.

#define FUSEDOPT_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

template <class Runner, class Job>
void dispatch_adam(Runner& r, const Job& job, const AdamParams& p, bool decoupled, bool amsgrad,
                   bool maximize) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_adam_cuda", [&] {
    const int mode = (decoupled ? 4 : 0) | (amsgrad ? 2 : 0) | (maximize ? 1 : 0);
    switch (mode) {
      case 0: return r.template run<AdamFunctor<scalar_t, false, false, false>>(job, p);
      case 1: return r.template run<AdamFunctor<scalar_t, false, false, true>>(job, p);
      case 2: return r.template run<AdamFunctor<scalar_t, false, true, false>>(job, p);
      case 3: return r.template run<AdamFunctor<scalar_t, false, true, true>>(job, p);
      case 4: return r.template run<AdamFunctor<scalar_t, true, false, false>>(job, p);
      case 5: return r.template run<AdamFunctor<scalar_t, true, false, true>>(job, p);
      case 6: return r.template run<AdamFunctor<scalar_t, true, true, false>>(job, p);
      default: return r.template run<AdamFunctor<scalar_t, true, true, true>>(job, p);
    }
  });
}

template <class Runner, class Job>
void dispatch_sgd(Runner& r, const Job& job, const SgdParams& p, bool momentum, bool first,
                  bool nesterov, bool maximize) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_sgd_cuda", [&] {
    if (!momentum) {
      return maximize ? r.template run<SgdFunctor<scalar_t, false, false, false, true>>(job, p)
                      : r.template run<SgdFunctor<scalar_t, false, false, false, false>>(job, p);
    }
    const int mode = (first ? 4 : 0) | (nesterov ? 2 : 0) | (maximize ? 1 : 0);
    switch (mode) {
      case 0: return r.template run<SgdFunctor<scalar_t, true, false, false, false>>(job, p);
      case 1: return r.template run<SgdFunctor<scalar_t, true, false, false, true>>(job, p);
      case 2: return r.template run<SgdFunctor<scalar_t, true, false, true, false>>(job, p);
      case 3: return r.template run<SgdFunctor<scalar_t, true, false, true, true>>(job, p);
      case 4: return r.template run<SgdFunctor<scalar_t, true, true, false, false>>(job, p);
      case 5: return r.template run<SgdFunctor<scalar_t, true, true, false, true>>(job, p);
      case 6: return r.template run<SgdFunctor<scalar_t, true, true, true, false>>(job, p);
      default: return r.template run<SgdFunctor<scalar_t, true, true, true, true>>(job, p);
    }
  });
}

template <class Runner, class Job>
void dispatch_lion(Runner& r, const Job& job, const LionParams& p, bool maximize) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_lion_cuda", [&] {
    return maximize ? r.template run<LionFunctor<scalar_t, true>>(job, p)
                    : r.template run<LionFunctor<scalar_t, false>>(job, p);
  });
}

template <class Runner, class Job>
void dispatch_sophia(Runner& r, const Job& job, const SophiaParams& p, bool maximize) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_sophia_cuda", [&] {
    return maximize ? r.template run<SophiaFunctor<scalar_t, true>>(job, p)
                    : r.template run<SophiaFunctor<scalar_t, false>>(job, p);
  });
}

template <class Runner, class Job>
void dispatch_sophia_hessian(Runner& r, const Job& job, const SophiaHessianParams& p) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_sophia_hessian_cuda", [&] {
    return r.template run<SophiaHessianFunctor<scalar_t>>(job, p);
  });
}

// Both LAMB passes: the second launch sequence starts after the first has finished (one stream).
template <class Runner, class Job>
void dispatch_lamb(Runner& r, const Job& job, const LambParams& p, bool maximize) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_lamb_cuda", [&] {
    if (maximize) {
      r.template run<LambMomentsFunctor<scalar_t, true>>(job, p);
    } else {
      r.template run<LambMomentsFunctor<scalar_t, false>>(job, p);
    }
    r.template run<LambApplyFunctor<scalar_t>>(job, p);
  });
}

template <class Runner, class Job>
void dispatch_sum_sq(Runner& r, const Job& job, const SumSqParams& p) {
  FUSEDOPT_DISPATCH_FLOATING(job.dtype, "fusedopt_sum_sq_cuda",
                             [&] { return r.template run<SumSqFunctor<scalar_t>>(job, p); });
}

}  // namespace fusedopt::cuda
