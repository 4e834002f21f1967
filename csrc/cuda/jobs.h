// The interface between the host glue (glue.h: validation, staging, planning) and the two
// executors of a planned job: the GPU (the .cu files of this folder) and the host simulation
// (sim.cpp). No CUDA headers.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "fusedopt/math.h"
#include "kernel_table.h"
#include "launch_plan.h"

namespace fusedopt::cuda {

// One (device, dtype) group of an op, planned.
struct Job {
  LaunchPlan plan;
  std::vector<TensorRef> tensors;                  // the planner's tensor i is tensors[i]
  c10::ScalarType dtype = c10::ScalarType::Float;  // the params' (sophia's hessian op: grads')
  c10::ScalarType state_dtype = c10::ScalarType::Float;  // the state lists' (else `dtype`)
  int mode = kPlain;                                     // ParamMode (fusedopt/math.h)
  int device = -1;                                       // CUDA device index (-1 in the simulation)
  int arg_bytes = kArgBytesLarge;                        // which table variant the launches use
};

// The counters of an op's params incremented after its update: step counts and
// stochastic-rounding seeds.
struct StepList {
  std::vector<void*> ptrs;
  std::vector<uint8_t> kinds;  // CounterKind
};

// How a backend wants its jobs planned.
struct ExecConfig {
  int64_t chunk_size = kChunkSize;
  int arg_bytes = kArgBytesLarge;
  int max_slots = 0;                // 0: as many as the table of arg_bytes holds
  int max_blocks = 0;               // 0: likewise
  bool scalars_by_pointer = false;  // pass CPU scalars by pointer too (simulation only)
};

// The kernels of op Op (fusedopt::ops::<op>, functors.h): its Params (the kernels' arguments
// besides the launch table) and run(runner, job, params), which picks the functors for the
// job's dtypes and the op's flags and has the runner launch them.
template <class Op>
struct OpKernels;
template <class Op>
using KernelParams = typename OpKernels<Op>::Params;

// fn(std::integral_constant<int, ARG_BYTES>{}) for the job's launch-table variant, where the
// runner has kernels for it (Runner::kLargeArgs, kSmallArgs: Note [kernel-argument space]).
template <class Runner, class Fn>
void with_arg_bytes(const Job& job, Fn&& fn) {
  if (job.arg_bytes == kArgBytesLarge) {
    if constexpr (Runner::kLargeArgs) return fn(std::integral_constant<int, kArgBytesLarge>{});
  } else if (job.arg_bytes == kArgBytesSmall) {
    if constexpr (Runner::kSmallArgs) return fn(std::integral_constant<int, kArgBytesSmall>{});
  }
  TORCH_CHECK(false, "fusedopt: no kernels compiled for ", job.arg_bytes,
              " bytes of kernel arguments");
}

// The GPU executor of a planned job, a backend B of the host glue (glue.h; the other one, the
// simulation's, is SimBackend in sim.cpp); everything runs on job.device's current stream.
// run<Op> runs OpKernels<Op>::run with the GPU runner (runner.cuh); its explicit
// instantiations are one line per op in this folder's .cu files (FUSEDOPT_GPU_KERNELS).
struct GpuBackend {
  static ExecConfig config(c10::Device device);
  template <class Op>
  static void run(const Job& job, const KernelParams<Op>& params);
  static void sum_partials(c10::Device device, const double* partials, int64_t n, double* out);
  static void increment_steps(c10::Device device, const ExecConfig& cfg, const StepList& steps,
                              const ScalarArg& found_inf);
  static int arg_bytes(int device);  // kernel_arg_bytes() for this device and driver, as compiled
};

}  // namespace fusedopt::cuda
