// The host side of the 8-bit ops (Note [8-bit states] in fusedopt/reference/quant.py) shared by
// the CPU kernel (cpu/adam8bit.cpp) and the CUDA backend (cuda/glue.h): the checks of the 8-bit
// arguments, made before any other check of the op writes a step counter, and the contiguous
// staging of the params, grads and masters (the blocks follow the row-major order).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace fusedopt {

// Elements per quantization block.
constexpr int64_t kQ8Block = 256;

inline int64_t q8_blocks(int64_t numel) { return (numel + kQ8Block - 1) / kQ8Block; }

// One auxiliary list of an 8-bit op: uint8 codes of the params' shapes, or (`blocks`) fp32
// absmax, one per block.
struct Q8List {
  at::TensorList tensors;
  const char* name;
  bool blocks;
};

// The 8-bit arguments of op `op` on `device`: the maps, the lists, the params' dtypes (an fp32
// opmath) and, with stochastic rounding, their layouts.
inline void check_8bit_args(const char* op, at::TensorList params, const at::Tensor& qmaps,
                            const std::vector<Q8List>& lists, bool stochastic, c10::Device device) {
  TORCH_CHECK(qmaps.scalar_type() == at::kFloat && qmaps.dim() == 2 && qmaps.size(0) == 2 &&
                  qmaps.size(1) == kQ8Block && qmaps.device() == device,
              op, ": qmaps must be a float32 tensor on ", device, " of shape (2, 256), got ",
              qmaps.scalar_type(), " ", qmaps.sizes(), " on ", qmaps.device());
  for (const Q8List& l : lists) {
    TORCH_CHECK(l.tensors.size() == params.size(), op, ": expected ", l.name, " to have ",
                params.size(), " tensors (one per param), got ", l.tensors.size());
    const at::ScalarType dtype = l.blocks ? at::kFloat : at::kByte;
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const at::Tensor& t = l.tensors[i];
      const bool ok_shape = l.blocks ? (t.dim() == 1 && t.size(0) == q8_blocks(params[i].numel()))
                                     : t.sizes().equals(params[i].sizes());
      TORCH_CHECK(t.scalar_type() == dtype && ok_shape && t.is_contiguous() && t.device() == device,
                  op, ": ", l.name, "[", i, "] must be a contiguous ", dtype, " tensor on ", device,
                  " of ", l.blocks ? "one element per block of 256" : "the param's shape", ", got ",
                  t.scalar_type(), " ", t.sizes(), " on ", t.device());
    }
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::ScalarType dt = p.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                ": 8-bit states need float32, bfloat16 or float16 params; params[", i, "] is ", dt);
    // Stochastic rounding's noise follows the param's memory order, the blocks its row-major
    // order: a dense param in another layout would need both at once.
    TORCH_CHECK_NOT_IMPLEMENTED(
        !stochastic || p.is_contiguous() || p.numel() <= 1 || !p.is_non_overlapping_and_dense(), op,
        ": stochastic rounding of a param that is dense but not "
        "contiguous with 8-bit states (params[",
        i, "])");
  }
}

// The contiguous tensor a kernel works on for `t`: t itself, or a copy written back after.
struct Staged {
  at::Tensor work;
  at::Tensor dest;  // defined when `work` is a copy to write back

  Staged() = default;
  Staged(const at::Tensor& t, bool written) {
    if (t.is_contiguous()) {
      work = t;
    } else {
      work = t.contiguous();
      if (written) dest = t;
    }
  }
  void write_back() const {
    if (dest.defined()) dest.copy_(work);
  }
};

}  // namespace fusedopt
