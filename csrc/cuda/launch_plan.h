// The multi-tensor launch planner: plain host C++ (no CUDA, no torch), unit-tested on the CPU
// (tests/test_cuda_planner.py through fusedopt._C) and used by the CUDA backend and its host
// simulation alike.
//
// Note [launch plans]
// The tensors of a (device, dtype) group are cut into chunks of `chunk_size` elements; every
// chunk is one CUDA block. A launch carries, by value in its kernel arguments, a table of
// *slots*: a tensor's data pointers, its size, the first of its chunks the launch covers and the
// launch's first block working on it (block_start). Slot s covers blocks [block_start[s],
// block_start[s+1]); a block finds its slot by binary search over block_start (uniform across
// the block, in the constant cache, log2(slots) steps), and its chunk is the slot's first chunk
// plus block - block_start[slot]. No per-block entries: the number of blocks of a launch is
// bounded by the grid (2^31 - 1), not by the argument space, so one launch covers a
// 1B-parameter tensor (61,036 blocks) and only the slots fill the argument space
// (table_capacity below); tensors are packed into as few launches as it allows.
//  - a tensor may span launches (when the slots of a launch run out while it has chunks left,
//    or at the grid limit): the next launch gets a new slot for it, starting at the first chunk
//    not yet covered;
//  - sizes, chunk indices and element offsets are 64-bit everywhere (apex #1654, DeepSpeed
//    #7640: an int32 offset left tensors of 2^31+ elements silently unupdated); only the index
//    of an element inside its chunk (< chunk_size) and block numbers inside a launch (< 2^31)
//    are 32-bit;
//  - empty tensors get no slot and no block, wherever they are in the list (TransformerEngine
//    #3202: an empty tensor in the last slot wrote past the launch metadata), so no launch and
//    no slot is ever empty;
//  - the blocks of one tensor are consecutive in the global block numbering (launch.first_block
//    + b), which the reductions rely on (Note [multi-tensor reductions] in block.h).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fusedopt::cuda {

// Elements per chunk (= per CUDA block): 64 KiB per fp32 array. Small enough that a model's
// list balances across the GPU (a GPT-2-small list of 24.8M params makes 1,610 blocks: six
// waves of an H200's 264 resident blocks, so the last, partial wave costs little; at 64Ki
// elements it would be 488 blocks, 1.8 waves), large enough that the per-block setup (one
// step-counter load and two fp64 pow, on one thread, while the SM's other block streams) is
// noise. A 1B-parameter tensor is 61,036 blocks, in one launch (Note [launch plans]).
// Estimated, not yet measured on a GPU: benchmarks/gpu_check.sh is where to tune it.
constexpr int64_t kChunkSize = 16384;
// Threads per block: 512 threads x 4 arrays x 16 B in flight per thread keeps a memory-bound
// kernel at full occupancy on sm_80/sm_90 (2,048 threads/SM) without register pressure.
constexpr int kBlockThreads = 512;
// Resident blocks per SM the plan counts on (the waves above), given to the compiler as
// __launch_bounds__(kBlockThreads, kMinBlocksPerSm) (runner.cuh): it keeps every kernel within
// 65,536 / (512 x 2) = 64 registers per thread. Unbounded, the widest instantiations (bf16
// params with an fp32 master and AMSGrad: 8 elements of 6 arrays per vector step; fp64 Adam)
// took up to 83, so one block per SM. benchmarks/check_registers.py checks the built library.
constexpr int kMinBlocksPerSm = 2;
// The most pointers one parameter contributes to a kernel: Adam with 8-bit moments has six
// arrays (p, g, two codes, two absmax: q8_kernels.h), plus the fp32 master copy or the
// stochastic-rounding seed (Note [mixed precision on the GPU] in functors.h).
constexpr int kMaxDepth = 7;
// Vector loads and stores move this many bytes (ld.global.v4.u32).
constexpr int kVectorBytes = 16;

// Kernel-argument space. Every driver and GPU accepts 4 KB of kernel parameters; CUDA 12.1
// raised the limit to 32,764 bytes on Volta (sm_70) and newer, given a 12.1+ driver.
constexpr int kArgBytesSmall = 4096;
constexpr int kArgBytesLarge = 32764;
// Room kept for the functor's own arguments (learning rate, betas, ...): static_assert-ed
// against sizeof(functor) where kernels are instantiated.
constexpr int kFunctorArgBytes = 512;
constexpr int kTableHeaderBytes = 24;

// The argument space to plan for: 32 KB where the driver (cudaDriverGetVersion, e.g. 12010 for
// 12.1) and the GPU (compute capability major) allow it, else 4 KB.
constexpr int kernel_arg_bytes(int driver_version, int cc_major) {
  return driver_version >= 12010 && cc_major >= 7 ? kArgBytesLarge : kArgBytesSmall;
}

// Bytes of one slot in the launch table (kernel_table.h): `depth` data pointers, numel,
// first chunk, step-counter pointer (int64/pointer sized), block_start, index (int32), flags.
constexpr int64_t slot_bytes(int depth) { return 8 * depth + 8 + 8 + 8 + 4 + 4 + 1; }

// The most blocks of one launch: CUDA's grid limit (gridDim.x).
constexpr int kMaxGridBlocks = 2147483647;

struct Capacity {
  int slots;   // tensors (or pieces of tensors) per launch
  int blocks;  // chunks per launch
};

// The largest table of `depth` arrays that fits `arg_bytes` with the functor's arguments.
// With 32 KB, Adam (depth 4) gets 495 slots (10,000 tensors in 21 launches); with 4 KB, 54.
constexpr Capacity table_capacity(int depth, int arg_bytes) {
  const int64_t room = arg_bytes - kFunctorArgBytes - kTableHeaderBytes - 8;  // 8: tail padding
  return {static_cast<int>(room / slot_bytes(depth)), kMaxGridBlocks};
}

struct PlannedSlot {
  int32_t tensor;       // index into the planner's input list
  int64_t first_chunk;  // the tensor's first chunk in this launch
  int32_t block_start;  // the launch's first block working on this slot
  int32_t num_blocks;   // consecutive blocks (chunks) of this slot
};

struct PlannedLaunch {
  int64_t first_block = 0;  // global index of block 0 (blocks of earlier launches before it)
  int num_blocks = 0;
  std::vector<PlannedSlot> slots;
};

struct LaunchPlan {
  int64_t chunk_size = kChunkSize;
  int64_t total_blocks = 0;  // over all launches
  std::vector<PlannedLaunch> launches;
};

constexpr int64_t num_chunks(int64_t numel, int64_t chunk_size) {
  return (numel + chunk_size - 1) / chunk_size;
}

// Packs the chunks of `numels` (in list order, empty tensors skipped) into launches of at most
// cap.slots slots and cap.blocks blocks. `first_block` numbers the first block (so several
// plans can share one array of reduction partials).
inline LaunchPlan plan_launches(const std::vector<int64_t>& numels, int64_t chunk_size,
                                Capacity cap, int64_t first_block = 0) {
  if (chunk_size <= 0 || chunk_size % 16 != 0 || chunk_size > (int64_t{1} << 30)) {
    // A multiple of 16 elements keeps every chunk start 16-byte aligned when its tensor is.
    throw std::invalid_argument("chunk_size must be a positive multiple of 16 below 2^30, got " +
                                std::to_string(chunk_size));
  }
  if (cap.slots < 1 || cap.blocks < 1) {
    throw std::invalid_argument("bad launch capacity: " + std::to_string(cap.slots) + " slots, " +
                                std::to_string(cap.blocks) + " blocks");
  }
  LaunchPlan plan;
  plan.chunk_size = chunk_size;
  PlannedLaunch cur;
  int64_t next_block = first_block;
  auto flush = [&] {
    cur.first_block = next_block;
    next_block += cur.num_blocks;
    plan.launches.push_back(std::move(cur));
    cur = PlannedLaunch();
  };
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t numel = numels[t];
    if (numel < 0) throw std::invalid_argument("negative numel");
    const int64_t chunks = num_chunks(numel, chunk_size);  // 0 for an empty tensor: no slot
    for (int64_t c = 0; c < chunks;) {
      if (static_cast<int>(cur.slots.size()) == cap.slots || cur.num_blocks == cap.blocks) {
        flush();
      }
      const int64_t room = cap.blocks - cur.num_blocks;
      const int32_t take = static_cast<int32_t>(chunks - c < room ? chunks - c : room);
      cur.slots.push_back({static_cast<int32_t>(t), c, cur.num_blocks, take});
      cur.num_blocks += take;
      c += take;
    }
  }
  if (!cur.slots.empty()) flush();
  plan.total_blocks = next_block - first_block;
  return plan;
}

// Whether a parameter's arrays can all be read and written with 16-byte vectors: every base
// address 16-byte aligned (chunk starts then are too, chunk_size being a multiple of 16).
// Sizes need not be multiples of the vector width: the tail of a chunk takes the scalar loop.
inline bool vector_aligned(const void* const* ptrs, int n) {
  uintptr_t bits = 0;
  for (int i = 0; i < n; ++i) bits |= reinterpret_cast<uintptr_t>(ptrs[i]);
  return bits % kVectorBytes == 0;
}

}  // namespace fusedopt::cuda
