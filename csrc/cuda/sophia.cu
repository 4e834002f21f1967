// SophiaG on the GPU: the step and the curvature EMA update (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(sophia_)
FUSEDOPT_GPU_KERNELS(sophia_update_hessian_)
