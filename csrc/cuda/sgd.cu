// SGD on the GPU: every mode and dtype of SgdFunctor (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(sgd_)
