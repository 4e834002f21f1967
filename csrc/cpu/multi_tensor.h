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
#include <string>
#include <vector>

namespace fusedopt::cpu {

constexpr int kMaxLists = 6;

struct ListSpec {
  at::TensorList tensors;
  const char* name;   // for error messages: "grads", "exp_avgs", ...
  bool written;       // the kernel writes this list (staged copies are copied back)
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
  // shapes, same dtype as the param, CPU, strided, not
  // sparse. Throws c10::Error naming the op, the list and the index.
  MultiTensor(const char* op, std::vector<ListSpec> lists);

  // Non-empty parameters, in list order.
  const std::vector<FlatTuple>& tuples() const { return tuples_; }
  int64_t total_numel() const { return offsets_.empty() ? 0 : offsets_.back(); }

  // Runs fn(tuple, begin, end) over every element range [begin, end) of every tuple, in
  // parallel over the whole group, then copies staged tensors back.
  void run(const std::function<void(const FlatTuple&, int64_t, int64_t)>& fn);

 private:
  void stage();

  const char* op_;
  std::vector<ListSpec> lists_;
  std::vector<FlatTuple> tuples_;
  std::vector<int64_t> offsets_;  // offsets_[i] = elements before tuples_[i+1]; inclusive sum
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback_;  // (destination, staged)
  std::vector<at::Tensor> keep_alive_;                        // staged read-only copies
};

// Elements per parallel task. Large enough that per-task overhead is noise, small enough that
// both threads get work on a 2M-element group.
constexpr int64_t kGrainSize = 32768;

}  // namespace fusedopt::cpu
