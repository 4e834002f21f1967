// The simulated Adam and SGD kernels (sim_runner.h), in their own translation unit.
#include "sim_runner.h"

namespace fusedopt::cuda::sim {

void SimBackend::adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad,
                      bool maximize) {
  SimRunner r;
  dispatch_adam(r, job, p, decoupled, amsgrad, maximize);
}

void SimBackend::sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
                     bool maximize) {
  SimRunner r;
  dispatch_sgd(r, job, p, momentum, first, nesterov, maximize);
}

}  // namespace fusedopt::cuda::sim
