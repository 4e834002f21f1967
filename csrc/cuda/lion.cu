// Lion on the GPU (functors.h).
#include "runner.cuh"

namespace fusedopt::cuda::gpu {

void lion(const Job& job, const LionParams& p, bool maximize) {
  GpuRunner r;
  dispatch_lion(r, job, p, maximize);
}

}  // namespace fusedopt::cuda::gpu
