// The host simulation of the CUDA backend: registers torch.ops.fusedopt_sim.* (the fusedopt ops'
// signatures, CPU tensors) running the CUDA ops' glue (glue.h) with SimBackend, whose runner
// executes the shared block body (block.h) for every block and thread of every planned launch.
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "sim_runner.h"

namespace fusedopt::cuda::sim {

namespace {

Config default_config() { return {kChunkSize, kBlockThreads, kArgBytesLarge, 0, 0, false}; }

template <int ARG_BYTES>
void increments(const StepList& steps, const ScalarArg& found_inf) {
  std::vector<StepTable<ARG_BYTES>> tables(1);
  StepTable<ARG_BYTES>& t = tables[0];
  const size_t n = steps.ptrs.size();
  for (size_t begin = 0; begin < n; begin += t.kCapacity) {
    const size_t end = std::min(n, begin + t.kCapacity);
    t.n = static_cast<int32_t>(end - begin);
    for (size_t i = begin; i < end; ++i) {
      t.ptr[i - begin] = steps.ptrs[i];
      t.kind[i - begin] = steps.kinds[i];
    }
    HostThreads ex{32};
    increment_steps_block(t, found_inf, ex);
    ++stats().step_launches;
  }
}

}  // namespace

Config& config() {
  static Config c = default_config();
  return c;
}

Stats& stats() {
  static Stats s{};
  return s;
}

void reset() {
  config() = default_config();
  stats() = Stats{};
}

ExecConfig SimBackend::config(c10::Device device) {
  TORCH_CHECK(device.is_cpu(), "fusedopt_sim runs on CPU tensors, got ", device);
  const Config& c = sim::config();
  ExecConfig e;
  e.chunk_size = c.chunk_size;
  e.arg_bytes = c.arg_bytes;
  e.max_slots = c.max_slots;
  e.max_blocks = c.max_blocks;
  e.scalars_by_pointer = c.scalars_by_pointer;
  return e;
}

void SimBackend::sum_partials(c10::Device, const double* partials, int64_t n, double* out) {
  std::vector<double> red(sim::config().threads);
  HostThreads ex{sim::config().threads};
  sum_partials_block(partials, n, out, ex, red.data());
}

void SimBackend::increment_steps(c10::Device, const ExecConfig& cfg, const StepList& steps,
                                 const ScalarArg& found_inf) {
  if (cfg.arg_bytes == kArgBytesSmall) {
    increments<kArgBytesSmall>(steps, found_inf);
  } else {
    increments<kArgBytesLarge>(steps, found_inf);
  }
}

}  // namespace fusedopt::cuda::sim

// Schemas inferred from the C++ signatures (positional arguments, no alias annotations): the
// simulation is called by tests with the real ops' arguments, never traced.
TORCH_LIBRARY(fusedopt_sim, m) {
  using B = fusedopt::cuda::sim::SimBackend;
  m.def("adam_", &fusedopt::cuda::adam_<B>);
  m.def("sgd_", &fusedopt::cuda::sgd_<B>);
  m.def("lion_", &fusedopt::cuda::lion_<B>);
  m.def("lamb_", &fusedopt::cuda::lamb_<B>);
  m.def("sophia_", &fusedopt::cuda::sophia_<B>);
  m.def("sophia_update_hessian_", &fusedopt::cuda::sophia_update_hessian_<B>);
  m.def("sum_sq", &fusedopt::cuda::sum_sq<B>);
}
