// Helpers for the tests of the CPU ops: calling them through the dispatcher, building tensor
// lists with awkward sizes and layouts, and checking results against reference.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "reference.h"

namespace fusedopt_test {

using TensorVec = std::vector<at::Tensor>;

// --- the ops, as Python calls them: torch.ops.fusedopt.adam_ / sgd_ --------------------------
// ns: the op namespace, "fusedopt" or the CUDA backend's host simulation, "fusedopt_sim".
void adam_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
             const at::Tensor& lr, double beta1, double beta2, double weight_decay, double eps,
             bool amsgrad, bool maximize, bool decoupled,
             const std::optional<at::Tensor>& grad_scale = std::nullopt,
             const std::optional<at::Tensor>& found_inf = std::nullopt,
             const char* ns = "fusedopt");
void sgd_op(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
            const at::Tensor& lr, double momentum, double dampening, double weight_decay,
            bool nesterov, bool maximize, bool is_first_step,
            const std::optional<at::Tensor>& grad_scale = std::nullopt,
            const std::optional<at::Tensor>& found_inf = std::nullopt, const char* ns = "fusedopt");

// --- tensor lists ----------------------------------------------------------------------------
// How the tensors of one parameter are laid out in memory.
enum class Layout {
  kContiguous,  // everything contiguous
  kTransposed,  // 2-d param transposed (dense, not contiguous); grad and the first state
                // contiguous, i.e. strided differently from the param; the other states
                // transposed like the param
  kSliced,      // param every other column of a bigger tensor (not dense); grad expanded from
                // one row (stride 0); first state the other columns of another tensor
  kPermuted,    // 3-d, every tensor permuted the same way (dense, same strides: the flat path)
};

struct ParamSpec {
  std::vector<int64_t> shape;
  Layout layout = Layout::kContiguous;
};

// Odd sizes around the SIMD widths (8/16 fp32 lanes) and one above the parallel grain size
// (32768: with 2 threads the split falls inside it), a 0-d tensor, empty tensors in the middle and
// in the last slot, and each layout.
std::vector<ParamSpec> standard_specs();

// What one list holds; decides the distribution of its values (see op_util.cpp).
enum class Role { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kMomentumBuffer };

struct Group {
  at::ScalarType dtype;
  std::vector<Role> roles;       // one per list; roles[0] == kParam
  std::vector<TensorVec> lists;  // lists[k][i]: list k, param i
  TensorVec steps;               // Adam's state_steps (empty for SGD)
  // Elements that share storage with a sliced tensor but are not part of it: (view, copy).
  std::vector<std::pair<at::Tensor, at::Tensor>> guards;
};

// Builds the lists for `roles` with the given specs, values drawn from a generator seeded with
// `seed`. Adam groups get state_steps: 0-d float32 counters (one float64) at assorted values.
Group make_group(at::ScalarType dtype, const std::vector<Role>& roles,
                 const std::vector<ParamSpec>& specs, uint64_t seed, bool with_steps);
std::vector<Role> adam_roles(bool amsgrad);
std::vector<Role> sgd_roles(bool momentum);

// Contiguous float64 copies of every tensor of every list (and the steps), for the reference.
struct Snapshot {
  std::vector<TensorVec> lists;
  std::vector<double> steps;
};
Snapshot snapshot(const Group& g);
// Deep copies of the group (same layouts), to run the same update twice.
Group clone_group(const Group& g);

// --- checks ----------------------------------------------------------------------------------
struct Precision {
  double eps_storage, eps_opmath, denorm_storage;
};
Precision precision_of(at::ScalarType dtype);

struct CheckStats {
  double worst = 0;         // max |k - r| / tolerance over all checked elements
  int64_t checked = 0;      // param elements compared
  int64_t informative = 0;  // param elements whose update is larger than the tolerance
};

// Runs the reference over `before` and compares with the group's current contents; throws a
// harness failure naming `what`, the list, the param and the element on the first mismatch.
// Also checks the step counters and the guards.
void check_adam(const Group& g, const Snapshot& before, const AdamHyper& h, const std::string& what,
                CheckStats& stats);
void check_sgd(const Group& g, const Snapshot& before, const SgdHyper& h, const std::string& what,
               CheckStats& stats);

// Calls the op on a group with the hyper-parameters (lr as a float64 0-d tensor, grad_scale as
// a float32 tensor when != 1, as GradScaler passes it).
void run_adam(Group& g, const AdamHyper& h, const char* ns = "fusedopt");
void run_sgd(Group& g, const SgdHyper& h, const char* ns = "fusedopt");

// Bitwise equality of every tensor of two groups (and the steps).
bool identical(const Group& a, const Group& b, std::string* where);
// Every tensor of the group equal to the snapshot (nothing was written).
void check_unchanged(const Group& g, const Snapshot& before, const std::string& what);

const char* dtype_name(at::ScalarType dtype);
std::string describe(const AdamHyper& h);
std::string describe(const SgdHyper& h);

}  // namespace fusedopt_test
