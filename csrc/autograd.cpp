// The ops' Autograd kernels: run the backend kernel, then bump the version counters of what the
// op writes.
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
// as torch's own in-place kernels do) and bump the counters of the written arguments after it
// returns. The ops are not differentiable (they return nothing), as torch's fused optimizers.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <utility>

#include "fusedopt/ops_generated.h"

namespace fusedopt {
namespace {

template <class T>
void bump(const T&) {}  // scalars: never written
void bump(const at::Tensor& t) {
  if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}
void bump(at::TensorList list) {
  for (const at::Tensor& t : list) bump(t);
}
template <class T>
void bump(const std::optional<T>& x) {
  if (x.has_value()) bump(*x);
}

template <class Op, class Sig = typename Op::Sig>
struct Autograd;

template <class Op, class... A>
struct Autograd<Op, void(A...)> {
  static void call(A... args) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(Op::qualified_name, "")
                               .template typed<void(A...)>();
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      op.call(args...);
    }
    bump_written(std::index_sequence_for<A...>{}, args...);
  }

  template <size_t... I>
  static void bump_written(std::index_sequence<I...>, const std::remove_reference_t<A>&... args) {
    ((Op::kWritten[I] ? bump(args) : void()), ...);
  }
};

// The in-place ops only: sum_sq, which writes nothing and returns a tensor, keeps the default.
template <class Op>
void register_autograd(torch::Library& m) {
  constexpr bool in_place = [] {
    for (bool w : Op::kWritten) {
      if (w) return true;
    }
    return false;
  }();
  if constexpr (in_place) m.impl(Op::name, &Autograd<Op>::call);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, Autograd, m) {
#define FUSEDOPT_AUTOGRAD(op) register_autograd<ops::op>(m);
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_AUTOGRAD)
#undef FUSEDOPT_AUTOGRAD
}

}  // namespace fusedopt
