#include "mixed.h"

#include <vector>

#include "common.h"

namespace fusedopt {

Mixed check_mixed(const char* op, at::TensorList params, const std::vector<at::TensorList>& states,
                  const std::optional<at::TensorList>& master_params,
                  const std::optional<at::TensorList>& sr_seeds, c10::Device device) {
  Mixed mx;
  const size_t n = params.size();
  const bool master = given(master_params);
  const bool sr = given(sr_seeds);
  TORCH_CHECK(!(master && sr), op, ": master_params and sr_seeds are exclusive");
  TORCH_CHECK(!master || master_params->size() == n, op, ": expected master_params to have ", n,
              " tensors (one per param), got ", master_params->size());
  TORCH_CHECK(!sr || sr_seeds->size() == n, op, ": expected sr_seeds to have ", n,
              " tensors (one per param), got ", sr_seeds->size());
  if (n == 0) return mx;
  mx.param = params[0].scalar_type();
  mx.state = mx.param;
  bool first = true;
  for (const at::TensorList& list : states) {
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].defined()) continue;  // MultiTensor names it
      if (first) {
        mx.state = list[i].scalar_type();
        first = false;
      }
    }
  }
  const bool state_ok =
      mx.state == mx.param ||
      (mx.param != at::kDouble && (mx.state == at::kFloat || mx.state == at::kBFloat16));
  TORCH_CHECK(state_ok, op, ": state dtype ", mx.state, " is not supported with param dtype ",
              mx.param, " (supported: the params' dtype, or float32 / bfloat16 for float32, ",
              "float16 and bfloat16 params)");
  if (master) {
    TORCH_CHECK(mx.param == at::kHalf || mx.param == at::kBFloat16, op,
                ": master_params need float16 or bfloat16 params; params[0] is ", mx.param);
    mx.mode = kMaster;
  }
  if (sr) {
    TORCH_CHECK(mx.param == at::kBFloat16, op,
                ": stochastic rounding (sr_seeds) needs bfloat16 params; params[0] is ", mx.param);
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& s = (*sr_seeds)[i];
      TORCH_CHECK(s.defined() && s.numel() == 1 && s.scalar_type() == at::kLong, op, ": sr_seeds[",
                  i, "] must be a one-element int64 tensor");
      TORCH_CHECK(s.device() == device, op, ": sr_seeds[", i, "] is on ", s.device(), ", expected ",
                  device);
    }
    check_unshared(op, "sr_seeds", *sr_seeds, "seed");
    mx.mode = kStochastic;
  }
  // Throws here, before anything is written, if the kernels lack the combination.
  dispatch_mixed(mx, []<typename P, typename S, int M>() {});
  return mx;
}

std::vector<uint32_t> advance_sr_seeds(at::TensorList sr_seeds) {
  std::vector<uint32_t> keys(sr_seeds.size());
  for (size_t i = 0; i < sr_seeds.size(); ++i) {
    int64_t* s = sr_seeds[i].data_ptr<int64_t>();
    *s = static_cast<int64_t>(static_cast<uint64_t>(*s) + 1u);
    keys[i] = sr_key(static_cast<uint64_t>(*s));
  }
  return keys;
}

}  // namespace fusedopt
