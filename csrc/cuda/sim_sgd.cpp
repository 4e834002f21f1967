// The simulated SGD kernels (sim_runner.h), in their own translation unit.
#include "sim_runner.h"

namespace fusedopt::cuda::sim {

void SimBackend::sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
                     bool maximize) {
  SimRunner r;
  dispatch_sgd(r, job, p, momentum, first, nesterov, maximize);
}

}  // namespace fusedopt::cuda::sim
