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
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>

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

class StepPlan {
 public:
  virtual ~StepPlan() = default;
  virtual py::object call(const List& grads, const py::args& rest) const = 0;
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
  explicit OpPlan(std::vector<OptList> lists) : lists_(std::move(lists)) {
    TORCH_CHECK(lists_.size() == kLists, "fusedopt StepPlan: expected ", kLists, " lists, got ",
                lists_.size());
    check_required(std::index_sequence_for<A...>{});
  }

  py::object call(const List& grads, const py::args& rest) const override {
    TORCH_CHECK(rest.size() == kRest, "fusedopt StepPlan(", Op::name, "): expected ", kRest,
                " arguments after the grads, got ", rest.size());
    Held held;
    convert(held, rest, std::index_sequence_for<A...>{});
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(Op::qualified_name, "")
                               .template typed<R(A...)>();
    if constexpr (std::is_void_v<R>) {
      py::gil_scoped_release release;
      invoke(op, grads, held, std::index_sequence_for<A...>{});
      return py::none();
    } else {
      R out;
      {
        py::gil_scoped_release release;
        out = invoke(op, grads, held, std::index_sequence_for<A...>{});
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
  decltype(auto) arg(const List& grads, const Held& held) const {
    using T = std::tuple_element_t<I, std::tuple<A...>>;
    if constexpr (static_cast<int>(I) == Op::kGrads) {
      return at::TensorList(grads);
    } else if constexpr (kIsList<T>) {
      return at::TensorList(*lists_[kPos[I]]);
    } else if constexpr (kIsOptList<T>) {
      const OptList& l = lists_[kPos[I]];
      return l.has_value() ? OptTL(at::TensorList(*l)) : OptTL();
    } else {
      return static_cast<const std::decay_t<T>&>(std::get<I>(held));
    }
  }

  template <class H, size_t... I>
  R invoke(const H& op, const List& grads, const Held& held, std::index_sequence<I...>) const {
    return op.call(arg<I>(grads, held)...);
  }

  std::vector<OptList> lists_;
};

std::unique_ptr<StepPlan> make_plan(const std::string& op, std::vector<OptList> lists) {
#define FUSEDOPT_PLAN(o) \
  if (op == ops::o::name) return std::make_unique<OpPlan<ops::o>>(std::move(lists));
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_PLAN)
#undef FUSEDOPT_PLAN
  throw py::value_error("fusedopt StepPlan: unknown op '" + op + "'");
}

}  // namespace

void bind_plan(py::module_& m) {
  py::class_<StepPlan>(m, "StepPlan",
                       "A step's tensor lists held in C++ (Note [C++ step plans] in plan.cpp).")
      .def(py::init(&make_plan), py::arg("op"), py::arg("lists"))
      .def("call", &StepPlan::call, py::arg("grads"));
}

}  // namespace fusedopt
