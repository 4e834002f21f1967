// adafactor_ for the CUDA backend and its host simulation, as ATen calls on the tensors' device.
//
// Not a fused kernel yet: Adafactor's row/column reductions do not fit the elementwise
// multi-tensor launches of this folder (block.h), so this runs torch.optim.Adafactor's
// for-loop math (fusedopt.reference.adafactor_, in opmath) one param at a time, about 20 ATen
// launches and three host reads per param. The compiled CPU kernel is the fused one
// (csrc/cpu/adafactor.cpp, Note [Adafactor passes]).
#include "adafactor.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/adafactor.h"
#include "../common/common.h"

namespace fusedopt::cuda {

void adafactor_aten(const ops::adafactor_::Args& a, const char* op) {
  const size_t n = a.params.size();
  check_adafactor_args(a, op);
  check_unshared(op, "state_steps", a.state_steps, "step counter");
  TORCH_CHECK(a.lr.numel() == 1, "Tensor lr must be 1-element");
  if (a.found_inf.has_value() && a.found_inf->defined() && a.found_inf->item<double>() != 0) {
    return;
  }
  const double lr = a.lr.item<double>();
  const double s = a.grad_scale.has_value() && a.grad_scale->defined()
                       ? 1.0 / a.grad_scale->item<double>()
                       : 1.0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& param = a.params[i];
    at::Tensor step_t = a.state_steps[i];
    step_t.add_(1);
    if (param.numel() == 0) continue;  // it only counts its step
    const double step = step_t.item<double>();
    const at::ScalarType dt = at::toOpMathType(param.scalar_type());
    at::Tensor p = param.to(dt);
    at::Tensor g = a.grads[i].to(dt) * (a.maximize ? -s : s);
    const double w = std::pow(step, a.beta2_decay);
    const double rho = std::min(lr, 1.0 / std::pow(step, 0.5));
    const double sq_n = std::sqrt(static_cast<double>(p.numel()));
    const double rms = at::linalg_vector_norm(p).item<double>() / sq_n;
    const double alpha = (rms > a.eps2 ? rms : a.eps2) * rho;
    if (a.weight_decay != 0) p = p * (1 - lr * a.weight_decay);
    at::Tensor var;
    if (p.dim() >= 2) {
      at::Tensor row_mean = at::linalg_vector_norm(g, 2, {-1}, true).square() / g.size(-1);
      at::Tensor r = a.row_vars[i].to(dt).lerp(row_mean, w);
      at::Tensor col_mean = at::linalg_vector_norm(g, 2, {-2}, true).square() / g.size(-2);
      at::Tensor c = a.col_vars[i].to(dt).lerp(col_mean, w);
      a.row_vars[i].copy_(r);
      a.col_vars[i].copy_(c);
      var = at::matmul(r, c) / r.mean({-2}, true).clamp_min(a.eps1);
    } else {
      var = a.variances[i].to(dt).lerp(g * g, w);
      a.variances[i].copy_(var);
    }
    at::Tensor u = var.clamp_min(a.eps1 * a.eps1).rsqrt() * g;
    const double clip = at::linalg_vector_norm(u).item<double>() / (sq_n * a.d);
    const double neg_step = -alpha / (clip > 1.0 ? clip : 1.0);
    param.copy_(p.add(u, neg_step));
  }
}

}  // namespace fusedopt::cuda
