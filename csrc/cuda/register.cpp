// Registers the CUDA kernels of the fusedopt ops (schemas: csrc/ops.cpp) when the extension is
// built with CUDA. Host code only: the kernels are in this folder's .cu files.
#ifdef FUSEDOPT_WITH_CUDA

#include <torch/library.h>

#include "glue.h"

namespace fusedopt::cuda {
namespace {

struct GpuBackend {
  static ExecConfig config(c10::Device device) {
    ExecConfig c;
    // Not a CUDA device: an op with no params (the dispatcher chose CUDA for a scalar
    // argument), which returns after its checks.
    if (device.is_cuda()) c.arg_bytes = gpu::arg_bytes(device.index());
    return c;
  }
  static void adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad,
                   bool maximize) {
    gpu::adam(job, p, decoupled, amsgrad, maximize);
  }
  static void sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
                  bool maximize) {
    gpu::sgd(job, p, momentum, first, nesterov, maximize);
  }
  static void lion(const Job& job, const LionParams& p, bool maximize) {
    gpu::lion(job, p, maximize);
  }
  static void lamb(const Job& job, const LambParams& p, bool maximize, int passes) {
    gpu::lamb(job, p, maximize, passes);
  }
  static void sophia(const Job& job, const SophiaParams& p, bool maximize) {
    gpu::sophia(job, p, maximize);
  }
  static void sophia_hessian(const Job& job, const SophiaHessianParams& p) {
    gpu::sophia_hessian(job, p);
  }
  static void sum_sq(const Job& job, const SumSqParams& p) { gpu::sum_sq(job, p); }
  static void sum_partials(c10::Device device, const double* partials, int64_t n, double* out) {
    gpu::sum_partials(device.index(), partials, n, out);
  }
  static void increment_steps(c10::Device device, const ExecConfig& cfg, const StepList& steps,
                              const ScalarArg& found_inf) {
    gpu::increment_steps(device.index(), cfg.arg_bytes, steps, found_inf);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("adam_", &adam_<GpuBackend>);
  m.impl("sgd_", &sgd_<GpuBackend>);
  m.impl("lion_", &lion_<GpuBackend>);
  m.impl("lamb_", &lamb_<GpuBackend>);
  m.impl("sophia_", &sophia_<GpuBackend>);
  m.impl("sophia_update_hessian_", &sophia_update_hessian_<GpuBackend>);
  m.impl("sum_sq", &sum_sq<GpuBackend>);
}

}  // namespace fusedopt::cuda

#endif  // FUSEDOPT_WITH_CUDA
