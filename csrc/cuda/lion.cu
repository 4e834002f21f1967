// Lion on the GPU (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(lion_)
