// SophiaG on the GPU: the step and the curvature EMA update (functors.h).
#include "runner.cuh"

namespace fusedopt::cuda::gpu {

void sophia(const Job& job, const SophiaParams& p, bool maximize) {
  GpuRunner r;
  dispatch_sophia(r, job, p, maximize);
}

void sophia_hessian(const Job& job, const SophiaHessianParams& p) {
  GpuRunner r;
  dispatch_sophia_hessian(r, job, p);
}

}  // namespace fusedopt::cuda::gpu
