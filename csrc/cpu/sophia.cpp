// SophiaG on the CPU: the step and the curvature (Hessian-diagonal) EMA update, each one
// parallel region per (dtype) group, math from fusedopt/math.h.
//
// Bytes per parameter (storage dtype of size S, all lists share it):
//   sophia_                 read p, g, m, h; write p, m: 6*S (24 B fp32, 12 B bf16/fp16)
//   sophia_update_hessian_  read g, h; write h:          3*S (12 B fp32, 6 B bf16/fp16),
//                           every k steps (k = 10 in the authors' recipe)
#include <ATen/OpMathType.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, typename state_t, typename opmath_t, int MODE, bool MAXIMIZE>
struct SophiaBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict m, const state_t* __restrict h,
                                  float* __restrict master, int64_t n,
                                  const SophiaScalars<opmath_t>* scalars, uint32_t key,
                                  int64_t j0) {
    const SophiaScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      sophia_element<MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, static_cast<opmath_t>(h[i]), s);
      store_param<MODE, opmath_t>(p, master, i, pi, key, j0);
      m[i] = static_cast<state_t>(mi);
    }
  }
};

template <typename grad_t, typename state_t, typename opmath_t>
struct SophiaHessianBody {
  FUSEDOPT_INLINE static void run(state_t* __restrict h, const grad_t* __restrict g, int64_t n,
                                  const SophiaHessianScalars<opmath_t>* scalars) {
    const SophiaHessianScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t hi = static_cast<opmath_t>(h[i]);
      sophia_hessian_element(hi, static_cast<opmath_t>(g[i]), s);
      h[i] = static_cast<state_t>(hi);
    }
  }
};

template <typename param_t, typename state_t, int MODE, bool MAXIMIZE>
void sophia_group(MultiTensor& mt, const SophiaScalars<at::opmath_type<param_t>>& sc,
                  const std::vector<uint32_t>& keys) {
  using Body = SophiaBody<param_t, state_t, at::opmath_type<param_t>, MODE, MAXIMIZE>;
  run_update<Body, param_t, state_t, MODE, true, true>(mt, &sc, false, keys, 4);
}

}  // namespace

void sophia_(const ops::sophia_::Args& a) {
  Update u(op_label<ops::sophia_>(), a,
           {{a.exp_avgs, "exp_avgs"}, {a.hessians, "hessians", false}});
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const SophiaScalars<opmath_t> s = make_sophia_scalars<opmath_t>(
        u.lr, u.lr_dt, a.beta1, a.rho, a.bs, a.weight_decay, u.inv_scale);
    if (a.maximize) {
      sophia_group<param_t, state_t, MODE, true>(*u.mt, s, u.keys);
    } else {
      sophia_group<param_t, state_t, MODE, false>(*u.mt, s, u.keys);
    }
  });
}

void sophia_update_hessian_(const ops::sophia_update_hessian_::Args& a) {
  const char* op = op_label<ops::sophia_update_hessian_>();
  const double inv_scale = inv_grad_scale(a.grad_scale);
  // The grads are the params' dtype; the hessians are state (Note [mixed precision]).
  const Mixed mx = check_mixed(op, a.grads, {a.hessians}, std::nullopt, std::nullopt);
  // The hessians take the params' place as the reference layout: they share the params' shapes
  // and (created with preserve_format) strides.
  MultiTensor mt(op, {{a.hessians, "hessians", true}, {a.grads, "grads", false, mx.param}});
  if (skip_for_found_inf(a.found_inf) || a.hessians.empty()) return;

  dispatch_mixed(mx, [&]<typename grad_t, typename state_t, int MODE>() {
    if constexpr (MODE == kPlain) {  // the only mode here: no other instantiations
      using opmath_t = at::opmath_type<grad_t>;
      using Body = SophiaHessianBody<grad_t, state_t, opmath_t>;
      SophiaHessianScalars<opmath_t> s;
      s.beta2 = static_cast<opmath_t>(a.beta2);
      s.one_minus_beta2 = static_cast<opmath_t>(1.0 - a.beta2);
      s.inv_grad_scale = static_cast<opmath_t>(inv_scale);
      const Isa isa = current_isa();
      mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
        run_isa<Body>(isa, static_cast<state_t*>(t.ptr[0]) + lo,
                      static_cast<const grad_t*>(t.ptr[1]) + lo, hi - lo, &s);
      });
    }
  });
}

}  // namespace fusedopt::cpu
