// Lion on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
//
// Bytes per parameter and step (storage dtype of size S, all lists share it): read p, g, m and
// write p, m: 5*S (20 B in fp32, 10 B in bf16/fp16). With an fp32 master: + read/write 4 B each,
// and p is written but not read.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/common.h"
#include "../common/mixed.h"
#include "../common/multi_tensor.h"
#include "fusedopt/math.h"
#include "isa.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, typename state_t, typename opmath_t, int MODE, bool MAXIMIZE>
struct LionBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict m, float* __restrict master, int64_t n,
                                  const LionScalars<opmath_t>* scalars, uint32_t key, int64_t j0) {
    const LionScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      lion_element<MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, s);
      store_param<MODE, opmath_t>(p, master, i, pi, key, j0);
      m[i] = static_cast<state_t>(mi);
    }
  }
};

template <typename param_t, typename state_t, int MODE, bool MAXIMIZE>
void lion_group(MultiTensor& mt, const LionScalars<at::opmath_type<param_t>>& sc,
                const std::vector<uint32_t>& keys) {
  using Body = LionBody<param_t, state_t, at::opmath_type<param_t>, MODE, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    float* master = MODE == kMaster ? static_cast<float*>(t.ptr[3]) + lo : nullptr;
    const uint32_t key = MODE == kStochastic ? keys[t.index] : 0u;
    run_isa<Body>(isa, static_cast<param_t*>(t.ptr[0]) + lo,
                  static_cast<const param_t*>(t.ptr[1]) + lo, static_cast<state_t*>(t.ptr[2]) + lo,
                  master, hi - lo, &sc, key, lo);
  });
}

void lion_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList state_steps, const at::Tensor& lr, double beta1, double beta2,
              double weight_decay, bool maximize, const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf,
              const std::optional<at::TensorList>& master_params,
              const std::optional<at::TensorList>& sr_seeds) {
  constexpr const char* op = "fusedopt.lion_";
  const Mixed mx = check_mixed(op, params, {exp_avgs}, master_params, sr_seeds);
  check_steps(op, state_steps, params.size());
  const double lr_v = scalar_value(lr, "lr");
  const int32_t lr_dt = lr_dtype(lr);
  const double inv_scale = inv_grad_scale(grad_scale);
  std::vector<ListSpec> lists = {
      {params, "params", true}, {grads, "grads", false}, {exp_avgs, "exp_avgs", true, mx.state}};
  if (mx.mode == kMaster) lists.push_back({*master_params, "master_params", true, at::kFloat});
  MultiTensor mt(op, std::move(lists));
  if (skip_for_found_inf(found_inf)) return;
  increment_steps(state_steps);
  const std::vector<uint32_t> keys =
      mx.mode == kStochastic ? advance_sr_seeds(*sr_seeds) : std::vector<uint32_t>();
  if (params.empty()) return;

  dispatch_mixed(mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const LionScalars<opmath_t> s =
        make_lion_scalars<opmath_t>(lr_v, lr_dt, beta1, beta2, weight_decay, inv_scale);
    if (maximize) {
      lion_group<param_t, state_t, MODE, true>(mt, s, keys);
    } else {
      lion_group<param_t, state_t, MODE, false>(mt, s, keys);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("lion_", &lion_cpu); }

}  // namespace fusedopt::cpu
