// The CPU multi-tensor driver: validates parallel tensor lists, flattens them into one
// element range, and runs a kernel over that range with one parallel region for the whole group.
//
// Note [one parallel region per group]
// torch's CPU fused optimizers open a parallel region per tensor, which costs microseconds per
// tensor and leaves threads idle on small ones. Here the non-empty tensors of a group are laid
// end to end (prefix sums of their sizes) and at::parallel_for splits that single range, so 2,000
// tensors of 1,024 elements cost about what one tensor of 2M elements costs. A thread's range
// may start and end inside tensors; the kernel is called once per (tensor, sub-range).
//
// Note [any layout]
// Elementwise updates don't care about element order, only that the i-th element of every list
// belongs to the same parameter element. When all tensors of a parameter are dense and share the
// param's strides, each is one flat array over its storage. Any other tensor (a transposed,
// sliced or expanded grad, a state tensor with other strides, a non-dense param) is staged in a
// dense temporary with the reference layout and, if the kernel writes it, copied back after the
// kernel. PyTorch 2.13's CPU fused kernels read such tensors as if they were contiguous and get
// them wrong; these cases are in the test matrix.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace fusedopt {

constexpr int kMaxLists = 6;

struct ListSpec {
  at::TensorList tensors;
  const char* name;  // for error messages: "grads", "exp_avgs", ...
  bool written;      // the kernel writes this list (staged copies are copied back)
  // The dtype every tensor of the list must have; unset: its param's (Note [mixed precision]
  // in fusedopt/math.h: states and fp32 master copies may differ from the params).
  std::optional<at::ScalarType> dtype = std::nullopt;
};

// One parameter's tensors, flat: element j of ptr[k] belongs to element j of ptr[0].
struct FlatTuple {
  std::array<void*, kMaxLists> ptr{};
  int64_t numel = 0;
  int64_t index = 0;  // position in the original lists
};

class MultiTensor {
 public:
  // lists[0] is the param list. Checks (all before anything is written): equal lengths, equal
  // shapes, the list's dtype (default: the param's), on `device`, strided, not
  // sparse. Throws c10::Error naming the op, the list and the index.
  // The validation and staging are device-independent: the CUDA backend passes its device,
  // plans its launches over tuples() and calls copy_back() after them (csrc/cuda/glue.h).
  MultiTensor(const char* op, std::vector<ListSpec> lists, c10::Device device = c10::kCPU);

  // Non-empty parameters, in list order.
  const std::vector<FlatTuple>& tuples() const { return tuples_; }
  int64_t total_numel() const { return offsets_.empty() ? 0 : offsets_.back(); }

  // Joins each run of tuples that lie end to end in every list into its first tuple (Note
  // [adjacent tensors]) where joinable(a, b) says params a and b (indices into the lists) may
  // share one range, their kernel arguments being the same. Call before run(), not with reduce().
  void join_adjacent(const std::function<bool(int64_t, int64_t)>& joinable);

  // Runs fn(tuple, begin, end) over every element range [begin, end) of every tuple, in
  // parallel over the whole group, then copies staged tensors back.
  void run(const std::function<void(const FlatTuple&, int64_t, int64_t)>& fn);

  // Like run(), for kernels that also reduce: fn(tuple, begin, end, acc) adds its partial sums
  // for the range to acc[0, width) (zeroed before the call). Returns the per-tuple totals,
  // width values per entry of tuples(), combined in a fixed order (Note [fixed-order reductions]).
  std::vector<double> reduce(
      int width, const std::function<void(const FlatTuple&, int64_t, int64_t, double*)>& fn);

  // Copies staged tensors back to the tensors they stand for (run() and reduce() do it).
  void copy_back();

 private:
  void stage();

  // A piece of the flat range: one tuple's [lo, hi), inside one block of kGrainSize elements.
  struct Piece {
    size_t tuple;
    int64_t lo, hi;
  };
  void split_into_pieces();

  const char* op_;
  c10::Device device_;
  std::vector<ListSpec> lists_;
  std::vector<FlatTuple> tuples_;
  std::vector<int64_t> offsets_;  // offsets_[i] = elements before tuples_[i+1]; inclusive sum
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback_;  // (destination, staged)
  std::vector<at::Tensor> keep_alive_;                        // staged read-only copies
  std::vector<Piece> pieces_;                                 // built by the first reduce()
  std::vector<size_t> block_pieces_;  // block b's pieces: [block_pieces_[b], block_pieces_[b+1])
};

// Note [adjacent tensors]
// Params that are views of one flat buffer (as a model flattened by Megatron- or DeepSpeed-style
// code has them), with grads and states that are views of flat buffers too, lie end to end in
// every list. An elementwise update over two such params is the same as over one param of both
// ranges, so run_update joins them: the kernel then streams one long range with its prefetches
// (Note [prefetch ahead] in cpu/isa.h) instead of thousands of short ones, each starting cold.
// Only params whose kernel arguments are equal are joined (the same scalars; never under
// stochastic rounding, whose noise depends on the param and the element's index in it), and
// only when every list is adjacent, so the result is bitwise the one of the per-param ranges.
// The planner allocates the states of adjacent params flat (fusedopt/optim/_plan.py), so that
// adjacency in the params and grads is enough.

// Note [fixed-order reductions]
// reduce() cuts the flat range at fixed points: tuple boundaries and multiples of kGrainSize.
// Each piece gets its own partial sums, and the partials of a tuple are added up in piece order
// after the parallel region. The pieces depend only on the tensor sizes, not on the number of
// threads or how at::parallel_for splits the blocks among them, so a reduction (LAMB's norms)
// gives the same bits on every run and any thread count. There are at most
// (number of tuples + number of blocks) pieces, so the partials cost next to nothing.

// Elements per parallel task. Large enough that per-task overhead is noise, small enough that
// both threads get work on a 2M-element group.
constexpr int64_t kGrainSize = 32768;

}  // namespace fusedopt
