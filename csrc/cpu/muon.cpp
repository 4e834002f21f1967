// Muon's elementwise parts on the CPU, each one parallel region per call, math from
// fusedopt/math.h. The Newton-Schulz iteration between them is batched matmuls, run by
// fusedopt.Muon with torch.
//
// Bytes per parameter (grads and momentum in storage dtype S, updates bf16, O in the params'):
//   muon_momentum_  read g, b; write b, the bf16 update:  3*S + 2 (14 B fp32)
//   muon_           read p, O; write p:                   3*S (12 B fp32)
// torch.optim.Muon's loop: lerp_ (3*S), lerp (3*S), bfloat16() (S + 2), mul_ (2*S),
// add_ (2*S + 2): 11*S + 4 (48 B fp32). fusedopt.Muon adds the conversion of O from the bf16
// stack into the params' dtype (2 + S) where that dtype is not bf16: 32 B fp32 in all.
#include <ATen/OpMathType.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

template <typename grad_t, typename state_t, typename out_t, typename opmath_t, bool NESTEROV>
struct MuonMomentumBody {
  FUSEDOPT_INLINE static void run(state_t* __restrict b, const grad_t* __restrict g,
                                  out_t* __restrict u, int64_t n,
                                  const MuonMomentumScalars<opmath_t>* scalars) {
    const MuonMomentumScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t bi = static_cast<opmath_t>(b[i]);
      const opmath_t ui =
          muon_momentum_element<NESTEROV, state_t, grad_t>(static_cast<opmath_t>(g[i]), bi, s);
      b[i] = static_cast<state_t>(bi);
      u[i] = static_cast<out_t>(ui);
    }
  }
};

template <typename grad_t, typename state_t, typename out_t, bool NESTEROV>
void momentum_run(MultiTensor& mt, const MuonMomentumScalars<at::opmath_type<grad_t>>& s) {
  using Body = MuonMomentumBody<grad_t, state_t, out_t, at::opmath_type<grad_t>, NESTEROV>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    run_isa<Body>(isa, static_cast<state_t*>(t.ptr[0]) + lo,
                  static_cast<const grad_t*>(t.ptr[1]) + lo, static_cast<out_t*>(t.ptr[2]) + lo,
                  hi - lo, &s);
  });
}

}  // namespace

void muon_momentum_(const ops::muon_momentum_::Args& a) {
  const char* op = op_label<ops::muon_momentum_>();
  const double inv_scale = inv_grad_scale(a.grad_scale);
  // The grads are the params' dtype, the buffers state (Note [mixed precision]); the updates
  // are bf16 (what Newton-Schulz runs in) or the grads' dtype.
  const Mixed mx = check_mixed(op, a.grads, {a.momentum_buffers}, std::nullopt, std::nullopt);
  const at::ScalarType out =
      a.updates.empty() || !a.updates[0].defined() ? at::kBFloat16 : a.updates[0].scalar_type();
  TORCH_CHECK(out == at::kBFloat16 || out == mx.param, op, ": updates must be bfloat16 or ",
              mx.param, " (the grads' dtype), got ", out);
  // The buffers take the params' place as the reference layout (created like the params).
  MultiTensor mt(op, {{a.momentum_buffers, "momentum_buffers", true},
                      {a.grads, "grads", false, mx.param},
                      {a.updates, "updates", true, out}});
  if (skip_for_found_inf(a.found_inf) || a.momentum_buffers.empty()) return;

  dispatch_mixed(mx, [&]<typename grad_t, typename state_t, int MODE>() {
    if constexpr (MODE == kPlain) {  // the only mode here: no other instantiations
      using opmath_t = at::opmath_type<grad_t>;
      MuonMomentumScalars<opmath_t> s;
      s.momentum = static_cast<opmath_t>(a.momentum);
      s.one_minus_momentum = static_cast<opmath_t>(1.0 - a.momentum);
      s.inv_grad_scale = static_cast<opmath_t>(inv_scale);
      auto go = [&]<typename out_t>() {
        if (a.nesterov) {
          momentum_run<grad_t, state_t, out_t, true>(mt, s);
        } else {
          momentum_run<grad_t, state_t, out_t, false>(mt, s);
        }
      };
      if (out == at::kBFloat16) {
        go.template operator()<at::BFloat16>();
      } else {
        go.template operator()<grad_t>();
      }
    }
  });
}

void muon_(const ops::muon_::Args& a) {
  Update u(op_label<ops::muon_>(), a, {});
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    const MuonScalars<opmath_t> s =
        make_muon_scalars<opmath_t>(u.lr, a.weight_decay, a.lr_ratio, u.inv_scale);
    using Body =
        ThetaAndOneBody<param_t, opmath_t, MODE, MuonScalars<opmath_t>, &muon_element<opmath_t>>;
    run_update<Body, param_t, state_t, MODE>(*u.mt, &s, false, u.keys, u.master_list);
  });
}

}  // namespace fusedopt::cpu
