// SGD on the GPU: every mode and dtype of SgdFunctor (functors.h).
#include "runner.cuh"

namespace fusedopt::cuda::gpu {

void sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
         bool maximize) {
  GpuRunner r;
  dispatch_sgd(r, job, p, momentum, first, nesterov, maximize);
}

}  // namespace fusedopt::cuda::gpu
