// The op schemas of torch.ops.fusedopt, from the op registry (Note [op registry] in
// fusedopt/_opdefs.py, which documents every argument); each backend registers its kernels with
// TORCH_LIBRARY_IMPL(fusedopt, <Backend>, m), and fusedopt/_ops.py registers a fake kernel for
// each so torch.compile can trace a step.
//
// Conventions: lists are parallel (element i of every list belongs to param i); lists the op
// writes are annotated (a!); `lr` is a one-element Tensor so that a changing learning rate never
// forces torch.compile to recompile; grad_scale / found_inf are torch.amp.GradScaler's (see
// Note [found_inf and grad_scale]); the per-param step counters are incremented by the op.
// The update ops take the mixed-precision lists master_params and sr_seeds (None or empty: not
// used) and allow states in their own dtype: Note [mixed precision] in fusedopt/math.h.
#include <torch/library.h>

#include "fusedopt/ops_generated.h"

TORCH_LIBRARY(fusedopt, m) {
#define FUSEDOPT_DEF(op) m.def(fusedopt::ops::op::schema);
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_DEF)
#undef FUSEDOPT_DEF
}
