// SGD with 8-bit blockwise momentum buffers on the CPU (Note [8-bit states] in
// fusedopt/reference/quant.py): one pass per block decodes the buffer (the signed map), updates
// the block in fp32 with fusedopt/math.h's sgd_element, and encodes it with the block's new
// absmax (q8.h). The step that creates the buffers (is_first_step) does not read them: the
// buffer becomes the grad after weight decay, as torch.optim.SGD clones it.
//
// Bytes per parameter and step (fp32 params): read p, g and the codes, write p and the codes:
// 14 B (the first step 13 B), plus 8 B per block of absmax (0.03 B), against 20 B with an
// fp32 buffer.
#include "q8.h"

namespace fusedopt::cpu {
namespace {

template <typename param_t, int MODE, bool FIRST, bool NESTEROV, bool MAXIMIZE>
struct Sgd8bit : q8::OpBase<param_t, MODE, 1, SgdScalars<float>, !FIRST> {
  FUSEDOPT_INLINE static void element(float& p, float g, float& buf, float&,
                                      const SgdScalars<float>& s) {
    sgd_element<true, FIRST, NESTEROV, MAXIMIZE>(p, g, buf, s);
  }
};

}  // namespace

void sgd8bit_(const ops::sgd8bit_::Args& a) {
  const char* op = op_label<ops::sgd8bit_>();
  check_8bit_args(op, a.params, a.qmaps,
                  {{a.momentum_buffers, "momentum_buffers", false},
                   {a.momentum_buffer_absmaxs, "momentum_buffer_absmaxs", true}},
                  a.sr_seeds.has_value() && !a.sr_seeds->empty(), at::kCPU);
  Update u(op, a, {});
  if (u.skip || a.params.empty()) return;

  q8::Step step(a.params, a.grads, a.master_params, a.qmaps);
  const SgdScalars<float> s =
      make_sgd_scalars<float>(u.lr, a.momentum, a.dampening, a.weight_decay, u.inv_scale);
  q8::dispatch(u.mx, [&]<typename param_t, int MODE>() {
    auto go = [&]<bool F, bool N, bool M>() {
      step.run<Sgd8bit<param_t, MODE, F, N, M>>({a.momentum_buffers}, {a.momentum_buffer_absmaxs},
                                                &s, false, u.keys);
    };
    q8::with_flags(go, a.is_first_step, a.nesterov, a.maximize);
  });
  step.write_back();
}

}  // namespace fusedopt::cpu
