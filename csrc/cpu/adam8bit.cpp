// Adam / AdamW with 8-bit blockwise moments on the CPU (Note [8-bit states] in
// fusedopt/reference/quant.py): one pass per block of 256 elements decodes both moments,
// updates the block in fp32 with fusedopt/math.h's adam_element, and encodes them with the
// block's new absmax (q8.h).
//
// Bytes per parameter and step (fp32 params): read p, g and the two codes, write p and the
// codes: 16 B, plus 16 B per block of absmax (0.06 B), against 28 B with fp32 moments.
#include "q8.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, int MODE, bool DECOUPLED, bool MAXIMIZE>
struct Adam8bit : q8::OpBase<param_t, MODE, 2, AdamScalars<float>> {
  FUSEDOPT_INLINE static void element(float& p, float g, float& m, float& v,
                                      const AdamScalars<float>& s) {
    float unused = 0.f;
    adam_element<DECOUPLED, false, MAXIMIZE>(p, g, m, v, unused, s);
  }
};

}  // namespace

void adam8bit_(const ops::adam8bit_::Args& a) {
  const char* op = op_label<ops::adam8bit_>();
  // The 8-bit arguments first: Update below counts the steps.
  check_8bit_args(op, a.params, a.qmaps,
                  {{a.exp_avgs, "exp_avgs", false},
                   {a.exp_avg_sqs, "exp_avg_sqs", false},
                   {a.exp_avg_absmaxs, "exp_avg_absmaxs", true},
                   {a.exp_avg_sq_absmaxs, "exp_avg_sq_absmaxs", true}},
                  a.sr_seeds.has_value() && !a.sr_seeds->empty(), at::kCPU);
  Update u(op, a, {});
  if (u.skip || a.params.empty()) return;

  q8::Step step(a.params, a.grads, a.master_params, a.qmaps);
  const std::vector<AdamScalars<float>> sc = adam_scalars<float>(u, a);
  q8::dispatch(u.mx, [&]<typename param_t, int MODE>() {
    auto go = [&]<bool D, bool M>() {
      step.run<Adam8bit<param_t, MODE, D, M>>({a.exp_avgs, a.exp_avg_sqs},
                                              {a.exp_avg_absmaxs, a.exp_avg_sq_absmaxs}, sc.data(),
                                              true, u.keys);
    };
    q8::with_flags(go, a.decoupled_weight_decay, a.maximize);
  });
  step.write_back();
}

}  // namespace fusedopt::cpu
