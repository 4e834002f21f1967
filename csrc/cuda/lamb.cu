// LAMB on the GPU: both passes, with the per-tensor norms reduced on the device
// (Note [multi-tensor reductions] in block.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(lamb_)
