#include "op_util.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/scalar_tensor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>

#include "fusedopt/ops_generated.h"
#include "harness.h"

namespace fusedopt_test {

// --- the ops ---------------------------------------------------------------------------------

namespace {

template <class Op>
c10::TypedOperatorHandle<typename Op::Sig> handle(const char* ns) {
  const std::string name = std::string(ns) + "::" + Op::name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").typed<typename Op::Sig>();
}

}  // namespace

void adam_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
             const at::Tensor& lr, double beta1, double beta2, double weight_decay, double eps,
             bool amsgrad, bool maximize, bool decoupled,
             const std::optional<at::Tensor>& grad_scale,
             const std::optional<at::Tensor>& found_inf, const char* ns) {
  handle<fusedopt::ops::adam_>(ns).call(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                        state_steps, lr, beta1, beta2, weight_decay, eps, amsgrad,
                                        maximize, decoupled, grad_scale, found_inf, std::nullopt,
                                        std::nullopt);
}

void sgd_op(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
            const at::Tensor& lr, double momentum, double dampening, double weight_decay,
            bool nesterov, bool maximize, bool is_first_step,
            const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
            const char* ns) {
  handle<fusedopt::ops::sgd_>(ns).call(params, grads, momentum_buffers, lr, momentum, dampening,
                                       weight_decay, nesterov, maximize, is_first_step, grad_scale,
                                       found_inf, std::nullopt, std::nullopt);
}

namespace {

std::optional<at::Tensor> scale_tensor(double grad_scale) {
  if (grad_scale == 1.0) return std::nullopt;
  return at::scalar_tensor(grad_scale, at::kFloat);
}

}  // namespace

void run_adam(Group& g, const AdamHyper& h, const char* ns) {
  const auto& L = g.lists;
  const TensorVec none;
  adam_op(L[0], L[1], L[2], L[3], h.amsgrad ? L[4] : none, g.steps,
          at::scalar_tensor(h.lr, at::kDouble), h.beta1, h.beta2, h.weight_decay, h.eps, h.amsgrad,
          h.maximize, h.decoupled, scale_tensor(h.grad_scale), std::nullopt, ns);
}

void run_sgd(Group& g, const SgdHyper& h, const char* ns) {
  const auto& L = g.lists;
  const TensorVec none;
  sgd_op(L[0], L[1], h.momentum != 0 ? L[2] : none, at::scalar_tensor(h.lr, at::kDouble),
         h.momentum, h.dampening, h.weight_decay, h.nesterov, h.maximize, h.first,
         scale_tensor(h.grad_scale), std::nullopt, ns);
}

// --- tensor lists ----------------------------------------------------------------------------

std::vector<ParamSpec> standard_specs() {
  using L = Layout;
  return {
      {{0}, L::kContiguous},      {{1}, L::kContiguous},     {{}, L::kContiguous},
      {{15}, L::kContiguous},     {{16}, L::kContiguous},    {{17}, L::kContiguous},
      {{37, 29}, L::kTransposed}, {{1023}, L::kContiguous},  {{3, 0, 5}, L::kContiguous},
      {{24, 20}, L::kSliced},     {{40007}, L::kContiguous}, {{5, 6, 7}, L::kPermuted},
      {{33}, L::kSliced},         {{0}, L::kContiguous},
  };
}

std::vector<Role> adam_roles(bool amsgrad) {
  std::vector<Role> r = {Role::kParam, Role::kGrad, Role::kExpAvg, Role::kExpAvgSq};
  if (amsgrad) r.push_back(Role::kMaxExpAvgSq);
  return r;
}

std::vector<Role> sgd_roles(bool momentum) {
  std::vector<Role> r = {Role::kParam, Role::kGrad};
  if (momentum) r.push_back(Role::kMomentumBuffer);
  return r;
}

namespace {

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::vector<int64_t> reversed(std::vector<int64_t> v) { return {v.rbegin(), v.rend()}; }

// Values of each role: non-zero, varied, and in the range where the updates are visible in
// bf16 (a test whose updates round away proves nothing).
double draw(Role role, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  switch (role) {
    case Role::kParam:
    case Role::kGrad:
    case Role::kMomentumBuffer: return normal(rng);
    case Role::kExpAvg: return 0.3 * normal(rng);
    case Role::kExpAvgSq:
    case Role::kMaxExpAvgSq: {
      const double x = 0.3 * normal(rng);
      return x * x + 1e-3;
    }
  }
  return 0.0;
}

at::Tensor random_tensor(const std::vector<int64_t>& shape, Role role, std::mt19937_64& rng) {
  std::vector<double> v(static_cast<size_t>(numel_of(shape)));
  for (double& x : v) x = draw(role, rng);
  return at::from_blob(v.data(), shape, at::kDouble).clone();
}

// Filled with values of `role`; layout `kind` for list position `k` of a parameter with `spec`.
at::Tensor make_tensor(const ParamSpec& spec, size_t k, Role role, at::ScalarType dtype,
                       std::mt19937_64& rng, Group& g) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const auto& shape = spec.shape;
  auto fill = [&](at::Tensor t) {
    t.copy_(random_tensor(t.sizes().vec(), role, rng));
    return t;
  };
  switch (spec.layout) {
    case Layout::kContiguous: return fill(at::empty(shape, opts));
    case Layout::kTransposed: {
      // k = 0 (param) and k >= 3: transposed; grad and the first state contiguous.
      if (k == 1 || k == 2) return fill(at::empty(shape, opts));
      return fill(at::empty(reversed(shape), opts).t());
    }
    case Layout::kSliced: {
      const int64_t d = static_cast<int64_t>(shape.size()) - 1;
      std::vector<int64_t> base_shape = shape;
      if (k == 1) {
        // Grad expanded along the leading dims: one row in memory, read many times.
        std::vector<int64_t> row(shape.size(), 1);
        row[d] = shape[d];
        return fill(at::empty(row, opts)).expand(shape);
      }
      if (k == 3) return fill(at::empty(shape, opts));
      base_shape[d] *= 2;
      at::Tensor base = fill(at::empty(base_shape, opts));
      const int64_t start = k == 2 ? 1 : 0;
      at::Tensor view = base.slice(d, start, base_shape[d], 2);
      at::Tensor other = base.slice(d, 1 - start, base_shape[d], 2);
      g.guards.emplace_back(other, other.clone());
      return view;
    }
    case Layout::kPermuted:
      return fill(at::empty({shape[1], shape[2], shape[0]}, opts).permute({2, 0, 1}));
  }
  return {};
}

}  // namespace

Group make_group(at::ScalarType dtype, const std::vector<Role>& roles,
                 const std::vector<ParamSpec>& specs, uint64_t seed, bool with_steps) {
  std::mt19937_64 rng(seed);
  Group g;
  g.dtype = dtype;
  g.roles = roles;
  g.lists.resize(roles.size());
  for (const ParamSpec& spec : specs) {
    for (size_t k = 0; k < roles.size(); ++k) {
      g.lists[k].push_back(make_tensor(spec, k, roles[k], dtype, rng, g));
    }
  }
  if (with_steps) {
    // Different counts per param: the per-param bias corrections must reach the right tensors.
    static const double kInitial[] = {0, 1, 4, 99, 0, 2, 7, 0, 3};
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto dt = i == 5 ? at::kDouble : at::kFloat;
      g.steps.push_back(at::scalar_tensor(kInitial[i % 9], at::TensorOptions().dtype(dt)));
    }
  }
  return g;
}

Snapshot snapshot(const Group& g) {
  Snapshot s;
  for (const auto& list : g.lists) {
    TensorVec copies;
    for (const auto& t : list) copies.push_back(t.to(at::kDouble).contiguous().clone());
    s.lists.push_back(std::move(copies));
  }
  for (const auto& t : g.steps) s.steps.push_back(t.item<double>());
  return s;
}

Group clone_group(const Group& g) {
  Group c;
  c.dtype = g.dtype;
  c.roles = g.roles;
  for (const auto& list : g.lists) {
    TensorVec copies;
    for (const auto& t : list) {
      // Same sizes and strides, except that an expanded tensor is materialized.
      bool expanded = false;
      for (int64_t d = 0; d < t.dim(); ++d) expanded |= t.stride(d) == 0 && t.size(d) > 1;
      at::Tensor x = expanded ? at::empty(t.sizes(), t.options())
                              : at::empty_strided(t.sizes(), t.strides(), t.options());
      x.copy_(t);
      copies.push_back(x);
    }
    c.lists.push_back(std::move(copies));
  }
  for (const auto& t : g.steps) c.steps.push_back(t.clone());
  return c;
}

// --- checks ----------------------------------------------------------------------------------

Precision precision_of(at::ScalarType dtype) {
  // Machine epsilons (one ulp at 1.0) and the smallest subnormals; see Note [tolerances].
  constexpr double kF32 = 0x1p-23;
  switch (dtype) {
    case at::kFloat: return {kF32, kF32, 0x1p-149};
    case at::kDouble: return {0x1p-52, 0x1p-52, 0x1p-1074};
    case at::kBFloat16: return {0x1p-7, kF32, 0x1p-133};
    case at::kHalf: return {0x1p-10, kF32, 0x1p-24};
    default: FO_FAIL("no precision for dtype ", dtype);
  }
}

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return "?";
  }
}

std::string describe(const AdamHyper& h) {
  return cat(h.decoupled ? "AdamW" : "Adam", "(lr=", h.lr, ", betas=(", h.beta1, ", ", h.beta2,
             "), eps=", h.eps, ", weight_decay=", h.weight_decay, ", amsgrad=", h.amsgrad,
             ", maximize=", h.maximize, ", grad_scale=", h.grad_scale, ")");
}

std::string describe(const SgdHyper& h) {
  return cat("SGD(lr=", h.lr, ", momentum=", h.momentum, ", dampening=", h.dampening,
             ", weight_decay=", h.weight_decay, ", nesterov=", h.nesterov,
             ", maximize=", h.maximize, ", first=", h.first, ", grad_scale=", h.grad_scale, ")");
}

namespace {

struct Checker {
  const Group& g;
  const std::string& what;
  Precision prec;
  CheckStats& stats;

  void value(size_t list, size_t i, int64_t j, const at::Tensor& out, Ref r, Ref mag, Ref host_mag,
             Ref old) {
    const Ref k = static_cast<const double*>(out.const_data_ptr())[j];
    const Ref tol =
        tolerance(r, mag, prec.eps_storage, prec.eps_opmath, prec.denorm_storage, host_mag);
    if (!close(k, r, tol)) {
      FO_FAIL(what, " ", dtype_name(g.dtype), ": list ", list, " param ", i, " (shape ",
              g.lists[0][i].sizes(), ") element ", j, ": got ", double(k), ", reference ",
              double(r), " (difference ", double(k - r), ", tolerance ", double(tol),
              "; value before the step ", double(old), ")");
    }
    if (std::isfinite(r)) stats.worst = std::max(stats.worst, double(std::fabs(k - r) / tol));
    if (list == 0) {
      ++stats.checked;
      if (std::fabs(r - old) > tol) ++stats.informative;
    }
  }
};

void check_steps_and_guards(const Group& g, const Snapshot& before, const std::string& what) {
  for (size_t i = 0; i < g.steps.size(); ++i) {
    const double now = g.steps[i].item<double>();
    FO_CHECK(now == before.steps[i] + 1, what, ": state_steps[", i, "] = ", now, ", expected ",
             before.steps[i] + 1);
  }
  for (const auto& [view, copy] : g.guards) {
    FO_CHECK(view.equal(copy), what, ": elements next to a sliced tensor were written");
  }
}

}  // namespace

void check_adam(const Group& g, const Snapshot& before, const AdamHyper& h, const std::string& what,
                CheckStats& stats) {
  check_steps_and_guards(g, before, what);
  Checker c{g, what, precision_of(g.dtype), stats};
  for (size_t i = 0; i < g.lists[0].size(); ++i) {
    std::vector<at::Tensor> out;
    for (const auto& list : g.lists) out.push_back(list[i].to(at::kDouble).contiguous());
    auto in = [&](size_t k) {
      return static_cast<const double*>(before.lists[k][i].const_data_ptr());
    };
    const AdamStep st = adam_step(h, before.steps[i] + 1);
    const double* vmax = h.amsgrad ? in(4) : nullptr;
    for (int64_t j = 0; j < out[0].numel(); ++j) {
      const AdamRef r =
          adam_reference(in(0)[j], in(1)[j], in(2)[j], in(3)[j], vmax ? vmax[j] : 0.0, st);
      c.value(0, i, j, out[0], r.p, r.mag_p, r.host_p, in(0)[j]);
      c.value(2, i, j, out[2], r.m, r.mag_m, 0, in(2)[j]);
      c.value(3, i, j, out[3], r.v, r.mag_v, 0, in(3)[j]);
      if (h.amsgrad) c.value(4, i, j, out[4], r.vmax, r.mag_v, 0, in(4)[j]);
    }
    // The grads are read-only.
    FO_CHECK(out[1].equal(before.lists[1][i]), what, ": grads[", i, "] was written");
  }
}

void check_sgd(const Group& g, const Snapshot& before, const SgdHyper& h, const std::string& what,
               CheckStats& stats) {
  check_steps_and_guards(g, before, what);
  Checker c{g, what, precision_of(g.dtype), stats};
  const bool momentum = h.momentum != 0;
  for (size_t i = 0; i < g.lists[0].size(); ++i) {
    std::vector<at::Tensor> out;
    for (const auto& list : g.lists) out.push_back(list[i].to(at::kDouble).contiguous());
    auto in = [&](size_t k) {
      return static_cast<const double*>(before.lists[k][i].const_data_ptr());
    };
    for (int64_t j = 0; j < out[0].numel(); ++j) {
      const SgdRef r = sgd_reference(in(0)[j], in(1)[j], momentum ? in(2)[j] : 0.0, h);
      c.value(0, i, j, out[0], r.p, r.mag_p, 0, in(0)[j]);
      if (momentum) c.value(2, i, j, out[2], r.buf, r.mag_buf, 0, in(2)[j]);
    }
    FO_CHECK(out[1].equal(before.lists[1][i]), what, ": grads[", i, "] was written");
  }
}

bool identical(const Group& a, const Group& b, std::string* where) {
  for (size_t k = 0; k < a.lists.size(); ++k) {
    for (size_t i = 0; i < a.lists[k].size(); ++i) {
      const at::Tensor x = a.lists[k][i].contiguous();
      const at::Tensor y = b.lists[k][i].contiguous();
      if (x.numel() != y.numel() ||
          (x.numel() > 0 &&
           std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) != 0)) {
        if (where) *where = cat("list ", k, " param ", i);
        return false;
      }
    }
  }
  for (size_t i = 0; i < a.steps.size(); ++i) {
    if (a.steps[i].item<double>() != b.steps[i].item<double>()) {
      if (where) *where = cat("state_steps[", i, "]");
      return false;
    }
  }
  return true;
}

void check_unchanged(const Group& g, const Snapshot& before, const std::string& what) {
  for (size_t k = 0; k < g.lists.size(); ++k) {
    for (size_t i = 0; i < g.lists[k].size(); ++i) {
      FO_CHECK(g.lists[k][i].to(at::kDouble).contiguous().equal(before.lists[k][i]), what,
               ": list ", k, " param ", i, " was written");
    }
  }
  for (size_t i = 0; i < g.steps.size(); ++i) {
    FO_CHECK(g.steps[i].item<double>() == before.steps[i], what, ": state_steps[", i,
             "] was written");
  }
  for (const auto& [view, copy] : g.guards) {
    FO_CHECK(view.equal(copy), what, ": elements next to a sliced tensor were written");
  }
}

}  // namespace fusedopt_test
