// SGD (momentum, dampening, Nesterov, weight decay, maximize) on the CPU.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/common.h"
#include "../common/mixed.h"
#include "../common/multi_tensor.h"
#include "fusedopt/math.h"
#include "isa.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, typename state_t, typename opmath_t, int MODE, bool MOMENTUM,
          bool FIRST, bool NESTEROV, bool MAXIMIZE>
struct SgdBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict buf, float* __restrict master, int64_t n,
                                  const SgdScalars<opmath_t>* scalars, uint32_t key, int64_t j0) {
    const SgdScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t bi = (MOMENTUM && !FIRST) ? static_cast<opmath_t>(buf[i]) : opmath_t(0);
      sgd_element<MOMENTUM, FIRST, NESTEROV, MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), bi, s);
      store_param<MODE, opmath_t>(p, master, i, pi, key, j0);
      if (MOMENTUM) buf[i] = static_cast<state_t>(bi);
    }
  }
};

template <typename param_t, typename state_t, int MODE, bool MOMENTUM, bool FIRST, bool NESTEROV,
          bool MAXIMIZE>
void sgd_group(MultiTensor& mt, const SgdScalars<at::opmath_type<param_t>>& sc,
               const std::vector<uint32_t>& keys, int master_list) {
  using Body = SgdBody<param_t, state_t, at::opmath_type<param_t>, MODE, MOMENTUM, FIRST, NESTEROV,
                       MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    param_t* p = static_cast<param_t*>(t.ptr[0]) + lo;
    const param_t* g = static_cast<const param_t*>(t.ptr[1]) + lo;
    state_t* buf = MOMENTUM ? static_cast<state_t*>(t.ptr[2]) + lo : nullptr;
    float* master = MODE == kMaster ? static_cast<float*>(t.ptr[master_list]) + lo : nullptr;
    const uint32_t key = MODE == kStochastic ? keys[t.index] : 0u;
    run_isa<Body>(isa, p, g, buf, master, hi - lo, &sc, key, lo);
  });
}

template <typename param_t, typename state_t, int MODE>
void sgd_dispatch(MultiTensor& mt, const SgdScalars<at::opmath_type<param_t>>& sc,
                  const std::vector<uint32_t>& keys, int master_list, bool momentum, bool first,
                  bool nesterov, bool maximize) {
  auto go = [&]<bool MOM, bool F, bool N, bool M>() {
    sgd_group<param_t, state_t, MODE, MOM, F, N, M>(mt, sc, keys, master_list);
  };
  if (!momentum) {
    return maximize ? go.template operator()<false, false, false, true>()
                    : go.template operator()<false, false, false, false>();
  }
  const int mode = (first ? 4 : 0) | (nesterov ? 2 : 0) | (maximize ? 1 : 0);
  switch (mode) {
    case 0: return go.template operator()<true, false, false, false>();
    case 1: return go.template operator()<true, false, false, true>();
    case 2: return go.template operator()<true, false, true, false>();
    case 3: return go.template operator()<true, false, true, true>();
    case 4: return go.template operator()<true, true, false, false>();
    case 5: return go.template operator()<true, true, false, true>();
    case 6: return go.template operator()<true, true, true, false>();
    default: return go.template operator()<true, true, true, true>();
  }
}

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             const at::Tensor& lr, double momentum, double dampening, double weight_decay,
             bool nesterov, bool maximize, bool is_first_step,
             const std::optional<at::Tensor>& grad_scale,
             const std::optional<at::Tensor>& found_inf,
             const std::optional<at::TensorList>& master_params,
             const std::optional<at::TensorList>& sr_seeds) {
  constexpr const char* op = "fusedopt.sgd_";
  const bool use_momentum = momentum != 0.0;
  std::vector<at::TensorList> states;
  if (use_momentum) states.push_back(momentum_buffers);
  const Mixed mx = check_mixed(op, params, states, master_params, sr_seeds);
  std::vector<ListSpec> lists = {{params, "params", true}, {grads, "grads", false}};
  if (use_momentum) {
    lists.push_back({momentum_buffers, "momentum_buffers", true, mx.state});
  } else {
    TORCH_CHECK(momentum_buffers.empty(), op, ": momentum_buffers must be empty when momentum=0");
  }
  const int master_list = static_cast<int>(lists.size());
  if (mx.mode == kMaster) lists.push_back({*master_params, "master_params", true, at::kFloat});
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  MultiTensor mt(op, std::move(lists));
  if (skip_for_found_inf(found_inf)) return;
  const std::vector<uint32_t> keys =
      mx.mode == kStochastic ? advance_sr_seeds(*sr_seeds) : std::vector<uint32_t>();
  if (params.empty()) return;

  dispatch_mixed(mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const SgdScalars<opmath_t> s =
        make_sgd_scalars<opmath_t>(lr_v, momentum, dampening, weight_decay, inv_scale);
    sgd_dispatch<param_t, state_t, MODE>(mt, s, keys, master_list, use_momentum, is_first_step,
                                         nesterov, maximize);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("sgd_", &sgd_cpu); }

}  // namespace fusedopt::cpu
