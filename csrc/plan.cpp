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
// planner decides) whose state lists and step counters lie so when it is made keeps one 1-D
// view of each of those buffers. A call then checks the params and the grads, tensor by tensor
// in one cheap pass (one storage, contiguous, end to end, each the size it had when the plan was
// made, the dtype of the list's first) and that every step counter is equal, and calls the op
// once with one tensor per list: the views, and the first step counter, whose new value it
// copies into the others after the op returned (the op leaves it unchanged when it skips the
// step for found_inf, and so then does the copy). The op sees the same elements with the same
// scalars as the joined range, so the result is bitwise the one of the per-tensor call.
// Whatever does not pass (a grad replaced by a separate tensor or sparse, a param given new
// memory with `p.data = ...`, a counter edited by hand) takes the per-tensor call, with its
// checks and errors. The states are not checked on every call: every check reads cache lines
// of their own, and over thousands of params those are the step's cost. A state tensor
// replaced in the optimizer's state (already) or given new memory in place (`.data = ...`,
// `set_()`) needs `optimizer.invalidate_plans()`. The op's autograd kernel bumps the version
// counters of the views (shared with the tensors they were taken from, for the planner's
// views of one buffer), the call those of the params.
// prepare() makes the same checks with the grads the held params have (at::Tensor::grad(),
// what `p.grad` returns), and call(None, ...) then runs that range: the optimizer need not
// build the Python list of the grads (2,000 attribute reads, and 2,000 Python objects touched)
// for a bucket that stepped as one range before.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <array>
#include <cstring>
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

// Builds the range of a list tensor by tensor (end_to_end): each tensor must have numels[i]
// elements (one each when `numels` is null), and each non-empty one be contiguous, of the first
// non-empty one's dtype and storage, right after the one before. Only TensorImpl fields are
// read, and not the sizes (their own cache line): a grad's shape is checked by torch when it is
// assigned, and is its param's.
class RangeBuilder {
 public:
  explicit RangeBuilder(const std::vector<int64_t>* numels) : numels_(numels) {}

  // False if the list cannot lie end to end with `t` as its tensor i.
  bool add(size_t i, const at::Tensor& t) {
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    if (!impl->has_storage() || impl->numel() != (numels_ == nullptr ? 1 : (*numels_)[i])) {
      return false;  // undefined, sparse, resized
    }
    if (impl->numel() == 0) return true;  // no elements: wherever it lies, it breaks no range
    if (!impl->is_contiguous()) return false;
    const auto at = static_cast<const char*>(impl->unsafe_storage().data()) +
                    impl->storage_offset() * static_cast<int64_t>(impl->dtype().itemsize());
    if (r_.first == nullptr) {
      r_.first = &t;
      storage_ = impl->unsafe_storage().unsafeGetStorageImpl();
      dtype_ = impl->dtype();
    } else if (impl->unsafe_storage().unsafeGetStorageImpl() != storage_ ||
               impl->dtype() != dtype_ || at != end_) {
      return false;
    }
    end_ = at + impl->numel() * static_cast<int64_t>(dtype_.itemsize());
    r_.numel += impl->numel();
    return true;
  }

  // The range, once every tensor was added; nullopt if none has elements.
  std::optional<Range> range() const {
    if (r_.first == nullptr) return std::nullopt;
    return r_;
  }

 private:
  const std::vector<int64_t>* numels_;
  Range r_;
  const c10::StorageImpl* storage_ = nullptr;
  caffe2::TypeMeta dtype_;
  const char* end_ = nullptr;
};

// The range of `ts` if its tensors lie end to end (RangeBuilder), else nullopt.
std::optional<Range> end_to_end(at::TensorList ts, const std::vector<int64_t>* numels) {
  if (numels != nullptr && numels->size() != ts.size()) return std::nullopt;
  RangeBuilder b(numels);
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!b.add(i, ts[i])) return std::nullopt;
  }
  return b.range();
}

// Note [metadata prefetch]
// Between two steps the forward and backward passes (the bench: its bandwidth probe) evict the
// params' and grads' TensorImpls and autograd metadata from the caches, and a one-range check
// (Note [one-range steps]) of 2,000 params reads ~6 cache lines per param behind three
// dependent pointers: the param's TensorImpl, its AutogradMeta, the grad's TensorImpl. Walked
// one param after another that is a chain of misses, most of a step of 2,000 small params (0.43
// of 3.5 ms at one thread). The walk requests each level a fixed number of params ahead, the
// deeper levels nearer, each reading the pointer the level above requested earlier.
constexpr size_t kImplAhead = 12, kMetaAhead = 8, kGradAhead = 4;

inline void prefetch_object(const void* p, size_t bytes) {
  for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b);
}

inline void prefetch_param_meta(const List& params, size_t i) {
  const size_t n = params.size();
  if (i + kImplAhead < n) {
    prefetch_object(params[i + kImplAhead].unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
  }
  if (i + kMetaAhead < n) {
    const c10::AutogradMetaInterface* m =
        params[i + kMetaAhead].unsafeGetTensorImpl()->autograd_meta();
    if (m != nullptr) prefetch_object(m, 192);
  }
  if (i + kGradAhead < n) {
    const at::Tensor& g = params[i + kGradAhead].unsafeGetTensorImpl()->grad();
    if (g.defined()) prefetch_object(g.unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
  }
}

// A 1-D view of the range.
at::Tensor range_view(const Range& r) {
  return r.first->as_strided({r.numel}, {1}, r.first->storage_offset());
}

// Whether the counters (a 1-D tensor) all have the first one's value.
template <class T>
bool all_equal(const at::Tensor& counters) {
  const T* v = counters.const_data_ptr<T>();
  return std::all_of(v, v + counters.numel(), [&](T x) { return x == v[0]; });
}

class StepPlan {
 public:
  virtual ~StepPlan() = default;
  // grads: nullopt takes the grads that prepare() found.
  virtual py::object call(const std::optional<List>& grads, const py::args& rest) = 0;
  // Whether the next step can run as one range with the grads the held params have (their
  // `.grad`), fetched here instead of in Python (Note [one-range steps]); changes nothing.
  virtual bool prepare() = 0;
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
    if (flat_) flat_ = hold_ranges();
  }

  bool prepare() override {
    prepared_ = false;
    if (!flat_) return false;
    // The params and their grads in one walk, the grads by reference (copies would count
    // references: an atomic instruction per grad, each waiting for the misses before it).
    const List& params = *lists_[0];
    if (numels_.size() != params.size()) return false;
    RangeBuilder pb(&numels_), gb(&numels_);
    for (size_t i = 0; i < params.size(); ++i) {
      prefetch_param_meta(params, i);
      const at::Tensor& g = params[i].unsafeGetTensorImpl()->grad();
      if (!g.defined() || !pb.add(i, params[i]) || !gb.add(i, g)) return false;
    }
    std::vector<OptList> flat;
    List flat_grads;
    if (!join(pb.range(), gb.range(), flat, flat_grads)) return false;
    prepared_flat_ = std::move(flat);
    prepared_grads_ = std::move(flat_grads);
    prepared_ = true;
    return true;
  }

  py::object call(const std::optional<List>& grads, const py::args& rest) override {
    TORCH_CHECK(rest.size() == kRest, "fusedopt StepPlan(", Op::name, "): expected ", kRest,
                " arguments after the grads, got ", rest.size());
    const bool prepared = prepared_;
    prepared_ = false;
    TORCH_CHECK(grads.has_value() || prepared, "fusedopt StepPlan(", Op::name,
                "): no grads given, and prepare() found none");
    Held held;
    convert(held, rest, std::index_sequence_for<A...>{});
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(Op::qualified_name, "")
                               .template typed<R(A...)>();
    if constexpr (std::is_void_v<R>) {
      py::gil_scoped_release release;
      last_flat = false;
      std::vector<OptList> flat;
      List flat_grads;
      if (!grads.has_value()) {
        flat = std::move(prepared_flat_);
        flat_grads = std::move(prepared_grads_);
      } else if (flat_) {
        one_range(*grads, flat, flat_grads);  // leaves both empty where it cannot
      }
      prepared_flat_.clear();
      prepared_grads_.clear();
      if (!flat.empty()) {
        invoke(op, flat_grads, flat, held, std::index_sequence_for<A...>{});
        after_one_range();
        last_flat = true;
        return py::none();
      }
      invoke(op, *grads, lists_, held, std::index_sequence_for<A...>{});
      return py::none();
    } else {
      TORCH_CHECK(grads.has_value(), "fusedopt StepPlan(", Op::name, "): no grads given");
      R out;
      {
        py::gil_scoped_release release;
        out = invoke(op, *grads, lists_, held, std::index_sequence_for<A...>{});
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

  // The one-tensor lists of the states and counters, if they lie end to end (Note [one-range
  // steps]).
  bool hold_ranges() {
    const List& params = *lists_[0];
    for (const at::Tensor& p : params) numels_.push_back(p.numel());
    ranges_.resize(kLists);
    for (size_t k = 1; k < kLists; ++k) {
      if (!lists_[k].has_value()) continue;
      const List& list = *lists_[k];
      if (list.empty()) {  // a list the call does not take (Adam's max_exp_avg_sqs)
        ranges_[k] = List{};
        continue;
      }
      if (static_cast<int64_t>(k) == steps_) {
        const auto s = end_to_end(list, nullptr);
        const auto type = list[0].scalar_type();
        if (!s.has_value() || s->numel != static_cast<int64_t>(list.size()) ||
            !list[0].device().is_cpu() || (type != at::kFloat && type != at::kDouble)) {
          return false;
        }
        counters_ = range_view(*s);
        ranges_[k] = List{
            counters_.as_strided(at::IntArrayRef{}, at::IntArrayRef{}, counters_.storage_offset())};
        continue;
      }
      const auto r = end_to_end(list, &numels_);
      if (!r.has_value()) return false;
      ranges_[k] = List{range_view(*r)};
    }
    return true;
  }

  // Fills `flat` and `flat_grads` with one tensor per list if the step can run as one range
  // (Note [one-range steps]).
  bool one_range(const List& grads, std::vector<OptList>& flat, List& flat_grads) const {
    const auto p = end_to_end(*lists_[0], &numels_);
    return p.has_value() && join(p, end_to_end(grads, &numels_), flat, flat_grads);
  }

  // The one-range lists from the params' range p and the grads' g (the state lists' ranges
  // held since the plan was made), if both are ranges, on the CPU, and the step counters
  // agree.
  bool join(const std::optional<Range>& p, const std::optional<Range>& g,
            std::vector<OptList>& flat, List& flat_grads) const {
    if (!p.has_value() || !g.has_value() || !p->first->device().is_cpu() || !counters_equal()) {
      return false;
    }
    flat = ranges_;
    flat[0] = List{range_view(*p)};
    flat_grads = List{range_view(*g)};
    return true;
  }

  // Whether every step counter has the first one's value (or there are none).
  bool counters_equal() const {
    return !counters_.defined() ||
           (counters_.scalar_type() == at::kFloat ? all_equal<float>(counters_)
                                                  : all_equal<double>(counters_));
  }

  // After a one-range call: the other counters take the first one's value, and the params'
  // version counters are bumped (Note [version counters] in autograd.cpp).
  void after_one_range() const {
    if (counters_.defined()) {
      if (counters_.scalar_type() == at::kFloat) {
        float* v = counters_.data_ptr<float>();
        std::fill(v + 1, v + counters_.numel(), v[0]);
      } else {
        double* v = counters_.data_ptr<double>();
        std::fill(v + 1, v + counters_.numel(), v[0]);
      }
    }
    // The walk requests each param's TensorImpl line and its version counter ahead (Note
    // [metadata prefetch]): the kernel has evicted both, and each bump is an atomic instruction
    // that waits for the misses before it, but not for prefetches.
    const List& params = *lists_[0];
    const size_t n = params.size();
    for (size_t i = 0; i < n; ++i) {
      if (i + kImplAhead < n) {
        __builtin_prefetch(&params[i + kImplAhead].unsafeGetTensorImpl()->version_counter());
      }
      if (i + kMetaAhead < n) {
        __builtin_prefetch(version_counter_object(params[i + kMetaAhead]));
      }
      params[i].unsafeGetTensorImpl()->bump_version();
    }
  }

  // The address of t's version counter object, for a prefetch: c10::VariableVersion holds only
  // the pointer to it.
  static const void* version_counter_object(const at::Tensor& t) {
    static_assert(sizeof(c10::VariableVersion) == sizeof(void*));
    const void* object;
    std::memcpy(&object, &t.unsafeGetTensorImpl()->version_counter(), sizeof object);
    return object;
  }

  std::vector<OptList> lists_;
  bool flat_;
  int64_t steps_;  // the index of the step counters among the lists, -1: none
  // With flat_: each param's size when the plan was made, the one-tensor lists of the states
  // (index 0, the params', made by each call), and the counters as one 1-D tensor (if any).
  std::vector<int64_t> numels_;
  std::vector<OptList> ranges_;
  at::Tensor counters_;
  // What prepare() found, for the next call without grads.
  bool prepared_ = false;
  std::vector<OptList> prepared_flat_;
  List prepared_grads_;
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
      .def("prepare", &StepPlan::prepare,
           "Whether the next call(None, ...) runs as one range with the held params' grads.")
      .def_readonly("last_flat", &StepPlan::last_flat,
                    "Whether the last call ran as one range (Note [one-range steps]).");
}

}  // namespace fusedopt
