// The CPU kernels of the registry's ops that have one (Note [op registry] in
// fusedopt/_opdefs.py).
#include <torch/library.h>

#include "ops.h"

namespace fusedopt::cpu {

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
#define FUSEDOPT_CPU_IMPL(op) m.impl(ops::op::name, &ByArgs<ops::op, &cpu::op>::call);
  FUSEDOPT_FOR_EACH_CPU_OP(FUSEDOPT_CPU_IMPL)
#undef FUSEDOPT_CPU_IMPL
}

}  // namespace fusedopt::cpu
