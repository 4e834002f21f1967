// Schedule-Free AdamW on the CPU: one parallel region per (dtype) group, math from
// fusedopt/math.h.
//
// The train/eval swap (schedule_free_swap_): read theta, z; write theta: 3*S, where
// schedulefree's foreach lerp moves the same and a state_dtype other than the params' adds its
// conversion of z.
//
// Bytes per parameter and step (storage dtype of size S, all lists share it): read y, g, z, v and
// write y, z, v: 7*S (28 B in fp32, 14 B in bf16/fp16). With an fp32 master: + read/write 4 B
// each, and y is written but not read.
#include <ATen/OpMathType.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, typename state_t, typename opmath_t, int MODE>
struct ScheduleFreeBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict z, state_t* __restrict v,
                                  float* __restrict master, int64_t n,
                                  const ScheduleFreeScalars<opmath_t>* scalars, uint32_t key,
                                  int64_t j0) {
    const ScheduleFreeScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t yi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t zi = static_cast<opmath_t>(z[i]);
      opmath_t vi = static_cast<opmath_t>(v[i]);
      schedule_free_adamw_element(yi, static_cast<opmath_t>(g[i]), zi, vi, s);
      store_param<MODE, opmath_t>(p, master, i, yi, key, j0);
      z[i] = static_cast<state_t>(zi);
      v[i] = static_cast<state_t>(vi);
    }
  }
};

}  // namespace

void schedule_free_swap_(const ops::schedule_free_swap_::Args& a) {
  Update u(op_label<ops::schedule_free_swap_>(), a, {});
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const ScheduleFreeSwapScalars<opmath_t> s{static_cast<opmath_t>(a.weight)};
    using Body = ThetaAndOneBody<param_t, opmath_t, MODE, ScheduleFreeSwapScalars<opmath_t>,
                                 &schedule_free_swap_element<opmath_t>>;
    run_update<Body, param_t, state_t, MODE>(*u.mt, &s, false, u.keys, u.master_list);
  });
}

void schedule_free_adamw_(const ops::schedule_free_adamw_::Args& a) {
  // Read before Update advances the seeds: a bad one changes nothing.
  const double ckp1 = scalar_value(a.ckp1, "ckp1");
  const double bias_correction2 = scalar_value(a.bias_correction2, "bias_correction2");
  Update u(op_label<ops::schedule_free_adamw_>(), a,
           {{a.zs, "zs"}, {a.exp_avg_sqs, "exp_avg_sqs"}});
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const ScheduleFreeScalars<opmath_t> s = make_schedule_free_scalars<opmath_t>(
        u.lr, a.beta1, a.beta2, a.eps, a.weight_decay, ckp1, bias_correction2, u.inv_scale);
    using Body = ScheduleFreeBody<param_t, state_t, opmath_t, MODE>;
    run_update<Body, param_t, state_t, MODE, true, true>(*u.mt, &s, false, u.keys, u.master_list);
  });
}

}  // namespace fusedopt::cpu
