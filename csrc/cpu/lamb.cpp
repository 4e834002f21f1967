// LAMB on the CPU: two passes over a group, each one parallel region, math from
// fusedopt/math.h.
//
// Note [LAMB passes]
// The trust ratio r = ||p|| / ||u|| of a tensor needs all of its u before any of its p may
// change, so LAMB cannot be one pass. Grads are never modified and no update buffer is
// allocated. With storage S bytes per element:
//
// fp32/fp64 storage (the storage dtype is the opmath dtype):
//   pass 1  m, v updated and stored; per-tensor sums of squares of p and of u.
//                                                         read p, g, m, v; write m, v   6*S
//   pass 2  u recomputed from p and the stored m, v, and p = p - lr*r*u.
//                                                         read p, m, v; write p         4*S
//   10*S: 40 B per fp32 parameter. Recomputing u costs what writing it to a scratch buffer
//   in pass 1 and reading it back in pass 2 would (+S, +S, -2*S), and needs no scratch memory.
//
// fp16/bf16 storage: storing m and v in pass 1 would round them, and pass 2's u would then
// differ from the u whose norm was taken, and from the fp32-opmath u every other optimizer
// here steps with (an fp16 v below 6e-5 is subnormal and can lose all its bits). So pass 1
// only reads, and pass 2 recomputes the moments from the same old values:
//   pass 1  per-tensor sums of squares of p and u.        read p, g, m, v               4*S
//   pass 2  m, v, u recomputed, p = p - lr*r*u.           read p, g, m, v; write p, m, v 7*S
//   11*S: 22 B per bf16 parameter.
//
// Either way both passes compute u from the same inputs with the same inline math, so the
// norms belong to the u that is applied, and the result is the same function as
// fusedopt.reference.lamb_ (u from the moments in opmath precision). max_grad_norm is not in
// this op: the optimizer's shared clipping (Note [clipping inside the step]) adds one read of
// the grads (+S) and hands the clip factor in through grad_scale.
// Sums are accumulated in fp64 (kLanes partial sums per piece, pieces combined in a fixed order:
// Note [fixed-order reductions]), so the norms are accurate to about the fp32 rounding of u.
// Between the passes, the host turns the per-tensor sums into one -lr*r per tensor: on the CPU
// this is a loop over a vector, not a synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// Floating-point addition may not be reordered, so `acc += x*x` over a loop stays scalar.
// kLanes accumulators, each taking every kLanes-th element, are that reordering written out,
// and the compiler maps them onto vector lanes (16 doubles: two zmm or four ymm registers).
constexpr int kLanes = 16;

// Whether pass 1 stores the moments (Note [LAMB passes]): only when that does not round them.
template <typename scalar_t, typename opmath_t>
constexpr bool kStoreInPass1 = std::is_same_v<scalar_t, opmath_t>;

// Pass 1: the per-tensor sums of p^2 (acc[0]) and u^2 (acc[1]); the moments are stored too
// when kStoreInPass1.
template <typename scalar_t, typename opmath_t, bool MAXIMIZE>
struct LambNormsBody {
  FUSEDOPT_INLINE static void element(const scalar_t* __restrict p, const scalar_t* __restrict g,
                                      scalar_t* __restrict m, scalar_t* __restrict v, int64_t k,
                                      const LambScalars<opmath_t>& s, double& pp, double& uu) {
    opmath_t mk = static_cast<opmath_t>(m[k]);
    opmath_t vk = static_cast<opmath_t>(v[k]);
    lamb_moments<MAXIMIZE>(static_cast<opmath_t>(g[k]), mk, vk, s);
    if constexpr (kStoreInPass1<scalar_t, opmath_t>) {
      m[k] = mk;
      v[k] = vk;
    }
    const opmath_t pk = static_cast<opmath_t>(p[k]);
    const opmath_t u = lamb_direction(pk, mk, vk, s);
    pp += static_cast<double>(pk) * static_cast<double>(pk);
    uu += static_cast<double>(u) * static_cast<double>(u);
  }

  FUSEDOPT_INLINE static void run(const scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict m, scalar_t* __restrict v, int64_t n,
                                  const LambScalars<opmath_t>* scalars, double* acc) {
    const LambScalars<opmath_t> s = *scalars;
    double pp[kLanes] = {};
    double uu[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) element(p, g, m, v, i + j, s, pp[j], uu[j]);
    }
    for (int j = 0; i + j < n; ++j) element(p, g, m, v, i + j, s, pp[j], uu[j]);
    for (int j = 0; j < kLanes; ++j) {
      acc[0] += pp[j];
      acc[1] += uu[j];
    }
  }
};

// Pass 2: p = p - lr*r*u, the moments first recomputed and stored unless pass 1 stored them.
template <typename scalar_t, typename opmath_t, bool MAXIMIZE>
struct LambApplyBody {
  FUSEDOPT_INLINE static void run(scalar_t* __restrict p, const scalar_t* __restrict g,
                                  scalar_t* __restrict m, scalar_t* __restrict v, int64_t n,
                                  const LambScalars<opmath_t>* scalars, opmath_t neg_step) {
    const LambScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = static_cast<opmath_t>(p[i]);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      opmath_t vi = static_cast<opmath_t>(v[i]);
      if constexpr (!kStoreInPass1<scalar_t, opmath_t>) {
        lamb_moments<MAXIMIZE>(static_cast<opmath_t>(g[i]), mi, vi, s);
        m[i] = static_cast<scalar_t>(mi);
        v[i] = static_cast<scalar_t>(vi);
      }
      lamb_apply(pi, lamb_direction(pi, mi, vi, s), neg_step);
      p[i] = static_cast<scalar_t>(pi);
    }
  }
};

template <typename scalar_t, bool MAXIMIZE>
void lamb_passes(MultiTensor& mt, const std::vector<LambScalars<at::opmath_type<scalar_t>>>& sc,
                 double lr, std::optional<double> trust_clip, std::vector<double>& norms) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Isa isa = current_isa();
  const std::vector<double> sums =
      mt.reduce(2, [&](const FlatTuple& t, int64_t lo, int64_t hi, double* acc) {
        auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
        run_isa<LambNormsBody<scalar_t, opmath_t, MAXIMIZE>>(
            isa, static_cast<const scalar_t*>(at_(0)), static_cast<const scalar_t*>(at_(1)), at_(2),
            at_(3), hi - lo, &sc[t.index], acc);
      });
  std::vector<opmath_t> neg_steps(sc.size(), opmath_t(0));
  const auto& tuples = mt.tuples();
  for (size_t k = 0; k < tuples.size(); ++k) {
    const double p_norm = std::sqrt(sums[2 * k]);
    const double u_norm = std::sqrt(sums[2 * k + 1]);
    double r = (p_norm > 0.0 && u_norm > 0.0) ? p_norm / u_norm : 1.0;
    if (trust_clip.has_value()) r = std::min(r, *trust_clip);
    const int64_t i = tuples[k].index;
    neg_steps[i] = static_cast<opmath_t>(-(lr * r));
    norms[2 * i] = p_norm;
    norms[2 * i + 1] = u_norm;
  }
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto at_ = [&](int k) { return static_cast<scalar_t*>(t.ptr[k]) + lo; };
    run_isa<LambApplyBody<scalar_t, opmath_t, MAXIMIZE>>(
        isa, at_(0), static_cast<const scalar_t*>(at_(1)), at_(2), at_(3), hi - lo, &sc[t.index],
        neg_steps[t.index]);
  });
}

void lamb_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr,
              double beta1, double beta2, double weight_decay, double eps, bool bias_correction,
              std::optional<double> trust_clip, bool maximize,
              const std::optional<at::Tensor>& tensor_norms,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.lamb_";
  const size_t n = params.size();
  check_steps(op, state_steps, n);
  const double lr_v = scalar_value(lr, "lr");
  const double inv_scale = inv_grad_scale(grad_scale);
  const bool want_norms = tensor_norms.has_value() && tensor_norms->defined();
  if (want_norms) {
    const at::Tensor& t = *tensor_norms;
    TORCH_CHECK(t.device().is_cpu() && at::isFloatingType(t.scalar_type()) && t.dim() == 2 &&
                    t.size(0) == static_cast<int64_t>(n) && t.size(1) == 2,
                op, ": tensor_norms must be a floating-point CPU tensor of shape (", n,
                ", 2), got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  }
  MultiTensor mt(op, {{params, "params", true},
                      {grads, "grads", false},
                      {exp_avgs, "exp_avgs", true},
                      {exp_avg_sqs, "exp_avg_sqs", true}});
  if (skip_for_found_inf(found_inf)) return;
  const std::vector<double> steps = increment_steps(state_steps);
  if (n == 0) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "fusedopt_lamb_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        std::vector<LambScalars<opmath_t>> sc(n);
        for (size_t i = 0; i < n; ++i) {
          LambScalars<opmath_t>& s = sc[i];
          s.beta1 = static_cast<opmath_t>(beta1);
          s.one_minus_beta1 = static_cast<opmath_t>(1.0 - beta1);
          s.beta2 = static_cast<opmath_t>(beta2);
          s.one_minus_beta2 = static_cast<opmath_t>(1.0 - beta2);
          s.bias_correction1 =
              static_cast<opmath_t>(bias_correction ? 1.0 - std::pow(beta1, steps[i]) : 1.0);
          s.bias_correction2 =
              static_cast<opmath_t>(bias_correction ? 1.0 - std::pow(beta2, steps[i]) : 1.0);
          s.eps = static_cast<opmath_t>(eps);
          s.weight_decay = static_cast<opmath_t>(weight_decay);
          s.inv_grad_scale = static_cast<opmath_t>(inv_scale);
        }
        std::vector<double> norms(2 * n, 0.0);
        if (maximize) {
          lamb_passes<scalar_t, true>(mt, sc, lr_v, trust_clip, norms);
        } else {
          lamb_passes<scalar_t, false>(mt, sc, lr_v, trust_clip, norms);
        }
        if (want_norms) {
          tensor_norms->copy_(at::from_blob(norms.data(), {static_cast<int64_t>(n), 2},
                                            at::TensorOptions().dtype(at::kDouble)));
        }
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("lamb_", &lamb_cpu); }

}  // namespace fusedopt::cpu
