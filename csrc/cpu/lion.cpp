// Lion on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
//
// Bytes per parameter and step (storage dtype of size S, all lists share it): read p, g, m and
// write p, m: 5*S (20 B in fp32, 10 B in bf16/fp16). With an fp32 master: + read/write 4 B each,
// and p is written but not read.
#include <ATen/OpMathType.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

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
  run_update<Body, param_t, state_t, MODE, true>(mt, &sc, false, keys, 3);
}

}  // namespace

void lion_(const ops::lion_::Args& a) {
  Update u(op_label<ops::lion_>(), a, {{a.exp_avgs, "exp_avgs"}});
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const LionScalars<opmath_t> s =
        make_lion_scalars<opmath_t>(u.lr, u.lr_dt, a.beta1, a.beta2, a.weight_decay, u.inv_scale);
    if (a.maximize) {
      lion_group<param_t, state_t, MODE, true>(*u.mt, s, u.keys);
    } else {
      lion_group<param_t, state_t, MODE, false>(*u.mt, s, u.keys);
    }
  });
}

}  // namespace fusedopt::cpu
