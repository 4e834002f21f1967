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
#include <ATen/OpMathType.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

// Floating-point addition may not be reordered, so `acc += x*x` over a loop stays scalar.
// kLanes accumulators, each taking every kLanes-th element, are that reordering written out,
// and the compiler maps them onto vector lanes (16 doubles: two zmm or four ymm registers).
constexpr int kLanes = 16;

// Whether pass 1 stores the moments (Note [LAMB passes]): only when that does not round them.
template <typename state_t, typename opmath_t>
constexpr bool kStoreInPass1 = std::is_same_v<state_t, opmath_t>;

// Pass 1: the per-tensor sums of p^2 (acc[0]) and u^2 (acc[1]); the moments are stored too
// when kStoreInPass1.
template <typename param_t, typename state_t, typename opmath_t, int MODE, bool MAXIMIZE>
struct LambNormsBody {
  FUSEDOPT_INLINE static void element(const param_t* __restrict p, const param_t* __restrict g,
                                      state_t* __restrict m, state_t* __restrict v,
                                      const float* __restrict master, int64_t k,
                                      const LambScalars<opmath_t>& s, double& pp, double& uu) {
    opmath_t mk = static_cast<opmath_t>(m[k]);
    opmath_t vk = static_cast<opmath_t>(v[k]);
    lamb_moments<MAXIMIZE>(static_cast<opmath_t>(g[k]), mk, vk, s);
    if constexpr (kStoreInPass1<state_t, opmath_t>) {
      m[k] = mk;
      v[k] = vk;
    }
    const opmath_t pk = load_param<MODE, opmath_t>(p, master, k);
    const opmath_t u = lamb_direction(pk, mk, vk, s);
    pp += static_cast<double>(pk) * static_cast<double>(pk);
    uu += static_cast<double>(u) * static_cast<double>(u);
  }

  FUSEDOPT_INLINE static void run(const param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict m, state_t* __restrict v,
                                  const float* __restrict master, int64_t n,
                                  const LambScalars<opmath_t>* scalars, double* acc) {
    const LambScalars<opmath_t> s = *scalars;
    double pp[kLanes] = {};
    double uu[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) element(p, g, m, v, master, i + j, s, pp[j], uu[j]);
    }
    for (int j = 0; i + j < n; ++j) element(p, g, m, v, master, i + j, s, pp[j], uu[j]);
    for (int j = 0; j < kLanes; ++j) {
      acc[0] += pp[j];
      acc[1] += uu[j];
    }
  }
};

// Pass 2: p = p - lr*r*u, the moments first recomputed and stored unless pass 1 stored them.
template <typename param_t, typename state_t, typename opmath_t, int MODE, bool MAXIMIZE>
struct LambApplyBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict m, state_t* __restrict v,
                                  float* __restrict master, int64_t n,
                                  const LambScalars<opmath_t>* scalars, opmath_t neg_step,
                                  uint32_t key, int64_t j0) {
    const LambScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      opmath_t vi = static_cast<opmath_t>(v[i]);
      if constexpr (!kStoreInPass1<state_t, opmath_t>) {
        lamb_moments<MAXIMIZE>(static_cast<opmath_t>(g[i]), mi, vi, s);
        m[i] = static_cast<state_t>(mi);
        v[i] = static_cast<state_t>(vi);
      }
      lamb_apply(pi, lamb_direction(pi, mi, vi, s), neg_step);
      store_param<MODE, opmath_t>(p, master, i, pi, key, j0);
    }
  }
};

struct LambCall {
  int phase;  // 0: both passes; 1: sums only; 2: apply with sums given
  double lr;
  std::optional<double> trust_clip;
  int master_list;
  const std::vector<uint32_t>* keys;
};

// sums: in phase 2 the (global) per-param sums of squares, indexed by param; else filled here.
template <typename param_t, typename state_t, int MODE, bool MAXIMIZE>
void lamb_passes(MultiTensor& mt, const std::vector<LambScalars<at::opmath_type<param_t>>>& sc,
                 const LambCall& c, std::vector<double>& sums, std::vector<double>& norms) {
  using opmath_t = at::opmath_type<param_t>;
  const Isa isa = current_isa();
  const auto& tuples = mt.tuples();
  auto master_at = [&](const FlatTuple& t, int64_t lo) {
    return MODE == kMaster ? static_cast<float*>(t.ptr[c.master_list]) + lo : nullptr;
  };
  if (c.phase != 2) {
    const std::vector<double> local =
        mt.reduce(2, [&](const FlatTuple& t, int64_t lo, int64_t hi, double* acc) {
          run_isa<LambNormsBody<param_t, state_t, opmath_t, MODE, MAXIMIZE>>(
              isa, static_cast<const param_t*>(t.ptr[0]) + lo,
              static_cast<const param_t*>(t.ptr[1]) + lo, static_cast<state_t*>(t.ptr[2]) + lo,
              static_cast<state_t*>(t.ptr[3]) + lo, static_cast<const float*>(master_at(t, lo)),
              hi - lo, &sc[t.index], acc);
        });
    for (size_t k = 0; k < tuples.size(); ++k) {
      sums[2 * tuples[k].index] = local[2 * k];
      sums[2 * tuples[k].index + 1] = local[2 * k + 1];
    }
    if (c.phase == 1) return;
  }
  std::vector<opmath_t> neg_steps(sc.size(), opmath_t(0));
  for (size_t i = 0; i < sc.size(); ++i) {
    const double p_norm = std::sqrt(sums[2 * i]);
    const double u_norm = std::sqrt(sums[2 * i + 1]);
    double r = (p_norm > 0.0 && u_norm > 0.0) ? p_norm / u_norm : 1.0;
    if (c.trust_clip.has_value()) r = std::min(r, *c.trust_clip);
    neg_steps[i] = static_cast<opmath_t>(-(c.lr * r));
    norms[2 * i] = p_norm;
    norms[2 * i + 1] = u_norm;
  }
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    const uint32_t key = MODE == kStochastic ? (*c.keys)[t.index] : 0u;
    run_isa<LambApplyBody<param_t, state_t, opmath_t, MODE, MAXIMIZE>>(
        isa, static_cast<param_t*>(t.ptr[0]) + lo, static_cast<const param_t*>(t.ptr[1]) + lo,
        static_cast<state_t*>(t.ptr[2]) + lo, static_cast<state_t*>(t.ptr[3]) + lo,
        master_at(t, lo), hi - lo, &sc[t.index], neg_steps[t.index], key, lo);
  });
}

}  // namespace

void lamb_(const ops::lamb_::Args& a) {
  const char* op = op_label<ops::lamb_>();
  const size_t n = a.params.size();
  const int64_t phase = a.phase;
  const bool want_norms = a.tensor_norms.has_value() && a.tensor_norms->defined();
  if (want_norms) {
    const at::Tensor& t = *a.tensor_norms;
    TORCH_CHECK(t.device().is_cpu() && at::isFloatingType(t.scalar_type()) && t.dim() == 2 &&
                    t.size(0) == static_cast<int64_t>(n) && t.size(1) == 2,
                op, ": tensor_norms must be a floating-point CPU tensor of shape (", n,
                ", 2), got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  }
  TORCH_CHECK(phase >= 0 && phase <= 2, op, ": phase must be 0, 1 or 2, got ", phase);
  if (phase != 0) {
    TORCH_CHECK(a.sq_sums.has_value() && a.sq_sums->defined(), op, ": phase ", phase,
                " needs sq_sums");
    const at::Tensor& t = *a.sq_sums;
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kDouble && t.dim() == 2 &&
                    t.size(0) == static_cast<int64_t>(n) && t.size(1) == 2 && t.is_contiguous(),
                op, ": sq_sums must be a contiguous float64 CPU tensor of shape (", n, ", 2), got ",
                t.scalar_type(), " ", t.sizes(), " on ", t.device());
  }
  // Phase 1 counts the step; phase 2 uses the count phase 1 left and advances the seeds
  // (Note [LAMB passes]).
  Update u(op, a, {{a.exp_avgs, "exp_avgs"}, {a.exp_avg_sqs, "exp_avg_sqs"}}, phase != 2,
           phase != 1);
  if (u.skip || n == 0) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    std::vector<LambScalars<opmath_t>> sc(n);
    for (size_t i = 0; i < n; ++i) {
      LambScalars<opmath_t>& s = sc[i];
      s.beta1 = static_cast<opmath_t>(a.beta1);
      s.one_minus_beta1 = static_cast<opmath_t>(1.0 - a.beta1);
      s.beta2 = static_cast<opmath_t>(a.beta2);
      s.one_minus_beta2 = static_cast<opmath_t>(1.0 - a.beta2);
      s.bias_correction1 =
          static_cast<opmath_t>(a.bias_correction ? 1.0 - std::pow(a.beta1, u.steps[i]) : 1.0);
      s.bias_correction2 =
          static_cast<opmath_t>(a.bias_correction ? 1.0 - std::pow(a.beta2, u.steps[i]) : 1.0);
      s.eps = static_cast<opmath_t>(a.eps);
      s.weight_decay = static_cast<opmath_t>(a.weight_decay);
      s.inv_grad_scale = static_cast<opmath_t>(u.inv_scale);
    }
    const LambCall call{static_cast<int>(phase), u.lr, a.trust_clip, u.master_list, &u.keys};
    std::vector<double> sums(2 * n, 0.0);
    std::vector<double> norms(2 * n, 0.0);
    if (phase == 2) {
      const double* given_sums = a.sq_sums->data_ptr<double>();
      std::copy(given_sums, given_sums + 2 * n, sums.begin());
    }
    if (a.maximize) {
      lamb_passes<param_t, state_t, MODE, true>(*u.mt, sc, call, sums, norms);
    } else {
      lamb_passes<param_t, state_t, MODE, false>(*u.mt, sc, call, sums, norms);
    }
    if (phase == 1) {
      std::copy(sums.begin(), sums.end(), a.sq_sums->data_ptr<double>());
    } else if (want_norms) {
      a.tensor_norms->copy_(at::from_blob(norms.data(), {static_cast<int64_t>(n), 2},
                                          at::TensorOptions().dtype(at::kDouble)));
    }
  });
}

}  // namespace fusedopt::cpu
