// The simulated Lion, LAMB, Sophia and sum-of-squares kernels (sim_runner.h).
#include "sim_runner.h"

namespace fusedopt::cuda::sim {

void SimBackend::lion(const Job& job, const LionParams& p, bool maximize) {
  SimRunner r;
  dispatch_lion(r, job, p, maximize);
}

void SimBackend::lamb(const Job& job, const LambParams& p, bool maximize, int passes) {
  SimRunner r;
  dispatch_lamb(r, job, p, maximize, passes);
}

void SimBackend::sophia(const Job& job, const SophiaParams& p, bool maximize) {
  SimRunner r;
  dispatch_sophia(r, job, p, maximize);
}

void SimBackend::sophia_hessian(const Job& job, const SophiaHessianParams& p) {
  SimRunner r;
  dispatch_sophia_hessian(r, job, p);
}

void SimBackend::sum_sq(const Job& job, const SumSqParams& p) {
  SimRunner r;
  dispatch_sum_sq(r, job, p);
}

}  // namespace fusedopt::cuda::sim
