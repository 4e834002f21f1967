// _C.StepPlan: the tensor lists of a step, held on the C++ side between steps.
//
// Note [C++ step plans]
// Calling torch.ops.fusedopt.adam_ from Python converts every list argument, tensor by tensor,
// into the dispatcher's boxed values and back (about 0.1 us per tensor per list: over 1 ms per
// step for 2,000 tensors and six lists, as long as the update itself of 2,000 x 1,024 floats).
// Of those lists only the grads change between steps (`p.grad` is a new tensor after each
// backward); params, states, step counters, masters and seeds are the same tensor objects until
// the Python plan (Note [step plans] in fusedopt/optim/_base.py) is rebuilt. A StepPlan keeps
// them in C++ vectors; a step passes only the grads and the scalars and calls the op through
// its typed (unboxed) dispatcher handle, so device dispatch, validation and the kernels are
// exactly those of torch.ops.fusedopt.<op>. The optimizers use it in eager mode only: under
// torch.compile they call the op itself, which dynamo traces.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fusedopt {
namespace {

using List = std::vector<at::Tensor>;
using OptT = std::optional<at::Tensor>;
using OptL = std::optional<at::TensorList>;
using TL = at::TensorList;

class StepPlan {
 public:
  StepPlan(std::vector<List> lists, std::optional<List> masters, std::optional<List> seeds)
      : lists_(std::move(lists)), masters_(std::move(masters)), seeds_(std::move(seeds)) {}

  // lists: params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
  void adam(const List& grads, const at::Tensor& lr, double beta1, double beta2, double wd,
            double eps, bool amsgrad, bool maximize, bool decoupled, const OptT& grad_scale,
            const OptT& found_inf) const {
    using Sig = void(TL, TL, TL, TL, TL, TL, const at::Tensor&, double, double, double, double,
                     bool, bool, bool, const OptT&, const OptT&, const OptL&, const OptL&);
    static const auto op = handle<Sig>("fusedopt::adam_");
    need(5);
    op.call(lists_[0], grads, lists_[1], lists_[2], lists_[3], lists_[4], lr, beta1, beta2, wd, eps,
            amsgrad, maximize, decoupled, grad_scale, found_inf, masters(), seeds());
  }

  // lists: params, momentum_buffers
  void sgd(const List& grads, const at::Tensor& lr, double momentum, double dampening, double wd,
           bool nesterov, bool maximize, bool first, const OptT& grad_scale,
           const OptT& found_inf) const {
    using Sig = void(TL, TL, TL, const at::Tensor&, double, double, double, bool, bool, bool,
                     const OptT&, const OptT&, const OptL&, const OptL&);
    static const auto op = handle<Sig>("fusedopt::sgd_");
    need(2);
    op.call(lists_[0], grads, lists_[1], lr, momentum, dampening, wd, nesterov, maximize, first,
            grad_scale, found_inf, masters(), seeds());
  }

  // lists: params, exp_avgs, state_steps
  void lion(const List& grads, const at::Tensor& lr, double beta1, double beta2, double wd,
            bool maximize, const OptT& grad_scale, const OptT& found_inf) const {
    using Sig = void(TL, TL, TL, TL, const at::Tensor&, double, double, double, bool, const OptT&,
                     const OptT&, const OptL&, const OptL&);
    static const auto op = handle<Sig>("fusedopt::lion_");
    need(3);
    op.call(lists_[0], grads, lists_[1], lists_[2], lr, beta1, beta2, wd, maximize, grad_scale,
            found_inf, masters(), seeds());
  }

  // lists: params, exp_avgs, exp_avg_sqs, state_steps
  void lamb(const List& grads, const at::Tensor& lr, double beta1, double beta2, double wd,
            double eps, bool bias_correction, std::optional<double> trust_clip, bool maximize,
            const OptT& grad_scale, const OptT& found_inf) const {
    using Sig = void(TL, TL, TL, TL, TL, const at::Tensor&, double, double, double, double, bool,
                     std::optional<double>, bool, const OptT&, const OptT&, const OptT&,
                     const OptL&, const OptL&, int64_t, const OptT&);
    static const auto op = handle<Sig>("fusedopt::lamb_");
    need(4);
    op.call(lists_[0], grads, lists_[1], lists_[2], lists_[3], lr, beta1, beta2, wd, eps,
            bias_correction, trust_clip, maximize, std::nullopt, grad_scale, found_inf, masters(),
            seeds(), 0, std::nullopt);
  }

  // lists: params, exp_avgs, hessians, state_steps
  void sophia(const List& grads, const at::Tensor& lr, double beta1, double rho, double bs,
              double wd, bool maximize, const OptT& grad_scale, const OptT& found_inf) const {
    using Sig = void(TL, TL, TL, TL, TL, const at::Tensor&, double, double, double, double, bool,
                     const OptT&, const OptT&, const OptL&, const OptL&);
    static const auto op = handle<Sig>("fusedopt::sophia_");
    need(4);
    op.call(lists_[0], grads, lists_[1], lists_[2], lists_[3], lr, beta1, rho, bs, wd, maximize,
            grad_scale, found_inf, masters(), seeds());
  }

 private:
  template <typename Sig>
  static c10::TypedOperatorHandle<Sig> handle(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
  }
  void need(size_t k) const {
    TORCH_CHECK(lists_.size() == k, "fusedopt StepPlan: expected ", k, " lists, got ",
                lists_.size());
  }
  OptL masters() const { return masters_ ? OptL(TL(*masters_)) : OptL(); }
  OptL seeds() const { return seeds_ ? OptL(TL(*seeds_)) : OptL(); }

  std::vector<List> lists_;
  std::optional<List> masters_;
  std::optional<List> seeds_;
};

}  // namespace

void bind_plan(py::module_& m) {
  py::class_<StepPlan>(m, "StepPlan",
                       "A step's tensor lists held in C++ (Note [C++ step plans] in plan.cpp).")
      .def(py::init<std::vector<List>, std::optional<List>, std::optional<List>>(),
           py::arg("lists"), py::arg("masters") = py::none(), py::arg("seeds") = py::none())
      .def("adam_", &StepPlan::adam, py::call_guard<py::gil_scoped_release>())
      .def("sgd_", &StepPlan::sgd, py::call_guard<py::gil_scoped_release>())
      .def("lion_", &StepPlan::lion, py::call_guard<py::gil_scoped_release>())
      .def("lamb_", &StepPlan::lamb, py::call_guard<py::gil_scoped_release>())
      .def("sophia_", &StepPlan::sophia, py::call_guard<py::gil_scoped_release>());
}

}  // namespace fusedopt
