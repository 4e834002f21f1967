// The simulated Adam kernels (sim_runner.h), in their own translation unit.
#include "sim_runner.h"

namespace fusedopt::cuda::sim {

void SimBackend::adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad,
                      bool maximize) {
  SimRunner r;
  dispatch_adam(r, job, p, decoupled, amsgrad, maximize);
}

}  // namespace fusedopt::cuda::sim
