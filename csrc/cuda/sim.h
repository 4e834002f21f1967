// The host simulation of the CUDA backend (Note [one block body, two executors] in block.h):
// the ops of torch.ops.fusedopt_sim run the CUDA ops' host glue, planner and block bodies on CPU
// tensors, every simulated block and thread in turn. For tests; compiled into every build.
#pragma once

#include <cstdint>

namespace fusedopt::cuda::sim {

struct Config {
  int64_t chunk_size;       // elements per block (a multiple of 16)
  int threads;              // threads per block (a power of two)
  int arg_bytes;            // the launch-table variant: 4096 or 32764
  int max_slots;            // 0: the table's capacity; else at most this many slots per launch
  int max_blocks;           // likewise for blocks
  bool scalars_by_pointer;  // read lr/grad_scale/found_inf through pointers, as on the GPU
};
// X(field) for every field of Config, then of Stats (the Python dicts of fusedopt._C.sim).
#define FUSEDOPT_SIM_CONFIG_FIELDS(X) \
  X(chunk_size) X(threads) X(arg_bytes) X(max_slots) X(max_blocks) X(scalars_by_pointer)

struct Stats {
  int64_t launches;
  int64_t blocks;
  int64_t vector_blocks;   // blocks that took the 16-byte vector path
  int64_t skipped_blocks;  // blocks that saw found_inf and left
  int64_t step_launches;
};
#define FUSEDOPT_SIM_STATS_FIELDS(X) \
  X(launches) X(blocks) X(vector_blocks) X(skipped_blocks) X(step_launches)

// The configuration the next simulated ops use (defaults: the GPU's).
Config& config();
Stats& stats();
void reset();  // default configuration, zero counters

}  // namespace fusedopt::cuda::sim
