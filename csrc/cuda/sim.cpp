// The host simulation of the CUDA backend: registers torch.ops.fusedopt_sim.* (every fusedopt
// op's signature, CPU tensors) running the CUDA ops' glue (glue.h) with SimBackend, whose runner
// executes the shared block body (block.h) for every block and thread of every planned launch.
#include "sim.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

// Note [simulation at -O1]
// This file instantiates every op's glue and block body for the simulated runner: the largest
// translation unit of the build (132 s at -O3 on one core here, the critical path of a 2-job
// build, and four builds per CI run). The simulation runs in tests on small tensors, where -O1
// is fast enough, and builds in 60% of the time. The pragma covers only what is defined below
// it: torch's and the standard headers are included above, so the inline functions this file
// shares with the kernels' translation units keep their -O3 bodies. It changes no result: the
// flags that do (-ffp-contract=off, no fast-math) are the command line's at every level.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O1")
#endif

#include "block.h"
#include "functors.h"
#include "glue.h"

namespace fusedopt::cuda::sim {

namespace {

Config default_config() { return {kChunkSize, kBlockThreads, kArgBytesLarge, 0, 0, false}; }

struct HostThreads {
  int nthreads;
  template <class Fn>
  void each(Fn&& fn) const {
    for (int tid = 0; tid < nthreads; ++tid) fn(tid);
  }
  void sync() const {}
};

// Runs every launch with the 32 KB table: a smaller planned capacity (Config::arg_bytes = 4096,
// max_slots) fits in it, and one table type per functor halves the compile time.
struct SimRunner {
  static constexpr bool kLargeArgs = true;
  static constexpr bool kSmallArgs = true;

  // A kernel object of its own layout (GpuRunner::blocks, runner.cuh).
  template <class K>
  void blocks(const Job&, const K& k, int num_blocks) {
    const int nt = config().threads;
    TORCH_CHECK(nt <= kBlockThreads, "fusedopt_sim: at most ", kBlockThreads, " threads");
    std::vector<typename K::Shared> shared(1);  // tens of KB: on the heap
    HostThreads ex{nt};
    ++stats().launches;
    for (int b = 0; b < num_blocks; ++b) {
      k(b, ex, shared[0]);
      ++stats().blocks;
      if (k.skip()) ++stats().skipped_blocks;
    }
  }

  template <class F>
  void run(const Job& job, const typename F::Params& params) {
    using Table = TableFor<F::kDepth, kArgBytesLarge>;
    static_assert(sizeof(F) <= kFunctorArgBytes, "functor arguments exceed their reserve");
    const F f{params};
    const int nt = config().threads;
    std::vector<Table> tables(1);  // ~32 KB: on the heap
    Table& table = tables[0];
    typename F::State state;
    std::vector<double> red(static_cast<size_t>(F::kReduce > 0 ? F::kReduce : 1) * nt);
    int flag = 0;
    HostThreads ex{nt};
    for (const PlannedLaunch& l : job.plan.launches) {
      fill_table(table, l, job.plan.chunk_size, job.tensors.data());
      ++stats().launches;
      for (int b = 0; b < table.num_blocks; ++b) {
        run_block(table, f, b, ex, BlockShared<F>{&state, red.data(), &flag});
        ++stats().blocks;
        if (f.skip()) ++stats().skipped_blocks;
        if (table.flags[find_slot(table, b)] & kVectorOk) ++stats().vector_blocks;
      }
    }
  }
};

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

// The simulation's backend of the host glue (GpuBackend's counterpart, jobs.h).
struct SimBackend {
  static ExecConfig config(c10::Device device) {
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

  template <class Op>
  static void run(const Job& job, const KernelParams<Op>& params) {
    SimRunner r;
    OpKernels<Op>::run(r, job, params);
  }

  static void sum_partials(c10::Device, const double* partials, int64_t n, double* out) {
    std::vector<double> red(sim::config().threads);
    HostThreads ex{sim::config().threads};
    sum_partials_block(partials, n, out, ex, red.data());
  }

  static void increment_steps(c10::Device, const ExecConfig& cfg, const StepList& steps,
                              const ScalarArg& found_inf) {
    if (cfg.arg_bytes == kArgBytesSmall) {
      increments<kArgBytesSmall>(steps, found_inf);
    } else {
      increments<kArgBytesLarge>(steps, found_inf);
    }
  }
};

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

// Schemas inferred from the C++ signatures (positional arguments, no alias annotations): the
// simulation is called by tests with the real ops' arguments, never traced.
TORCH_LIBRARY(fusedopt_sim, m) {
#define FUSEDOPT_SIM_DEF(op) \
  m.def(ops::op::name, &ByArgs<ops::op, &HostOp<ops::op, SimBackend>::call>::call);
  FUSEDOPT_FOR_EACH_OP(FUSEDOPT_SIM_DEF)
#undef FUSEDOPT_SIM_DEF
}

}  // namespace fusedopt::cuda::sim
