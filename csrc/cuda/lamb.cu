// LAMB on the GPU: both passes, with the per-tensor norms reduced on the device
// (Note [multi-tensor reductions] in block.h).
#include "runner.cuh"

namespace fusedopt::cuda::gpu {

void lamb(const Job& job, const LambParams& p, bool maximize, int passes) {
  GpuRunner r;
  dispatch_lamb(r, job, p, maximize, passes);
}

}  // namespace fusedopt::cuda::gpu
