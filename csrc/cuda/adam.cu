// Adam / AdamW on the GPU: every mode and dtype of AdamFunctor (functors.h).
#include "runner.cuh"

namespace fusedopt::cuda::gpu {

void adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad, bool maximize) {
  GpuRunner r;
  dispatch_adam(r, job, p, decoupled, amsgrad, maximize);
}

}  // namespace fusedopt::cuda::gpu
