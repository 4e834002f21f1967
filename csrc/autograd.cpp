// The ops' Autograd kernels: bump the version counters of what each op writes, then run the
// backend kernel.
//
// Note [version counters]
// An optimizer step writes params in place. torch's in-place ops bump each written tensor's
// version counter, which is how autograd notices a tensor saved for backward that changed
// before the backward ran ("one of the variables needed for gradient computation has been
// modified by an inplace operation") instead of computing wrong grads. A custom op without an
// Autograd kernel gets torch's boxed fallback, which does not bump them for ops returning
// nothing, and converts every tensor of every list into a boxed value and back (about 0.1 us
// per tensor per list: a millisecond per step for 2,000 params and six lists). These kernels
// take the lists unboxed, call the op below autograd (at::AutoDispatchBelowADInplaceOrView,
// as torch's own in-place kernels do) and bump the counters of the written lists after it
// returns. The ops are not differentiable (they return nothing), as torch's fused optimizers.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace fusedopt {
namespace {

using OptT = std::optional<at::Tensor>;
using OptL = std::optional<at::TensorList>;
using TL = at::TensorList;
using T = const at::Tensor&;

void bump(TL list) {
  for (const at::Tensor& t : list) {
    if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
  }
}
void bump(const OptL& list) {
  if (list.has_value()) bump(*list);
}
void bump(const OptT& t) {
  if (t.has_value() && t->defined()) t->unsafeGetTensorImpl()->bump_version();
}

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using AdamSig = void(TL, TL, TL, TL, TL, TL, T, double, double, double, double, bool, bool, bool,
                     const OptT&, const OptT&, const OptL&, const OptL&);
void adam_(TL p, TL g, TL m, TL v, TL vmax, TL steps, T lr, double b1, double b2, double wd,
           double eps, bool amsgrad, bool maximize, bool decoupled, const OptT& gs, const OptT& fi,
           const OptL& masters, const OptL& seeds) {
  static const auto op = handle<AdamSig>("fusedopt::adam_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(p, g, m, v, vmax, steps, lr, b1, b2, wd, eps, amsgrad, maximize, decoupled, gs, fi,
            masters, seeds);
  }
  for (TL l : {p, m, v, vmax, steps}) bump(l);
  bump(masters);
  bump(seeds);
}

using SgdSig = void(TL, TL, TL, T, double, double, double, bool, bool, bool, const OptT&,
                    const OptT&, const OptL&, const OptL&);
void sgd_(TL p, TL g, TL bufs, T lr, double momentum, double dampening, double wd, bool nesterov,
          bool maximize, bool first, const OptT& gs, const OptT& fi, const OptL& masters,
          const OptL& seeds) {
  static const auto op = handle<SgdSig>("fusedopt::sgd_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(p, g, bufs, lr, momentum, dampening, wd, nesterov, maximize, first, gs, fi, masters,
            seeds);
  }
  for (TL l : {p, bufs}) bump(l);
  bump(masters);
  bump(seeds);
}

using LionSig = void(TL, TL, TL, TL, T, double, double, double, bool, const OptT&, const OptT&,
                     const OptL&, const OptL&);
void lion_(TL p, TL g, TL m, TL steps, T lr, double b1, double b2, double wd, bool maximize,
           const OptT& gs, const OptT& fi, const OptL& masters, const OptL& seeds) {
  static const auto op = handle<LionSig>("fusedopt::lion_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(p, g, m, steps, lr, b1, b2, wd, maximize, gs, fi, masters, seeds);
  }
  for (TL l : {p, m, steps}) bump(l);
  bump(masters);
  bump(seeds);
}

using LambSig = void(TL, TL, TL, TL, TL, T, double, double, double, double, bool,
                     std::optional<double>, bool, const OptT&, const OptT&, const OptT&,
                     const OptL&, const OptL&, int64_t, const OptT&);
void lamb_(TL p, TL g, TL m, TL v, TL steps, T lr, double b1, double b2, double wd, double eps,
           bool bias_correction, std::optional<double> trust_clip, bool maximize, const OptT& norms,
           const OptT& gs, const OptT& fi, const OptL& masters, const OptL& seeds, int64_t phase,
           const OptT& sq_sums) {
  static const auto op = handle<LambSig>("fusedopt::lamb_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(p, g, m, v, steps, lr, b1, b2, wd, eps, bias_correction, trust_clip, maximize, norms,
            gs, fi, masters, seeds, phase, sq_sums);
  }
  for (TL l : {p, m, v, steps}) bump(l);
  bump(masters);
  bump(seeds);
  bump(norms);
  bump(sq_sums);
}

using SophiaSig = void(TL, TL, TL, TL, TL, T, double, double, double, double, bool, const OptT&,
                       const OptT&, const OptL&, const OptL&);
void sophia_(TL p, TL g, TL m, TL h, TL steps, T lr, double b1, double rho, double bs, double wd,
             bool maximize, const OptT& gs, const OptT& fi, const OptL& masters,
             const OptL& seeds) {
  static const auto op = handle<SophiaSig>("fusedopt::sophia_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(p, g, m, h, steps, lr, b1, rho, bs, wd, maximize, gs, fi, masters, seeds);
  }
  for (TL l : {p, m, steps}) bump(l);
  bump(masters);
  bump(seeds);
}

using HessianSig = void(TL, TL, double, const OptT&, const OptT&);
void sophia_update_hessian_(TL h, TL g, double beta2, const OptT& gs, const OptT& fi) {
  static const auto op = handle<HessianSig>("fusedopt::sophia_update_hessian_");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(h, g, beta2, gs, fi);
  }
  bump(h);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, Autograd, m) {
  m.impl("adam_", &adam_);
  m.impl("sgd_", &sgd_);
  m.impl("lion_", &lion_);
  m.impl("lamb_", &lamb_);
  m.impl("sophia_", &sophia_);
  m.impl("sophia_update_hessian_", &sophia_update_hessian_);
}

}  // namespace fusedopt
