// Schedule-Free AdamW on the GPU (functors.h).
#include "runner.cuh"

FUSEDOPT_GPU_KERNELS(schedule_free_adamw_)
