// Lion with an 8-bit blockwise momentum on the CPU (Note [8-bit states] in
// fusedopt/reference/quant.py): one pass per block decodes the momentum (the signed map),
// updates the block in fp32 with fusedopt/math.h's lion_element, and encodes it with the
// block's new absmax (q8.h).
//
// Bytes per parameter and step (fp32 params): read p, g and the codes, write p and the codes:
// 14 B, plus 8 B per block of absmax (0.03 B), against 20 B with an fp32 momentum.
#include "q8.h"

namespace fusedopt::cpu {
namespace {

// One update over each decoded block (kInterleave false): measured faster than Adam's order.
template <typename param_t, int MODE, bool MAXIMIZE>
struct Lion8bit : q8::OpBase<param_t, MODE, 1, LionScalars<float>, true, false> {
  FUSEDOPT_INLINE static void element(float& p, float g, float& m, float&,
                                      const LionScalars<float>& s) {
    lion_element<MAXIMIZE>(p, g, m, s);
  }
};

}  // namespace

void lion8bit_(const ops::lion8bit_::Args& a) {
  const char* op = op_label<ops::lion8bit_>();
  // The 8-bit arguments first: Update below counts the steps.
  check_8bit_args(op, a.params, a.qmaps,
                  {{a.exp_avgs, "exp_avgs", false}, {a.exp_avg_absmaxs, "exp_avg_absmaxs", true}},
                  a.sr_seeds.has_value() && !a.sr_seeds->empty(), at::kCPU);
  Update u(op, a, {});
  if (u.skip || a.params.empty()) return;

  q8::Step step(a.params, a.grads, a.master_params, a.qmaps);
  const LionScalars<float> s =
      make_lion_scalars<float>(u.lr, u.lr_dt, a.beta1, a.beta2, a.weight_decay, u.inv_scale);
  q8::dispatch(u.mx, [&]<typename param_t, int MODE>() {
    auto go = [&]<bool M>() {
      step.run<Lion8bit<param_t, MODE, M>>({a.exp_avgs}, {a.exp_avg_absmaxs}, &s, false, u.keys);
    };
    q8::with_flags(go, a.maximize);
  });
  step.write_back();
}

}  // namespace fusedopt::cpu
