// Lion on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
//
// Bytes per parameter and step (storage dtype of size S, all lists share it): read p, g, m and
// write p, m: 5*S (20 B in fp32, 10 B in bf16/fp16).
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
struct LionBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict m, int64_t n,
                                  const LionScalars<opmath_t>* scalars) {
    const LionScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = static_cast<opmath_t>(p[i]);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      lion_element<MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, s);
      p[i] = static_cast<scalar_t>(pi);
      m[i] = static_cast<scalar_t>(mi);
    }
  }
};

template <typename scalar_t, bool MAXIMIZE>
void lion_group(MultiTensor& mt, const LionScalars<at::opmath_type<scalar_t>>& sc) {
  using Body = LionBody<scalar_t, at::opmath_type<scalar_t>, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
    run_isa<Body>(isa, at_(0), static_cast<const scalar_t*>(at_(1)), at_(2), hi - lo, &sc);
  });
}

void lion_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList state_steps, const at::Tensor& lr, double beta1, double beta2,
              double weight_decay, bool maximize, const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.lion_";
  check_steps(op, state_steps, params.size());
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  MultiTensor mt(op,
                 {{params, "params", true}, {grads, "grads", false}, {exp_avgs, "exp_avgs", true}});
  if (skip_for_found_inf(found_inf)) return;
  increment_steps(state_steps);
  if (params.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "fusedopt_lion_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const LionScalars<opmath_t> s =
            make_lion_scalars<opmath_t>(lr_v, beta1, beta2, weight_decay, inv_scale);
        if (maximize) {
          lion_group<scalar_t, true>(mt, s);
        } else {
          lion_group<scalar_t, false>(mt, s);
        }
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("lion_", &lion_cpu); }

}  // namespace fusedopt::cpu
