// What a multi-tensor launch carries in its kernel arguments (Note [launch plans]), and the
// scalars a kernel reads on the device. Host+device code: compiled by nvcc into the kernels and
// by the host compiler into the simulation (csrc/cuda/sim.cpp).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <stdexcept>
#include <utility>

#include "fusedopt/math.h"
#include "launch_plan.h"

namespace fusedopt::cuda {

// Note [scalars on the device]
// lr, grad_scale and found_inf are one-element tensors. A CPU tensor's value is read on the
// host and passed by value (reading host memory needs no synchronisation). A tensor on the
// GPU (a scheduler's device lr, GradScaler's scale and found_inf, the clip factor computed by
// the step) is passed as a pointer and read by the kernel: the host never waits for the GPU,
// and a step captured in a CUDA graph reads the values current at replay. Step counters live
// on the device for the same reason (Note [step counters on the device] in block.h).
enum ScalarKind : int32_t {
  kScalarFloat,
  kScalarDouble,
  kScalarHalf,
  kScalarBFloat16,
  kScalarBool,  // also uint8
  kScalarInt32,
  kScalarInt64,
};

struct ScalarArg {
  const void* ptr;  // the scalar on the device, or nullptr: use `value`
  double value;
  int32_t kind;  // ScalarKind of *ptr

  C10_HOST_DEVICE double get() const {
    if (ptr == nullptr) return value;
    switch (kind) {
      case kScalarFloat: return *static_cast<const float*>(ptr);
      case kScalarDouble: return *static_cast<const double*>(ptr);
      case kScalarHalf: return static_cast<float>(*static_cast<const c10::Half*>(ptr));
      case kScalarBFloat16: return static_cast<float>(*static_cast<const c10::BFloat16*>(ptr));
      case kScalarBool: return *static_cast<const uint8_t*>(ptr);
      case kScalarInt32: return *static_cast<const int32_t*>(ptr);
      default: return static_cast<double>(*static_cast<const int64_t*>(ptr));
    }
  }

  // The arithmetic of an lr's derived scalars (Note [Tensor lr arithmetic] in math.h).
  C10_HOST_DEVICE int32_t lr_dtype() const {
    switch (kind) {
      case kScalarFloat: return kLrFloat;
      case kScalarHalf: return kLrHalf;
      case kScalarBFloat16: return kLrBFloat16;
      default: return kLrDouble;
    }
  }
};

inline ScalarArg host_scalar(double v) { return {nullptr, v, kScalarDouble}; }

// Per-slot flags.
enum : uint8_t {
  kVectorOk = 1,    // every array 16-byte aligned: vector loads and stores
  kStepDouble = 2,  // the step counter is float64 (else float32)
};

// One parameter as the host glue hands it to a runner; the planner's tensor i is refs[i].
struct TensorRef {
  void* ptr[kMaxDepth];  // its arrays (list order), then its seed if the op rounds stochastically
  int64_t numel;
  void* step;     // the parameter's step counter, or nullptr for ops without one
  int32_t index;  // position in the op's lists (per-tensor outputs, reduction counters)
  uint8_t flags;
};

// The kernel argument of one launch: struct-of-arrays, widest types first (no padding inside).
template <int DEPTH, int SLOTS>
struct LaunchTable {
  static constexpr int kDepth = DEPTH;
  static constexpr int kSlots = SLOTS;

  int64_t first_block;  // global number of block 0 (Note [launch plans])
  int64_t chunk_size;
  int32_t num_slots;
  int32_t num_blocks;
  void* ptr[DEPTH][SLOTS];
  int64_t numel[SLOTS];
  int64_t first_chunk[SLOTS];
  void* step[SLOTS];
  int32_t block_start[SLOTS];  // increasing; block_start[0] == 0
  int32_t index[SLOTS];
  uint8_t flags[SLOTS];
};

template <int DEPTH, int ARG_BYTES>
using TableFor = LaunchTable<DEPTH, table_capacity(DEPTH, ARG_BYTES).slots>;

// table_capacity() is arithmetic on slot_bytes(); this checks it against the real layout, for
// every depth 1 to kMaxDepth (D + 1).
template <int ARG_BYTES, int... D>
constexpr bool tables_fit(std::integer_sequence<int, D...>) {
  return ((sizeof(TableFor<D + 1, ARG_BYTES>) + kFunctorArgBytes <= ARG_BYTES) && ...);
}
static_assert(tables_fit<kArgBytesSmall>(std::make_integer_sequence<int, kMaxDepth>{}) &&
                  tables_fit<kArgBytesLarge>(std::make_integer_sequence<int, kMaxDepth>{}),
              "a launch table overflows the kernel-argument space");

// Copies one planned launch into its kernel argument (host side, before the launch).
template <class Table>
void fill_table(Table& t, const PlannedLaunch& l, int64_t chunk_size, const TensorRef* refs) {
  if (static_cast<int>(l.slots.size()) > Table::kSlots) {
    throw std::logic_error("fusedopt: a planned launch exceeds its table's capacity");
  }
  t.first_block = l.first_block;
  t.chunk_size = chunk_size;
  t.num_slots = static_cast<int32_t>(l.slots.size());
  t.num_blocks = l.num_blocks;
  for (size_t s = 0; s < l.slots.size(); ++s) {
    const PlannedSlot& ps = l.slots[s];
    const TensorRef& r = refs[ps.tensor];
    for (int d = 0; d < Table::kDepth; ++d) t.ptr[d][s] = r.ptr[d];
    t.numel[s] = r.numel;
    t.first_chunk[s] = ps.first_chunk;
    t.step[s] = r.step;
    t.block_start[s] = ps.block_start;
    t.index[s] = r.index;
    t.flags[s] = r.flags;
  }
}

// What block `block` of a launch works on.
struct BlockWork {
  int slot;
  int64_t chunk;   // chunk index inside its tensor
  int64_t offset;  // element offset of the chunk inside its tensor (64-bit)
  int n;           // elements in the chunk (the last chunk of a tensor may be short)
};

// The slot of a block: the last one starting at or before it (Note [launch plans]).
template <class Table>
C10_HOST_DEVICE inline int find_slot(const Table& t, int block) {
  int lo = 0;
  int hi = t.num_slots - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t.block_start[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <class Table>
C10_HOST_DEVICE inline BlockWork locate(const Table& t, int block) {
  BlockWork w;
  w.slot = find_slot(t, block);
  w.chunk = t.first_chunk[w.slot] + (block - t.block_start[w.slot]);
  w.offset = w.chunk * t.chunk_size;
  const int64_t left = t.numel[w.slot] - w.offset;
  w.n = static_cast<int>(left < t.chunk_size ? left : t.chunk_size);
  return w;
}

// What a counter incremented after an update holds: a step count (float32 or float64) or a
// stochastic-rounding seed (int64, Note [mixed precision on the GPU] in functors.h).
enum CounterKind : uint8_t {
  kCounterFloat = 0,
  kCounterDouble = 1,
  kCounterInt64 = 2,
};

// The counters an op increments after its update (Note [step counters on the device]).
template <int ARG_BYTES>
struct StepTable {
  static constexpr int kCapacity = (ARG_BYTES - 64) / 9;
  int32_t n;
  void* ptr[kCapacity];
  uint8_t kind[kCapacity];  // CounterKind
};
static_assert(sizeof(StepTable<kArgBytesSmall>) + sizeof(ScalarArg) <= kArgBytesSmall &&
                  sizeof(StepTable<kArgBytesLarge>) + sizeof(ScalarArg) <= kArgBytesLarge,
              "a step table overflows the kernel-argument space");

}  // namespace fusedopt::cuda
