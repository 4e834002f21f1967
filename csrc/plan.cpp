// _C.StepPlan: the tensor lists of a step, held on the C++ side between steps.
//
// Note [C++ step plans]
// Calling torch.ops.fusedopt.adam_ from Python converts every list argument, tensor by tensor,
// into the dispatcher's boxed values and back (about 0.1 us per tensor per list: over 1 ms per
// step for 2,000 tensors and six lists, as long as the update itself of 2,000 x 1,024 floats).
// Of those lists only the grads change between steps (`p.grad` is a new tensor after each
// backward); params, states, step counters, masters and seeds are the same tensor objects until
// the Python plan (Note [step plans] in fusedopt/optim/_plan.py) is rebuilt. A StepPlan keeps
// them in C++ vectors; a step passes only the grads and the other arguments and calls the op
// through its typed (unboxed) dispatcher handle, so device dispatch, validation and the kernels
// are exactly those of torch.ops.fusedopt.<op>. The optimizers use it in eager mode only: under
// torch.compile they call the op itself, which dynamo traces.
//
// From Python: StepPlan(op, lists) with the op's lists but the grads, in the registry's order
// (OpDef.plan_lists in fusedopt/_opdefs.py; None for an absent optional list), and
// plan.call(grads, *rest) with the op's other arguments in order (OpDef.plan_rest).
//
// Note [one-range steps]
// When every list of a step lies end to end in one buffer (params that are views of one flat
// buffer, grads that are views of one flat grad buffer, the states and step counters the planner
// allocated flat: Note [flat states] in fusedopt/optim/_plan.py), the kernels would join all the
// params into one range anyway (Note [adjacent tensors] in common/multi_tensor.h), after
// validating and staging every tensor of every list: for 2,000 params most of the step. A
// StepPlan made with `flat=True` (elementwise ops without stochastic rounding, on the CPU: the
// planner decides) checks that instead, tensor by tensor in one cheap pass over each list (one
// storage, contiguous, end to end, each shaped like its param, dtype of the list's first; every
// step counter equal), and then calls the op once with one tensor per list: a 1-D view of the
// whole range, and the first param's step counter, whose new value it copies into the others
// after the op returned (the op leaves it unchanged when it skips the step for found_inf, and
// so then does the copy). The op sees the same elements with the same scalars as the joined
// range, so the result is bitwise the one of the per-tensor call. Whatever does not pass (a grad
// replaced by a separate tensor, a param given new memory with `p.data = ...`, a counter edited
// by hand, a sparse or misshapen grad) takes the per-tensor call, with its checks and errors.
// The version counters of every written tensor are bumped, as the op's autograd kernel does.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fusedopt/ops_generated.h"

namespace py = pybind11;

namespace fusedopt {
namespace {

using List = std::vector<at::Tensor>;
using OptList = std::optional<List>;
using OptTL = std::optional<at::TensorList>;

// Where the tensors of a list lie when they lie end to end in one storage (Note [one-range
// steps]): the first non-empty one, and the number of elements from it.
struct Range {
  const at::Tensor* first = nullptr;
  int64_t numel = 0;
};

// The range of `ts` if each tensor is contiguous, of the first tensor's dtype and storage, shaped
// like like[i] (one element when `like` is empty), each non-empty one right after the one
// before; else nullopt. Only TensorImpl fields are read: a few ns per tensor.
std::optional<Range> end_to_end(at::TensorList ts, at::TensorList like) {
  if (ts.empty() || (!like.empty() && like.size() != ts.size())) return std::nullopt;
  const c10::TensorImpl* head = ts[0].unsafeGetTensorImpl();
  if (!head->has_storage()) return std::nullopt;  // undefined, sparse
  const caffe2::TypeMeta dtype = head->dtype();
  const c10::StorageImpl* storage = head->unsafe_storage().unsafeGetStorageImpl();
  const auto* base = static_cast<const char*>(head->unsafe_storage().data());
  const auto size = static_cast<int64_t>(dtype.itemsize());
  Range r;
  const char* end = nullptr;
  for (size_t i = 0; i < ts.size(); ++i) {
    const c10::TensorImpl* t = ts[i].unsafeGetTensorImpl();
    if (!t->has_storage() || t->dtype() != dtype ||
        t->unsafe_storage().unsafeGetStorageImpl() != storage || !t->is_contiguous()) {
      return std::nullopt;
    }
    if (like.empty() ? t->numel() != 1 : t->sizes() != like[i].sizes()) return std::nullopt;
    if (t->numel() == 0) continue;
    const char* at = base + t->storage_offset() * size;
    if (r.first == nullptr) {
      r.first = &ts[i];
    } else if (at != end) {
      return std::nullopt;
    }
    end = at + t->numel() * size;
    r.numel += t->numel();
  }
  if (r.first == nullptr) return std::nullopt;
  return r;
}

// A 1-D view of the range.
at::Tensor range_view(const Range& r) {
  return r.first->as_strided({r.numel}, {1}, r.first->storage_offset());
}

// Whether every step counter of a range of one-element counters has the first one's value.
template <class T>
bool all_equal(const at::Tensor& first, int64_t n) {
  const T* v = first.const_data_ptr<T>();
  return std::all_of(v, v + n, [&](T x) { return x == v[0]; });
}

class StepPlan {
 public:
  virtual ~StepPlan() = default;
  virtual py::object call(const List& grads, const py::args& rest) = 0;
  // Whether the last call ran as one range (Note [one-range steps]).
  bool last_flat = false;
};

template <class T>
constexpr bool kIsList = std::is_same_v<std::decay_t<T>, at::TensorList>;
template <class T>
constexpr bool kIsOptList = std::is_same_v<std::decay_t<T>, OptTL>;

template <class Op, class Sig = typename Op::Sig>
class OpPlan;

template <class Op, class R, class... A>
class OpPlan<Op, R(A...)> final : public StepPlan {
  static constexpr size_t kN = sizeof...(A);
  static constexpr std::array<bool, kN> kList = {(kIsList<A> || kIsOptList<A>)...};
  // For each argument its index among the plan's lists (list arguments but the grads) or among
  // the values after the grads (the other arguments).
  static constexpr std::array<size_t, kN> kPos = [] {
    std::array<size_t, kN> pos{};
    size_t lists = 0, rest = 0;
    for (size_t i = 0; i < kN; ++i) {
      if (static_cast<int>(i) == Op::kGrads) continue;
      pos[i] = kList[i] ? lists++ : rest++;
    }
    return pos;
  }();
  static_assert(Op::kGrads >= 0, "a StepPlan takes the grads anew every call");
  // The list arguments but the grads.
  static constexpr size_t kLists = ((kIsList<A> || kIsOptList<A>)+...) - 1;
  static constexpr size_t kRest = kN - kLists - 1;

  // The values after the grads, converted from Python (list arguments: an unused placeholder).
  using Held =
      std::tuple<std::conditional_t<kIsList<A> || kIsOptList<A>, char, std::decay_t<A>>...>;

 public:
  OpPlan(std::vector<OptList> lists, bool flat, int64_t steps)
      : lists_(std::move(lists)), flat_(flat), steps_(steps) {
    TORCH_CHECK(lists_.size() == kLists, "fusedopt StepPlan: expected ", kLists, " lists, got ",
                lists_.size());
    TORCH_CHECK(steps_ >= -1 && steps_ < static_cast<int64_t>(kLists),
                "fusedopt StepPlan: bad steps list ", steps_);
    TORCH_CHECK(!flat_ || (Op::kGrads == 1 && kPos[0] == 0 && kList[0]), "fusedopt StepPlan(",
                Op::name, "): flat=True needs the params first");
    check_required(std::index_sequence_for<A...>{});
  }

  py::object call(const List& grads, const py::args& rest) override {
    TORCH_CHECK(rest.size() == kRest, "fusedopt StepPlan(", Op::name, "): expected ", kRest,
                " arguments after the grads, got ", rest.size());
    Held held;
    convert(held, rest, std::index_sequence_for<A...>{});
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(Op::qualified_name, "")
                               .template typed<R(A...)>();
    if constexpr (std::is_void_v<R>) {
      py::gil_scoped_release release;
      last_flat = false;
      if (flat_) {
        std::vector<OptList> flat(kLists);
        List flat_grads;
        if (one_range(grads, flat, flat_grads)) {
          invoke(op, flat_grads, flat, held, std::index_sequence_for<A...>{});
          after_one_range();
          last_flat = true;
          return py::none();
        }
      }
      invoke(op, grads, lists_, held, std::index_sequence_for<A...>{});
      return py::none();
    } else {
      R out;
      {
        py::gil_scoped_release release;
        out = invoke(op, grads, lists_, held, std::index_sequence_for<A...>{});
      }
      return py::cast(std::move(out));
    }
  }

 private:
  template <size_t... I>
  void check_required(std::index_sequence<I...>) const {
    (
        [&] {
          if constexpr (kIsList<A> && static_cast<int>(I) != Op::kGrads) {
            TORCH_CHECK(lists_[kPos[I]].has_value(), "fusedopt StepPlan(", Op::name, "): list ",
                        kPos[I], " is None, but the op requires it");
          }
        }(),
        ...);
  }

  template <size_t... I>
  static void convert(Held& held, const py::args& rest, std::index_sequence<I...>) {
    (
        [&] {
          if constexpr (!kList[I]) {
            try {
              std::get<I>(held) = rest[kPos[I]].template cast<std::tuple_element_t<I, Held>>();
            } catch (const py::cast_error&) {
              throw py::type_error("fusedopt StepPlan(" + std::string(Op::name) + "): argument " +
                                   std::to_string(kPos[I]) +
                                   " after the grads has the wrong type (" +
                                   std::string(py::str(py::type::of(rest[kPos[I]]))) + ")");
            }
          }
        }(),
        ...);
  }

  template <size_t I>
  static decltype(auto) arg(const List& grads, const std::vector<OptList>& lists,
                            const Held& held) {
    using T = std::tuple_element_t<I, std::tuple<A...>>;
    if constexpr (static_cast<int>(I) == Op::kGrads) {
      return at::TensorList(grads);
    } else if constexpr (kIsList<T>) {
      return at::TensorList(*lists[kPos[I]]);
    } else if constexpr (kIsOptList<T>) {
      const OptList& l = lists[kPos[I]];
      return l.has_value() ? OptTL(at::TensorList(*l)) : OptTL();
    } else {
      return static_cast<const std::decay_t<T>&>(std::get<I>(held));
    }
  }

  template <class H, size_t... I>
  static R invoke(const H& op, const List& grads, const std::vector<OptList>& lists,
                  const Held& held, std::index_sequence<I...>) {
    return op.call(arg<I>(grads, lists, held)...);
  }

  // Fills `flat` and `flat_grads` with one tensor per list if the step can run as one range
  // (Note [one-range steps]).
  bool one_range(const List& grads, std::vector<OptList>& flat, List& flat_grads) const {
    const List& params = *lists_[0];
    const auto p = end_to_end(params, params);
    if (!p.has_value() || !p->first->device().is_cpu()) return false;
    const auto g = end_to_end(grads, params);
    if (!g.has_value()) return false;
    flat_grads.push_back(range_view(*g));
    for (size_t k = 0; k < kLists; ++k) {
      if (!lists_[k].has_value()) continue;
      const List& list = *lists_[k];
      if (list.empty()) {  // a list the call does not take (Adam's max_exp_avg_sqs)
        flat[k] = List{};
        continue;
      }
      if (static_cast<int64_t>(k) == steps_) {
        const auto s = end_to_end(list, {});
        if (!s.has_value() || s->numel != static_cast<int64_t>(list.size())) return false;
        const at::Tensor& first = list[0];
        if (!first.device().is_cpu()) return false;
        const bool equal =
            first.scalar_type() == at::kFloat
                ? all_equal<float>(first, s->numel)
                : first.scalar_type() == at::kDouble && all_equal<double>(first, s->numel);
        if (!equal) return false;
        flat[k] = List{first};
        continue;
      }
      const auto r = k == 0 ? p : end_to_end(list, params);
      if (!r.has_value()) return false;
      flat[k] = List{range_view(*r)};
    }
    return true;
  }

  // After a one-range call: the other counters take the first one's value, and every written
  // tensor's version counter is bumped (Note [version counters] in autograd.cpp).
  void after_one_range() const {
    for (size_t i = 0; i < kN; ++i) {
      if (!kList[i] || !Op::kWritten[i] || static_cast<int>(i) == Op::kGrads) continue;
      const OptList& l = lists_[kPos[i]];
      if (!l.has_value()) continue;
      if (static_cast<int64_t>(kPos[i]) == steps_) {
        const at::Tensor& first = (*l)[0];
        if (first.scalar_type() == at::kFloat) {
          float* v = first.data_ptr<float>();
          std::fill(v + 1, v + l->size(), v[0]);
        } else {
          double* v = first.data_ptr<double>();
          std::fill(v + 1, v + l->size(), v[0]);
        }
      }
      for (const at::Tensor& t : *l) t.unsafeGetTensorImpl()->bump_version();
    }
  }

  std::vector<OptList> lists_;
  bool flat_;
  int64_t steps_;  // the index of the step counters among the lists, -1: none
};

std::unique_ptr<StepPlan> make_plan(const std::string& op, std::vector<OptList> lists, bool flat,
                                    int64_t steps) {
#define FUSEDOPT_PLAN(o) \
  if (op == ops::o::name) return std::make_unique<OpPlan<ops::o>>(std::move(lists), flat, steps);
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_PLAN)
#undef FUSEDOPT_PLAN
  throw py::value_error("fusedopt StepPlan: unknown op '" + op + "'");
}

}  // namespace

void bind_plan(py::module_& m) {
  py::class_<StepPlan>(m, "StepPlan",
                       "A step's tensor lists held in C++ (Note [C++ step plans] in plan.cpp).")
      .def(py::init(&make_plan), py::arg("op"), py::arg("lists"), py::arg("flat") = false,
           py::arg("steps") = -1)
      .def("call", &StepPlan::call, py::arg("grads"))
      .def_readonly("last_flat", &StepPlan::last_flat,
                    "Whether the last call ran as one range (Note [one-range steps]).");
}

}  // namespace fusedopt
