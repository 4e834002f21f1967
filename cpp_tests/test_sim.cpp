// The CUDA backend's host simulation (csrc/cuda/sim.h: torch.ops.fusedopt_sim, the CUDA ops'
// glue, launch planner and block bodies run on CPU tensors) against the long double reference
// and, bit for bit, against the CPU ops (Note [CPU and CUDA bits] in tests/test_cuda_planner.py),
// on the awkward lists of op_util.h, with the GPU's launch configuration and with one that
// forces many small launches.
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/sim.h"
#include "harness.h"
#include "op_util.h"

namespace {

using namespace fusedopt_test;
namespace sim = fusedopt::cuda::sim;

// The GPU's configuration, and small blocks, few threads, the 4 KB launch table, at most 3
// slots and 5 blocks per launch, scalars read through pointers.
std::vector<sim::Config> configs() {
  sim::reset();
  return {sim::config(), {256, 32, 4096, 3, 5, true}};
}

template <class Hyper, class Run, class Check>
void compare(at::ScalarType dtype, const std::vector<Hyper>& hypers, const std::vector<Role>& roles,
             bool with_steps, Run run, Check check) {
  CheckStats stats;
  uint64_t seed = 5000;
  for (const sim::Config& c : configs()) {
    for (const Hyper& h : hypers) {
      Group g = make_group(dtype, roles, standard_specs(), seed++, with_steps);
      Group cpu = clone_group(g);
      const Snapshot before = snapshot(g);
      sim::reset();
      sim::config() = c;
      run(g, h, "fusedopt_sim");
      FO_CHECK(sim::stats().launches > 0 && sim::stats().blocks > 0, "nothing was simulated");
      run(cpu, h, "fusedopt");
      const std::string what = cat("chunk ", c.chunk_size, " ", describe(h));
      check(g, before, h, what, stats);
      std::string where;
      FO_CHECK(identical(g, cpu, &where), what, ": simulation and CPU op differ at ", where);
    }
  }
  sim::reset();
  std::printf("  %lld param elements checked; worst error %.3f of the tolerance\n",
              static_cast<long long>(stats.checked), stats.worst);
  FO_CHECK(stats.informative * 2 > stats.checked, "only ", stats.informative, " of ", stats.checked,
           " param updates exceed the tolerance: the test cannot see them");
}

void adam_test(at::ScalarType dtype) {
  std::vector<AdamHyper> hs;
  for (int mode = 0; mode < 8; ++mode) {
    AdamHyper h;
    h.lr = 0.05;
    h.weight_decay = 0.1;
    h.grad_scale = mode == 5 ? 8.0 : 1.0;
    h.decoupled = mode & 4;
    h.amsgrad = mode & 2;
    h.maximize = mode & 1;
    hs.push_back(h);
  }
  for (bool amsgrad : {false, true}) {
    std::vector<AdamHyper> sub;
    for (const AdamHyper& h : hs) {
      if (h.amsgrad == amsgrad) sub.push_back(h);
    }
    compare(
        dtype, sub, adam_roles(amsgrad), true,
        [](Group& g, const AdamHyper& h, const char* ns) { run_adam(g, h, ns); }, check_adam);
  }
}

void sgd_test(at::ScalarType dtype) {
  for (bool momentum : {false, true}) {
    std::vector<SgdHyper> hs;
    for (int mode = 0; mode < 4; ++mode) {
      SgdHyper h;
      h.lr = 0.1;
      h.momentum = momentum ? 0.9 : 0.0;
      h.weight_decay = 0.05;
      h.nesterov = momentum && (mode & 2);
      h.first = momentum && (mode & 1);
      h.maximize = mode & 1;
      h.grad_scale = mode == 2 ? 4.0 : 1.0;
      hs.push_back(h);
    }
    compare(
        dtype, hs, sgd_roles(momentum), false,
        [](Group& g, const SgdHyper& h, const char* ns) { run_sgd(g, h, ns); }, check_sgd);
  }
}

FO_TEST(sim_adam) {
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    std::printf("  %s\n", dtype_name(dtype));
    adam_test(dtype);
  }
}

FO_TEST(sim_sgd) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    std::printf("  %s\n", dtype_name(dtype));
    sgd_test(dtype);
  }
}

}  // namespace
