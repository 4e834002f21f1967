// The argument checks of adafactor_ that every backend does before it writes anything.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "fusedopt/ops_generated.h"

namespace fusedopt {

// One grad, row_var, col_var, variance and step per param; the params strided, of one
// floating-point dtype; each grad of its param's dtype, shape and device; a param of 2 or more
// dims with row_var [..., m, 1] and col_var [..., 1, n] (its variance a placeholder, not read),
// another one with a param-shaped variance (its row_var and col_var placeholders); the state in
// the param's dtype, on its device.
inline void check_adafactor_args(const ops::adafactor_::Args& a, const char* op) {
  const size_t n = a.params.size();
  auto check_len = [&](at::TensorList l, const char* name) {
    TORCH_CHECK(l.size() == n, op, ": expected ", name, " to have ", n,
                " tensors (one per param), got ", l.size());
  };
  check_len(a.grads, "grads");
  check_len(a.row_vars, "row_vars");
  check_len(a.col_vars, "col_vars");
  check_len(a.variances, "variances");
  check_len(a.state_steps, "state_steps");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    TORCH_CHECK(p.defined() && p.layout() == at::kStrided && at::isFloatingType(p.scalar_type()) &&
                    p.scalar_type() == a.params[0].scalar_type(),
                op, ": params[", i,
                "] must be a strided tensor of the params' floating-point dtype ",
                a.params[0].scalar_type());
    const at::Tensor& g = a.grads[i];
    TORCH_CHECK(g.defined() && g.layout() == at::kStrided && g.scalar_type() == p.scalar_type() &&
                    g.sizes() == p.sizes() && g.device() == p.device(),
                op, ": grads[", i, "] must be a strided tensor of its param's dtype ",
                p.scalar_type(), ", shape ", p.sizes(), " and device ", p.device());
    auto check_aux = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
      TORCH_CHECK(t.defined() && t.layout() == at::kStrided && t.scalar_type() == p.scalar_type() &&
                      t.sizes() == shape && t.device() == p.device(),
                  op, ": ", name, "[", i, "] must be ", p.scalar_type(), " of shape ", shape,
                  " on ", p.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ",
                  t.device());
    };
    if (p.dim() >= 2) {
      std::vector<int64_t> rs = p.sizes().vec(), cs = p.sizes().vec();
      rs.back() = 1;
      cs[cs.size() - 2] = 1;
      check_aux(a.row_vars[i], "row_vars", rs);
      check_aux(a.col_vars[i], "col_vars", cs);
    } else {
      check_aux(a.variances[i], "variances", p.sizes());
    }
  }
}

}  // namespace fusedopt
