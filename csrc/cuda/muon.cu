// Muon on the GPU: the momentum and the update around the batched Newton-Schulz matmuls
// (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(muon_)
FUSEDOPT_GPU_KERNELS(muon_momentum_)
