// Backend-neutral glue between the op registry's generated header (Note [op registry] in
// fusedopt/_opdefs.py) and a backend's kernels: a backend writes each op as one function of the
// op's argument struct, `R f(const ops::<op>::Args&)`, and registers all of them through
// ByArgs, which takes the dispatcher's unboxed arguments (ops::<op>::Sig) and builds the struct.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fusedopt/ops_generated.h"

namespace fusedopt {

template <class Sig>
struct SigReturn;
template <class R, class... A>
struct SigReturn<R(A...)> {
  using type = R;
};
// What the op returns (void or at::Tensor).
template <class Op>
using Return = typename SigReturn<typename Op::Sig>::type;

// ByArgs<Op, &f>::call has the op's unboxed signature and calls f(Op::Args{args...}).
template <class Op, auto Fn, class Sig = typename Op::Sig>
struct ByArgs;
template <class Op, auto Fn, class R, class... A>
struct ByArgs<Op, Fn, R(A...)> {
  static R call(A... args) { return Fn(typename Op::Args{args...}); }
};

// Whether an op's Args has per-param step counters (C++17: torch < 2.13 builds extensions so).
template <class Args, class = void>
struct HasStateSteps : std::false_type {};
template <class Args>
struct HasStateSteps<Args, std::void_t<decltype(std::declval<const Args&>().state_steps)>>
    : std::true_type {};
template <class Args>
inline constexpr bool has_state_steps = HasStateSteps<Args>::value;

// Whether an op's Args has a learning rate (schedule_free_swap_ has none).
template <class Args, class = void>
struct HasLr : std::false_type {};
template <class Args>
struct HasLr<Args, std::void_t<decltype(std::declval<const Args&>().lr)>> : std::true_type {};
template <class Args>
inline constexpr bool has_lr = HasLr<Args>::value;

// "fusedopt.<op>", the op's name in error messages.
template <class Op>
const char* op_label() {
  static const std::string label = std::string("fusedopt.") + Op::name;
  return label.c_str();
}

// The tensors grouped by dtype, groups in order of first appearance (sum_sq takes grads of
// mixed dtypes; a kernel runs on one dtype).
inline std::vector<std::vector<at::Tensor>> group_by_dtype(at::TensorList tensors) {
  std::vector<std::vector<at::Tensor>> groups;
  for (const at::Tensor& t : tensors) {
    size_t k = 0;
    while (k < groups.size() && groups[k][0].scalar_type() != t.scalar_type()) ++k;
    if (k == groups.size()) groups.emplace_back();
    groups[k].push_back(t);
  }
  return groups;
}

}  // namespace fusedopt
