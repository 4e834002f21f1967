// Mixed precision on the CPU (Note [mixed precision] in fusedopt/math.h): the checks of the
// master_params / sr_seeds / state-dtype arguments, the dispatch over the supported
// (param dtype, state dtype, param mode) combinations, and the param load/store of each mode.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "fusedopt/math.h"

namespace fusedopt {

// ParamMode (kPlain, kMaster, kStochastic) is fusedopt/math.h's, shared with the CUDA backend.

struct Mixed {
  at::ScalarType param = at::kFloat;
  at::ScalarType state = at::kFloat;  // the state lists' dtype (the param's when there are none)
  int mode = kPlain;
};

// Validates the mixed-precision arguments, before anything is written: every state tensor of
// `states` has the dtype of the first one and that dtype goes with the params'; master_params
// (float16/bfloat16 params only) and sr_seeds (bfloat16 params only; one-element int64 tensors
// on `device`) have one entry per param and are not both given. The master tensors themselves
// are checked (float32, shape, device) by MultiTensor through their ListSpec.
Mixed check_mixed(const char* op, at::TensorList params, const std::vector<at::TensorList>& states,
                  const std::optional<at::TensorList>& master_params,
                  const std::optional<at::TensorList>& sr_seeds, c10::Device device = c10::kCPU);

inline bool given(const std::optional<at::TensorList>& l) { return l.has_value() && !l->empty(); }

// Advances every seed by one (CPU tensors) and returns the noise key of each param.
std::vector<uint32_t> advance_sr_seeds(at::TensorList sr_seeds);

// Calls f.template operator()<param_t, state_t, MODE>() for the combination in `mx`; every
// combination check_mixed accepts is here (check_mixed makes sure, before any write).
template <class F>
void dispatch_mixed(const Mixed& mx, F&& f) {
#define FUSEDOPT_MIXED_CASE(P, PT, S, ST, M)                    \
  if (mx.param == at::P && mx.state == at::S && mx.mode == M) { \
    f.template operator()<PT, ST, M>();                         \
    return;                                                     \
  }
  FUSEDOPT_FOR_EACH_MIXED(FUSEDOPT_MIXED_CASE)
#undef FUSEDOPT_MIXED_CASE
  TORCH_CHECK(false, "fusedopt: unsupported dtype combination (params ", mx.param, ", states ",
              mx.state, ", mode ", mx.mode, ")");
}

// theta of element i, in opmath_t (also the CUDA 8-bit kernels' load and store).
template <int MODE, typename opmath_t, typename param_t>
C10_HOST_DEVICE FUSEDOPT_INLINE opmath_t load_param(const param_t* __restrict p,
                                                    const float* __restrict master, int64_t i) {
  if constexpr (MODE == kMaster) {
    return static_cast<opmath_t>(master[i]);
  } else {
    return static_cast<opmath_t>(p[i]);
  }
}

// Stores the new theta of element i; `j0` is the tensor index of element 0 of this range.
template <int MODE, typename opmath_t, typename param_t>
C10_HOST_DEVICE FUSEDOPT_INLINE void store_param(param_t* __restrict p, float* __restrict master,
                                                 int64_t i, opmath_t x, uint32_t key, int64_t j0) {
  if constexpr (MODE == kMaster) {
    master[i] = static_cast<float>(x);
    p[i] = static_cast<param_t>(x);
  } else if constexpr (MODE == kStochastic) {
    const uint32_t noise = sr_noise(key, static_cast<uint64_t>(j0 + i));
    p[i] = c10::BFloat16(sr_bf16_bits(static_cast<float>(x), noise), c10::BFloat16::from_bits());
  } else {
    p[i] = static_cast<param_t>(x);
  }
}

}  // namespace fusedopt
