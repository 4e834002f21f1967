// Registers the CUDA kernels of every fusedopt op (schemas: csrc/ops.cpp, from the op registry)
// when the extension is built with CUDA. Host code only: the kernels are in this folder's .cu
// files.
#ifdef FUSEDOPT_WITH_CUDA

#include <torch/library.h>

#include "glue.h"

namespace fusedopt::cuda {

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
#define FUSEDOPT_CUDA_IMPL(op) \
  m.impl(ops::op::name, &ByArgs<ops::op, &HostOp<ops::op, GpuBackend>::call>::call);
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_CUDA_IMPL)
#undef FUSEDOPT_CUDA_IMPL
}

}  // namespace fusedopt::cuda

#endif  // FUSEDOPT_WITH_CUDA
