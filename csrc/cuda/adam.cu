// Adam / AdamW on the GPU: every mode and dtype of AdamFunctor (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(adam_)
