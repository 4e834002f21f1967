// SGD (momentum, dampening, Nesterov, weight decay, maximize) on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

template <typename scalar_t, typename opmath_t, bool MOMENTUM, bool FIRST, bool NESTEROV,
          bool MAXIMIZE>
struct SgdBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict buf, int64_t n,
                                  const SgdScalars<opmath_t>* scalars) {
    const SgdScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = static_cast<opmath_t>(p[i]);
      opmath_t bi = (MOMENTUM && !FIRST) ? static_cast<opmath_t>(buf[i]) : opmath_t(0);
      sgd_element<MOMENTUM, FIRST, NESTEROV, MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), bi, s);
      p[i] = static_cast<scalar_t>(pi);
      if (MOMENTUM) buf[i] = static_cast<scalar_t>(bi);
    }
  }
};

template <typename scalar_t, bool MOMENTUM, bool FIRST, bool NESTEROV, bool MAXIMIZE>
void sgd_group(MultiTensor& mt, const SgdScalars<at::opmath_type<scalar_t>>& sc) {
  using Body = SgdBody<scalar_t, at::opmath_type<scalar_t>, MOMENTUM, FIRST, NESTEROV, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
    run_isa<Body>(isa, at_(0), static_cast<const scalar_t*>(at_(1)),
                  MOMENTUM ? at_(2) : static_cast<scalar_t*>(nullptr), hi - lo, &sc);
  });
}

template <typename scalar_t>
void sgd_dispatch(MultiTensor& mt, const SgdScalars<at::opmath_type<scalar_t>>& sc, bool momentum,
                  bool first, bool nesterov, bool maximize) {
  if (!momentum) {
    return maximize ? sgd_group<scalar_t, false, false, false, true>(mt, sc)
                    : sgd_group<scalar_t, false, false, false, false>(mt, sc);
  }
  const int mode = (first ? 4 : 0) | (nesterov ? 2 : 0) | (maximize ? 1 : 0);
  switch (mode) {
    case 0: return sgd_group<scalar_t, true, false, false, false>(mt, sc);
    case 1: return sgd_group<scalar_t, true, false, false, true>(mt, sc);
    case 2: return sgd_group<scalar_t, true, false, true, false>(mt, sc);
    case 3: return sgd_group<scalar_t, true, false, true, true>(mt, sc);
    case 4: return sgd_group<scalar_t, true, true, false, false>(mt, sc);
    case 5: return sgd_group<scalar_t, true, true, false, true>(mt, sc);
    case 6: return sgd_group<scalar_t, true, true, true, false>(mt, sc);
    default: return sgd_group<scalar_t, true, true, true, true>(mt, sc);
  }
}

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             const at::Tensor& lr, double momentum, double dampening, double weight_decay,
             bool nesterov, bool maximize, bool is_first_step,
             const std::optional<at::Tensor>& grad_scale,
             const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.sgd_";
  const bool use_momentum = momentum != 0.0;
  std::vector<ListSpec> lists = {{params, "params", true}, {grads, "grads", false}};
  if (use_momentum) {
    lists.push_back({momentum_buffers, "momentum_buffers", true});
  } else {
    TORCH_CHECK(momentum_buffers.empty(), op, ": momentum_buffers must be empty when momentum=0");
  }
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  MultiTensor mt(op, std::move(lists));
  if (skip_for_found_inf(found_inf) || params.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "fusedopt_sgd_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const SgdScalars<opmath_t> s =
            make_sgd_scalars<opmath_t>(lr_v, momentum, dampening, weight_decay, inv_scale);
        sgd_dispatch<scalar_t>(mt, s, use_momentum, is_first_step, nesterov, maximize);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("sgd_", &sgd_cpu); }

}  // namespace fusedopt::cpu
