// The CPU ops through the dispatcher (as torch.ops.fusedopt.* calls them), against the long
// double reference, element by element: every mode, fp32/fp64/bf16/fp16, every SIMD level this
// CPU has, on lists with odd sizes, empty tensors (also last), a 0-d tensor and mixed layouts.
// Tolerances: Note [tolerances] in reference.h.
#include <ATen/Parallel.h>

#include <cstdio>
#include <vector>

#include "cpu/isa.h"
#include "harness.h"
#include "op_util.h"

namespace {

using fusedopt::cpu::Isa;
using namespace fusedopt_test;

// The levels this CPU supports; the others are reported as skipped.
std::vector<Isa> isa_levels() {
  std::vector<Isa> levels;
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (static_cast<int>(isa) <= static_cast<int>(fusedopt::cpu::detected_isa())) {
      levels.push_back(isa);
    } else {
      std::printf("  %s: not supported by this CPU, skipped\n", fusedopt::cpu::isa_name(isa));
    }
  }
  return levels;
}

// Sets the level for a scope and restores the detected one after.
struct IsaScope {
  explicit IsaScope(Isa isa) { FO_CHECK(fusedopt::cpu::set_isa(isa), "set_isa failed"); }
  ~IsaScope() { fusedopt::cpu::set_isa(fusedopt::cpu::detected_isa()); }
};

std::vector<AdamHyper> adam_configs() {
  std::vector<AdamHyper> hs;
  for (int mode = 0; mode < 8; ++mode) {
    AdamHyper a;  // large enough a learning rate that bf16 params visibly move
    a.lr = 0.05;
    for (AdamHyper h : {a, adam_low_betas(0.02, 0.1, 8.0)}) {
      h.decoupled = mode & 4;
      h.amsgrad = mode & 2;
      h.maximize = mode & 1;
      hs.push_back(h);
    }
  }
  return hs;
}

std::vector<SgdHyper> sgd_configs() {
  std::vector<SgdHyper> hs;
  for (int mode = 0; mode < 4; ++mode) {  // no momentum: maximize x weight decay
    SgdHyper h;
    h.lr = 0.1;
    h.maximize = mode & 1;
    h.weight_decay = (mode & 2) ? 0.1 : 0.0;
    h.grad_scale = (mode & 2) ? 4.0 : 1.0;
    hs.push_back(h);
  }
  for (int mode = 0; mode < 8; ++mode) {  // momentum: first x nesterov x maximize
    SgdHyper h;
    h.lr = 0.1;
    h.momentum = 0.9;
    h.weight_decay = 0.05;
    h.first = mode & 4;
    h.nesterov = mode & 2;
    h.maximize = mode & 1;
    h.dampening = h.nesterov ? 0.0 : 0.1;  // torch.optim requires 0 for Nesterov
    h.grad_scale = (mode & 1) ? 4.0 : 1.0;
    hs.push_back(h);
  }
  return hs;
}

void report(const CheckStats& stats) {
  std::printf("  %lld param elements checked; worst error %.3f of the tolerance\n",
              static_cast<long long>(stats.checked), stats.worst);
  // Guard against a vacuous test: most updates must be larger than the tolerance, or a kernel
  // that never writes the params would pass.
  FO_CHECK(stats.informative * 2 > stats.checked, "only ", stats.informative, " of ", stats.checked,
           " param updates exceed the tolerance: the test cannot see them");
}

void adam_test(at::ScalarType dtype) {
  CheckStats stats;
  uint64_t seed = 1;
  for (Isa isa : isa_levels()) {
    IsaScope scope(isa);
    for (const AdamHyper& h : adam_configs()) {
      Group g = make_group(dtype, adam_roles(h.amsgrad), standard_specs(), seed++, true);
      const Snapshot before = snapshot(g);
      run_adam(g, h);
      check_adam(g, before, h, cat("[", fusedopt::cpu::isa_name(isa), "] ", describe(h)), stats);
    }
  }
  report(stats);
}

void sgd_test(at::ScalarType dtype) {
  CheckStats stats;
  uint64_t seed = 1000;
  for (Isa isa : isa_levels()) {
    IsaScope scope(isa);
    for (const SgdHyper& h : sgd_configs()) {
      Group g = make_group(dtype, sgd_roles(h.momentum != 0), standard_specs(), seed++, false);
      const Snapshot before = snapshot(g);
      run_sgd(g, h);
      check_sgd(g, before, h, cat("[", fusedopt::cpu::isa_name(isa), "] ", describe(h)), stats);
    }
  }
  report(stats);
}

FO_TEST(adam_float32) { adam_test(at::kFloat); }
FO_TEST(adam_float64) { adam_test(at::kDouble); }
FO_TEST(adam_bfloat16) { adam_test(at::kBFloat16); }
FO_TEST(adam_float16) { adam_test(at::kHalf); }
FO_TEST(sgd_float32) { sgd_test(at::kFloat); }
FO_TEST(sgd_float64) { sgd_test(at::kDouble); }
FO_TEST(sgd_bfloat16) { sgd_test(at::kBFloat16); }
FO_TEST(sgd_float16) { sgd_test(at::kHalf); }

// Several steps in a row, each checked against the reference from the previous step's actual
// state (re-synced, so errors cannot hide in compounding), at the best SIMD level.
FO_TEST(adam_seven_steps) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    AdamHyper h;
    h.lr = 0.05;
    h.decoupled = true;
    h.amsgrad = true;
    h.weight_decay = 0.01;
    Group g = make_group(dtype, adam_roles(true), standard_specs(), 77, true);
    CheckStats stats;
    for (int step = 0; step < 7; ++step) {
      // Fresh grads every step (same layouts).
      g.lists[1] =
          make_group(dtype, adam_roles(true), standard_specs(), 100 + step, false).lists[1];
      const Snapshot before = snapshot(g);
      run_adam(g, h);
      check_adam(g, before, h, cat("step ", step + 1, " ", describe(h)), stats);
    }
    std::printf("  %s: ", dtype_name(dtype));
    report(stats);
  }
}

}  // namespace
