// The CPU kernels of the fusedopt ops, one function of the op's argument struct each
// (registered for the CPU dispatch key in register.cpp), and the checks and bookkeeping every
// update op does before its kernel runs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "../common/common.h"
#include "../common/mixed.h"
#include "../common/multi_tensor.h"
#include "../common/op_glue.h"
#include "fusedopt/ops_generated.h"
#include "isa.h"

namespace fusedopt::cpu {

#define FUSEDOPT_CPU_DECLARE(op) Return<ops::op> op(const ops::op::Args& a);
FUSEDOPT_FOR_EACH_CPU_OP(FUSEDOPT_CPU_DECLARE)
#undef FUSEDOPT_CPU_DECLARE

// A state list of an update op: element i belongs to params[i], in the call's state dtype.
struct StateList {
  at::TensorList tensors;
  const char* name;
  bool written = true;
};

// The common start of an update op (an Args with params, grads, lr, grad_scale, found_inf,
// master_params, sr_seeds and optionally state_steps): validates every argument and stages
// the lists (nothing is written before), then, unless found_inf is set, counts the step
// (`count_step`; else reads the counters) and advances the stochastic-rounding seeds
// (`advance_seeds`).
struct Update {
  Mixed mx;
  std::optional<MultiTensor> mt;  // lists: params, grads, the states, then master_params
  int master_list = 0;            // the index of master_params in mt (kMaster)
  double lr = 0;
  int32_t lr_dt = 0;
  double inv_scale = 1;
  bool skip = false;           // found_inf is set: the op changes nothing
  std::vector<double> steps;   // the step counters' (new) values
  std::vector<uint32_t> keys;  // the stochastic-rounding keys (kStochastic)

  template <class Args>
  Update(const char* op, const Args& a, const std::vector<StateList>& states,
         bool count_step = true, bool advance_seeds = true) {
    std::vector<at::TensorList> state_lists;
    for (const StateList& s : states) state_lists.push_back(s.tensors);
    mx = check_mixed(op, a.params, state_lists, a.master_params, a.sr_seeds);
    std::vector<ListSpec> lists = {{a.params, "params", true}, {a.grads, "grads", false}};
    for (const StateList& s : states) lists.push_back({s.tensors, s.name, s.written, mx.state});
    master_list = static_cast<int>(lists.size());
    if (mx.mode == kMaster) lists.push_back({*a.master_params, "master_params", true, at::kFloat});
    constexpr bool has_steps = has_state_steps<Args>;
    if constexpr (has_steps) check_steps(op, a.state_steps, a.params.size());
    if constexpr (has_lr<Args>) {
      lr = scalar_value(a.lr, "lr");
      lr_dt = lr_dtype(a.lr);
    }
    inv_scale = inv_grad_scale(a.grad_scale);
    mt.emplace(op, std::move(lists));
    skip = skip_for_found_inf(a.found_inf);
    if (skip) return;
    if constexpr (has_steps) {
      steps = count_step ? increment_steps(a.state_steps) : read_steps(a.state_steps);
    }
    if (mx.mode == kStochastic && advance_seeds) keys = advance_sr_seeds(*a.sr_seeds);
  }
};

// Adam's scalars of each param of an Adam op (adam_, adam8bit_) after Update counted the steps.
// The params of a group mostly share their step: two pow() per tensor are a visible part of a
// step over thousands of small tensors, so a param whose step equals the previous one's copies
// its scalars.
template <typename opmath_t, class Args>
std::vector<AdamScalars<opmath_t>> adam_scalars(const Update& u, const Args& a) {
  std::vector<AdamScalars<opmath_t>> sc(a.params.size());
  for (size_t i = 0; i < sc.size(); ++i) {
    sc[i] = i > 0 && u.steps[i] == u.steps[i - 1]
                ? sc[i - 1]
                : make_adam_scalars<opmath_t>(u.lr, u.lr_dt, a.beta1, a.beta2, a.eps,
                                              a.weight_decay, u.steps[i], u.inv_scale);
  }
  return sc;
}

// Runs an update loop Body (Note [SIMD by target attribute] in isa.h) over every range of `mt`
// at the current ISA: Body::run(p, g, s_0, ..., master, n, scalars, key, j0) with s_k the range
// of list 2 + k when USE[k] (else nullptr: the op does not take that list now), master the fp32
// copy (list master_list, kMaster only), scalars the tensor's entry when per_tensor (else the
// one entry), key the tensor's stochastic-rounding key (kStochastic only), j0 the range's start.
// Params that lie end to end in every list with equal scalars are one range (Note [adjacent
// tensors] in common/multi_tensor.h).
template <class Body, class param_t, class state_t, int MODE, bool... USE, class S>
void run_update(MultiTensor& mt, const S* scalars, bool per_tensor,
                const std::vector<uint32_t>& keys, int master_list) {
  constexpr bool use[] = {USE...};
  const Isa isa = current_isa();
  if constexpr (MODE != kStochastic) {
    mt.join_adjacent([&](int64_t a, int64_t b) {
      return !per_tensor || std::memcmp(scalars + a, scalars + b, sizeof(S)) == 0;
    });
  }
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    float* master = MODE == kMaster ? static_cast<float*>(t.ptr[master_list]) + lo : nullptr;
    const uint32_t key = MODE == kStochastic ? keys[t.index] : 0u;
    [&]<size_t... K>(std::index_sequence<K...>) {
      run_isa<Body>(isa, static_cast<param_t*>(t.ptr[0]) + lo,
                    static_cast<const param_t*>(t.ptr[1]) + lo,
                    (use[K] ? static_cast<state_t*>(t.ptr[2 + K]) + lo : nullptr)..., master,
                    hi - lo, per_tensor ? scalars + t.index : scalars, key, lo);
    }(std::make_index_sequence<sizeof...(USE)>{});
  });
}

// The loop of an update whose one other list is read in the params' dtype (Muon's O,
// Schedule-Free's z): ELEMENT(theta, x, scalars) on each element, theta read and written as
// MODE says. A Body for run_update without state lists.
template <typename param_t, typename opmath_t, int MODE, class S,
          void (*ELEMENT)(opmath_t&, opmath_t, const S&)>
struct ThetaAndOneBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict x,
                                  float* __restrict master, int64_t n, const S* scalars,
                                  uint32_t key, int64_t j0) {
    const S s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t theta = load_param<MODE, opmath_t>(p, master, i);
      ELEMENT(theta, static_cast<opmath_t>(x[i]), s);
      store_param<MODE, opmath_t>(p, master, i, theta, key, j0);
    }
  }
};

}  // namespace fusedopt::cpu
