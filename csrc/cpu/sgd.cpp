// SGD (momentum, dampening, Nesterov, weight decay, maximize) on the CPU.
#include <ATen/OpMathType.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

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
  run_update<Body, param_t, state_t, MODE, MOMENTUM>(mt, &sc, false, keys, master_list);
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

}  // namespace

void sgd_(const ops::sgd_::Args& a) {
  const char* op = op_label<ops::sgd_>();
  const bool use_momentum = a.momentum != 0.0;
  std::vector<StateList> states;
  if (use_momentum) {
    states.push_back({a.momentum_buffers, "momentum_buffers"});
  } else {
    TORCH_CHECK(a.momentum_buffers.empty(), op, ": momentum_buffers must be empty when momentum=0");
  }
  Update u(op, a, states);
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const SgdScalars<opmath_t> s =
        make_sgd_scalars<opmath_t>(u.lr, a.momentum, a.dampening, a.weight_decay, u.inv_scale);
    sgd_dispatch<param_t, state_t, MODE>(*u.mt, s, u.keys, u.master_list, use_momentum,
                                         a.is_first_step, a.nesterov, a.maximize);
  });
}

}  // namespace fusedopt::cpu
