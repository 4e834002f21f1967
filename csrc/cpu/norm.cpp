// Sum of squares of every element of a tensor list, for the global grad norm (max_grad_norm,
// fusedopt.clip_grad_norm_): one parallel region for all tensors, fp64 accumulation, fixed-order
// combination (Note [fixed-order reductions]) so the norm has the same bits on any thread count.
#include <ATen/Dispatch.h>
#include <ATen/ops/scalar_tensor.h>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

template <typename scalar_t>
struct SumSqBody {
  // 16 independent fp64 accumulators: the compiler vectorizes across them without needing to
  // reassociate one sum (which it may not do without -ffast-math).
  FUSEDOPT_INLINE static void run(const scalar_t* __restrict x, int64_t n, double* out) {
    constexpr int kLanes = 16;
    double acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        const double v = static_cast<double>(static_cast<float>(x[i + j]));
        acc[j] += v * v;
      }
    }
    double s = 0.0;
    for (; i < n; ++i) {
      const double v = static_cast<double>(static_cast<float>(x[i]));
      s += v * v;
    }
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    *out += s;
  }
};

template <>
struct SumSqBody<double> {
  FUSEDOPT_INLINE static void run(const double* __restrict x, int64_t n, double* out) {
    constexpr int kLanes = 16;
    double acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
    }
    double s = 0.0;
    for (; i < n; ++i) s += x[i] * x[i];
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    *out += s;
  }
};

}  // namespace

at::Tensor sum_sq(const ops::sum_sq::Args& a) {
  double total = 0.0;
  // Grads of different dtypes may be mixed: one MultiTensor per dtype run.
  for (const std::vector<at::Tensor>& group : group_by_dtype(a.tensors)) {
    MultiTensor mt(op_label<ops::sum_sq>(), {{group, "tensors", false}});
    if (mt.total_numel() == 0) continue;
    const Isa isa = current_isa();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, group[0].scalar_type(), "fusedopt_sum_sq_cpu", [&] {
          const std::vector<double> per_tensor =
              mt.reduce(1, [&](const FlatTuple& t, int64_t lo, int64_t hi, double* acc) {
                run_isa<SumSqBody<scalar_t>>(isa, static_cast<const scalar_t*>(t.ptr[0]) + lo,
                                             hi - lo, acc);
              });
          for (double v : per_tensor) total += v;
        });
  }
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble));
}

}  // namespace fusedopt::cpu
