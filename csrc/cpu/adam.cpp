// Adam / AdamW on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "../common/common.h"
#include "../common/mixed.h"
#include "../common/multi_tensor.h"
#include "bf16_simd.h"
#include "fusedopt/math.h"
#include "isa.h"

namespace fusedopt::cpu {
namespace {

// The loop the compiler vectorizes, once per ISA (Note [SIMD by target attribute]). param_t and
// state_t are the storage dtypes; MODE how the param is read and written (common/mixed.h).
// bf16 params take the chunked loop where the CPU has AVX512-BF16 (Note [bf16 chunks]).
template <typename param_t, typename state_t, typename opmath_t, int MODE, bool DECOUPLED,
          bool AMSGRAD, bool MAXIMIZE>
struct AdamBody {
  FUSEDOPT_INLINE static void run(param_t* __restrict p, const param_t* __restrict g,
                                  state_t* __restrict m, state_t* __restrict v,
                                  state_t* __restrict vmax, float* __restrict master, int64_t n,
                                  const AdamScalars<opmath_t>* scalars, uint32_t key, int64_t j0) {
#if FUSEDOPT_X86
    if constexpr (kChunked) {
      if (avx512_bf16_in_use()) return chunks(p, g, m, v, vmax, n, scalars);
    }
#endif
    loop(p, g, m, v, vmax, master, n, scalars, key, j0);
  }

  FUSEDOPT_INLINE static void loop(param_t* __restrict p, const param_t* __restrict g,
                                   state_t* __restrict m, state_t* __restrict v,
                                   state_t* __restrict vmax, float* __restrict master, int64_t n,
                                   const AdamScalars<opmath_t>* scalars, uint32_t key, int64_t j0) {
    const AdamScalars<opmath_t> s = *scalars;
    for (int64_t i = 0; i < n; ++i) {
      opmath_t pi = load_param<MODE, opmath_t>(p, master, i);
      opmath_t mi = static_cast<opmath_t>(m[i]);
      opmath_t vi = static_cast<opmath_t>(v[i]);
      opmath_t vmi = AMSGRAD ? static_cast<opmath_t>(vmax[i]) : opmath_t(0);
      adam_element<DECOUPLED, AMSGRAD, MAXIMIZE>(pi, static_cast<opmath_t>(g[i]), mi, vi, vmi, s);
      store_param<MODE, opmath_t>(p, master, i, pi, key, j0);
      m[i] = static_cast<state_t>(mi);
      v[i] = static_cast<state_t>(vi);
      if (AMSGRAD) vmax[i] = static_cast<state_t>(vmi);
    }
  }

#if FUSEDOPT_X86
  static constexpr bool kChunked =
      MODE == kPlain && std::is_same_v<param_t, c10::BFloat16> && std::is_same_v<opmath_t, float>;

  // Not inlined: compiled for AVX512-BF16, called from every level's copy of run().
  __attribute__((noinline)) FUSEDOPT_TARGET_AVX512BF16 static void chunks(
      param_t* __restrict p, const param_t* __restrict g, state_t* __restrict m,
      state_t* __restrict v, state_t* __restrict vmax, int64_t n,
      const AdamScalars<opmath_t>* scalars) {
    using namespace bf16x32;
    const AdamScalars<opmath_t> s = *scalars;
    int64_t i = 0;
    for (; i + kChunk <= n; i += kChunk) {
      alignas(64) float pc[kChunk], gc[kChunk], mc[kChunk], vc[kChunk], xc[kChunk];
      load(p + i, pc);
      load(g + i, gc);
      load(m + i, mc);
      load(v + i, vc);
      if (AMSGRAD) load(vmax + i, xc);
      for (int j = 0; j < kChunk; ++j) {
        adam_element<DECOUPLED, AMSGRAD, MAXIMIZE>(pc[j], gc[j], mc[j], vc[j], xc[j], s);
      }
      store(pc, p + i);
      store(mc, m + i);
      store(vc, v + i);
      if (AMSGRAD) store(xc, vmax + i);
    }
    loop(p + i, g + i, m + i, v + i, AMSGRAD ? vmax + i : vmax, nullptr, n - i, scalars, 0, 0);
  }
#endif
};

template <typename param_t, typename state_t, int MODE, bool DECOUPLED, bool AMSGRAD, bool MAXIMIZE>
void adam_group(MultiTensor& mt, const std::vector<AdamScalars<at::opmath_type<param_t>>>& sc,
                const std::vector<uint32_t>& keys, int master_list) {
  using opmath_t = at::opmath_type<param_t>;
  using Body = AdamBody<param_t, state_t, opmath_t, MODE, DECOUPLED, AMSGRAD, MAXIMIZE>;
  const Isa isa = current_isa();
  mt.run([&](const FlatTuple& t, int64_t lo, int64_t hi) {
    auto st = [&](int k) { return static_cast<state_t*>(t.ptr[k]) + lo; };
    param_t* p = static_cast<param_t*>(t.ptr[0]) + lo;
    const param_t* g = static_cast<const param_t*>(t.ptr[1]) + lo;
    float* master = MODE == kMaster ? static_cast<float*>(t.ptr[master_list]) + lo : nullptr;
    const uint32_t key = MODE == kStochastic ? keys[t.index] : 0u;
    run_isa<Body>(isa, p, g, st(2), st(3), AMSGRAD ? st(4) : static_cast<state_t*>(nullptr), master,
                  hi - lo, &sc[t.index], key, lo);
  });
}

// Turns run-time flags into template parameters, once per call (not per element).
template <typename param_t, typename state_t, int MODE>
void adam_dispatch(MultiTensor& mt, const std::vector<AdamScalars<at::opmath_type<param_t>>>& sc,
                   const std::vector<uint32_t>& keys, int master_list, bool decoupled, bool amsgrad,
                   bool maximize) {
  const int mode = (decoupled ? 4 : 0) | (amsgrad ? 2 : 0) | (maximize ? 1 : 0);
  auto go = [&]<bool D, bool A, bool M>() {
    adam_group<param_t, state_t, MODE, D, A, M>(mt, sc, keys, master_list);
  };
  switch (mode) {
    case 0: return go.template operator()<false, false, false>();
    case 1: return go.template operator()<false, false, true>();
    case 2: return go.template operator()<false, true, false>();
    case 3: return go.template operator()<false, true, true>();
    case 4: return go.template operator()<true, false, false>();
    case 5: return go.template operator()<true, false, true>();
    case 6: return go.template operator()<true, true, false>();
    default: return go.template operator()<true, true, true>();
  }
}

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
              at::TensorList state_steps, const at::Tensor& lr, double beta1, double beta2,
              double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf,
              const std::optional<at::TensorList>& master_params,
              const std::optional<at::TensorList>& sr_seeds) {
  constexpr const char* op = "fusedopt.adam_";
  std::vector<at::TensorList> states = {exp_avgs, exp_avg_sqs};
  if (amsgrad) states.push_back(max_exp_avg_sqs);
  const Mixed mx = check_mixed(op, params, states, master_params, sr_seeds);
  std::vector<ListSpec> lists = {{params, "params", true},
                                 {grads, "grads", false},
                                 {exp_avgs, "exp_avgs", true, mx.state},
                                 {exp_avg_sqs, "exp_avg_sqs", true, mx.state}};
  if (amsgrad) lists.push_back({max_exp_avg_sqs, "max_exp_avg_sqs", true, mx.state});
  const int master_list = static_cast<int>(lists.size());
  if (mx.mode == kMaster) lists.push_back({*master_params, "master_params", true, at::kFloat});
  check_steps(op, state_steps, params.size());
  const double lr_v = scalar_value(lr, "lr");
  const int32_t lr_dt = lr_dtype(lr);
  const double inv_scale = inv_grad_scale(grad_scale);
  // Everything is validated (and staged) before the first write.
  MultiTensor mt(op, std::move(lists));
  if (skip_for_found_inf(found_inf)) return;
  const std::vector<double> steps = increment_steps(state_steps);
  const std::vector<uint32_t> keys =
      mx.mode == kStochastic ? advance_sr_seeds(*sr_seeds) : std::vector<uint32_t>();
  if (params.empty()) return;

  dispatch_mixed(mx, [&]<typename param_t, typename state_t, int MODE>() {
    using opmath_t = at::opmath_type<param_t>;
    std::vector<AdamScalars<opmath_t>> sc(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      sc[i] = make_adam_scalars<opmath_t>(lr_v, lr_dt, beta1, beta2, eps, weight_decay, steps[i],
                                          inv_scale);
    }
    adam_dispatch<param_t, state_t, MODE>(mt, sc, keys, master_list, decoupled, amsgrad, maximize);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { m.impl("adam_", &adam_cpu); }

}  // namespace fusedopt::cpu
