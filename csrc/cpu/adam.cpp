// Adam / AdamW on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// The loop the compiler vectorizes, once per ISA (Note [SIMD by target attribute]).
template <typename scalar_t, typename opmath_t, bool DECOUPLED, bool AMSGRAD, bool MAXIMIZE>
struct AdamBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict m, scalar_t* __restrict v,
                                  scalar_t* __restrict vmax, int64_t n,
                                  const AdamScalars<opmath_t>* scalars) {
    const AdamScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = static_cast<opmath_t>(p[i]);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      opmath_t vi = static_cast<opmath_t>(v[i]);
      opmath_t vmi = AMSGRAD ? static_cast<opmath_t>(vmax[i]) : opmath_t(0);
      adam_element<DECOUPLED, AMSGRAD, MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, vi, vmi, s);
      p[i] = static_cast<scalar_t>(pi);
      m[i] = static_cast<scalar_t>(mi);
      v[i] = static_cast<scalar_t>(vi);
      if (AMSGRAD) vmax[i] = static_cast<scalar_t>(vmi);
    }
  }
};

template <typename scalar_t, bool DECOUPLED, bool AMSGRAD, bool MAXIMIZE>
void adam_group(MultiTensor& mt, const std::vector<AdamScalars<at::opmath_type<scalar_t>>>& sc) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Body = AdamBody<scalar_t, opmath_t, DECOUPLED, AMSGRAD, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
    run_isa<Body>(isa, at_(0), static_cast<const scalar_t*>(at_(1)), at_(2), at_(3),
                  AMSGRAD ? at_(4) : static_cast<scalar_t*>(nullptr), hi - lo, &sc[t.index]);
  });
}

// Turns run-time flags into template parameters, once per call (not per element).
template <typename scalar_t>
void adam_dispatch(MultiTensor& mt, const std::vector<AdamScalars<at::opmath_type<scalar_t>>>& sc,
                   bool decoupled, bool amsgrad, bool maximize) {
  const int mode = (decoupled ? 4 : 0) | (amsgrad ? 2 : 0) | (maximize ? 1 : 0);
  switch (mode) {
    case 0: return adam_group<scalar_t, false, false, false>(mt, sc);
    case 1: return adam_group<scalar_t, false, false, true>(mt, sc);
    case 2: return adam_group<scalar_t, false, true, false>(mt, sc);
    case 3: return adam_group<scalar_t, false, true, true>(mt, sc);
    case 4: return adam_group<scalar_t, true, false, false>(mt, sc);
    case 5: return adam_group<scalar_t, true, false, true>(mt, sc);
    case 6: return adam_group<scalar_t, true, true, false>(mt, sc);
    default: return adam_group<scalar_t, true, true, true>(mt, sc);
  }
}

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
              at::TensorList state_steps, const at::Tensor& lr, double beta1, double beta2,
              double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.adam_";
  std::vector<ListSpec> lists = {{params, "params", true},
                                 {grads, "grads", false},
                                 {exp_avgs, "exp_avgs", true},
                                 {exp_avg_sqs, "exp_avg_sqs", true}};
  if (amsgrad) lists.push_back({max_exp_avg_sqs, "max_exp_avg_sqs", true});
  check_steps(op, state_steps, params.size());
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  // Everything is validated (and staged) before the first write.
  MultiTensor mt(op, std::move(lists));
  if (skip_for_found_inf(found_inf)) return;
  const std::vector<double> steps = increment_steps(state_steps);
  if (params.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "fusedopt_adam_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        std::vector<AdamScalars<opmath_t>> sc(params.size());
        for (size_t i = 0; i < params.size(); ++i) {
          sc[i] = make_adam_scalars<opmath_t>(lr_v, beta1, beta2, eps, weight_decay, steps[i],
                                              inv_scale);
        }
        adam_dispatch<scalar_t>(mt, sc, decoupled, amsgrad, maximize);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("adam_", &adam_cpu); }

}  // namespace fusedopt::cpu
