// The op schemas: declared once here; each backend registers its kernels with
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

TORCH_LIBRARY(fusedopt, m) {
  // Sum of squares of every element of every tensor, accumulated in fp64 (the global grad norm).
  m.def("sum_sq(Tensor[] tensors) -> Tensor");
  m.def(
      "adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
      "Tensor lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, "
      "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()");
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
      "bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()");
  m.def(
      "lion_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] state_steps, Tensor lr, float beta1, float beta2, float weight_decay, "
      "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()");
  // tensor_norms: if given, an (n, 2) float tensor that receives (||p||, ||u||) of each param
  // (for tests and for logging trust ratios). phase (params sharded across ranks, whose norms
  // need a reduction between LAMB's passes): 1 increments the steps and writes each param's
  // local (sum p^2, sum u^2) into sq_sums (n x 2, float64, on the params' device); the caller
  // all-reduces them; 2, called with the same arguments, takes the norms from sq_sums and
  // updates params and moments (phase 1 may have stored the moments already); 0 does both.
  m.def(
      "lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] state_steps, Tensor lr, float beta1, float beta2, "
      "float weight_decay, float eps, bool bias_correction, float? trust_clip, bool maximize, "
      "Tensor(e!)? tensor_norms=None, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None, int phase=0, "
      "Tensor(o!)? sq_sums=None) -> ()");
  m.def(
      "sophia_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor[] hessians, "
      "Tensor(c!)[] state_steps, Tensor lr, float beta1, float rho, float bs, "
      "float weight_decay, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()");
  m.def(
      "sophia_update_hessian_(Tensor(a!)[] hessians, Tensor[] grads, float beta2, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}
