// The interface between the host glue (ops.cpp in this folder: validation, staging, planning)
// and the two executors of a planned job: the GPU (the .cu files of this folder) and the host
// simulation (sim.cpp). Plain data, no CUDA headers.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "fusedopt/math.h"
#include "launch_plan.h"
#include "params.h"

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

// The GPU executor (csrc/cuda/*.cu). Each runs on job.device's current stream.
namespace gpu {
int arg_bytes(int device);  // kernel_arg_bytes() for this device and driver, as compiled
void adam(const Job& job, const AdamParams& p, bool decoupled, bool amsgrad, bool maximize);
void sgd(const Job& job, const SgdParams& p, bool momentum, bool first, bool nesterov,
         bool maximize);
void lion(const Job& job, const LionParams& p, bool maximize);
// passes: 1 the norms (LAMB phase 1), 2 the update (phase 2), 3 both (phase 0).
void lamb(const Job& job, const LambParams& p, bool maximize, int passes);
void sophia(const Job& job, const SophiaParams& p, bool maximize);
void sophia_hessian(const Job& job, const SophiaHessianParams& p);
void sum_sq(const Job& job, const SumSqParams& p);
void sum_partials(int device, const double* partials, int64_t n, double* out);
void increment_steps(int device, int arg_bytes, const StepList& steps, const ScalarArg& found_inf);
}  // namespace gpu

}  // namespace fusedopt::cuda
