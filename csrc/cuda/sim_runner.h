// The host executor of the simulation (sim.h): the shared block body (block.h) run for every
// block and thread of every planned launch. Its backend's ops are spread over sim*.cpp so that
// they compile in parallel.
#pragma once

#include <vector>

#include "block.h"
#include "functors.h"
#include "glue.h"
#include "sim.h"

namespace fusedopt::cuda::sim {

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
class SimRunner {
 public:
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

struct SimBackend {
  static ExecConfig config(c10::Device device);
  static void adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad,
                   bool maximize);
  static void sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
                  bool maximize);
  static void lion(const Job& job, const LionParams& p, bool maximize);
  static void lamb(const Job& job, const LambParams& p, bool maximize, int passes);
  static void sophia(const Job& job, const SophiaParams& p, bool maximize);
  static void sophia_hessian(const Job& job, const SophiaHessianParams& p);
  static void sum_sq(const Job& job, const SumSqParams& p);
  static void sum_partials(c10::Device, const double* partials, int64_t n, double* out);
  static void increment_steps(c10::Device, const ExecConfig& cfg, const StepList& steps,
                              const ScalarArg& found_inf);
};

}  // namespace fusedopt::cuda::sim
