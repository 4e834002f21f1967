// SophiaG on the CPU: the step and the curvature (Hessian-diagonal) EMA update, each one
// parallel region per (dtype) group, math from fusedopt/math.h.
//
// Bytes per parameter (storage dtype of size S, all lists share it):
//   sophia_                 read p, g, m, h; write p, m: 6*S (24 B fp32, 12 B bf16/fp16)
//   sophia_update_hessian_  read g, h; write h:          3*S (12 B fp32, 6 B bf16/fp16),
//                           every k steps (k = 10 in the authors' recipe)
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

template <typename scalar_t, typename opmath_t, bool MAXIMIZE>
struct SophiaBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict m, const scalar_t* __restrict h, int64_t n,
                                  const SophiaScalars<opmath_t>* scalars) {
    const SophiaScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = static_cast<opmath_t>(p[i]);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      sophia_element<MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, static_cast<opmath_t>(h[i]), s);
      p[i] = static_cast<scalar_t>(pi);
      m[i] = static_cast<scalar_t>(mi);
    }
  }
};

template <typename scalar_t, typename opmath_t>
struct SophiaHessianBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict h, const scalar_t* __restrict g, int64_t n,
                                  const SophiaHessianScalars<opmath_t>* scalars) {
    const SophiaHessianScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t hi = static_cast<opmath_t>(h[i]);
      sophia_hessian_element(hi, static_cast<opmath_t>(g[i]), s);
      h[i] = static_cast<scalar_t>(hi);
    }
  }
};

template <typename scalar_t, bool MAXIMIZE>
void sophia_group(MultiTensor& mt, const SophiaScalars<at::opmath_type<scalar_t>>& sc) {
  using Body = SophiaBody<scalar_t, at::opmath_type<scalar_t>, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
    run_isa<Body>(isa, at_(0), static_cast<const scalar_t*>(at_(1)), at_(2),
                  static_cast<const scalar_t*>(at_(3)), hi - lo, &sc);
  });
}

void sophia_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList hessians, at::TensorList state_steps, const at::Tensor& lr,
                double beta1, double rho, double bs, double weight_decay, bool maximize,
                const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.sophia_";
  check_steps(op, state_steps, params.size());
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  MultiTensor mt(op, {{params, "params", true},
                      {grads, "grads", false},
                      {exp_avgs, "exp_avgs", true},
                      {hessians, "hessians", false}});
  if (skip_for_found_inf(found_inf)) return;
  increment_steps(state_steps);
  if (params.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "fusedopt_sophia_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const SophiaScalars<opmath_t> s =
            make_sophia_scalars<opmath_t>(lr_v, beta1, rho, bs, weight_decay, inv_scale);
        if (maximize) {
          sophia_group<scalar_t, true>(mt, s);
        } else {
          sophia_group<scalar_t, false>(mt, s);
        }
      });
}

void sophia_update_hessian_cpu(at::TensorList hessians, at::TensorList grads, double beta2,
                               const std::optional<at::Tensor>& grad_scale,
                               const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.sophia_update_hessian_";
  const double inv_scale = inv_grad_scale(grad_scale);
  // The hessians take the params' place as the reference layout: they share the params' shapes
  // and (created with preserve_format) strides.
  MultiTensor mt(op, {{hessians, "hessians", true}, {grads, "grads", false}});
  if (skip_for_found_inf(found_inf) || hessians.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, hessians[0].scalar_type(), "fusedopt_sophia_hessian_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        using Body = SophiaHessianBody<scalar_t, opmath_t>;
        SophiaHessianScalars<opmath_t> s;
        s.beta2 = static_cast<opmath_t>(beta2);
        s.one_minus_beta2 = static_cast<opmath_t>(1.0 - beta2);
        s.inv_grad_scale = static_cast<opmath_t>(inv_scale);
        const Isa isa = current_isa();
        mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
          run_isa<Body>(isa, static_cast<scalar_t*>(t.ptr[0]) + lo,
                        static_cast<const scalar_t*>(t.ptr[1]) + lo, hi - lo, &s);
        });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("sophia_", &sophia_cpu);
  m.impl("sophia_update_hessian_", &sophia_update_hessian_cpu);
}

}  // namespace fusedopt::cpu
