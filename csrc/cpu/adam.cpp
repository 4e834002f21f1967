// Adam / AdamW on the CPU: one parallel region per (dtype) group, math from fusedopt/math.h.
#include <ATen/OpMathType.h>

#include <cmath>
#include <type_traits>

#include "bf16_simd.h"
#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

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
    // Blocks of kBlock elements, each requesting the lines kPrefetchAhead elements after it
    // (Note [prefetch ahead] in isa.h); the compiler vectorizes the block's loop.
    constexpr int64_t kBlock = 32;
    int64_t i0 = 0;
    for (; i0 + kBlock <= n; i0 += kBlock) {
      if (n >= kPrefetchMin && i0 + kPrefetchAhead + kBlock <= n) {
        prefetch(p, g, m, v, vmax, master, i0 + kPrefetchAhead);
      }
      for (int64_t i = i0; i < i0 + kBlock; ++i) element(p, g, m, v, vmax, master, i, s, key, j0);
    }
    for (int64_t i = i0; i < n; ++i) element(p, g, m, v, vmax, master, i, s, key, j0);
  }

  FUSEDOPT_INLINE static void element(param_t* __restrict p, const param_t* __restrict g,
                                      state_t* __restrict m, state_t* __restrict v,
                                      state_t* __restrict vmax, float* __restrict master, int64_t i,
                                      const AdamScalars<opmath_t>& s, uint32_t key, int64_t j0) {
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

  // The lines of a 32-element block at element `at` of every array the update reads.
  FUSEDOPT_INLINE static void prefetch(const param_t* p, const param_t* g, const state_t* m,
                                       const state_t* v, const state_t* vmax, const float* master,
                                       int64_t at) {
    prefetch_lines<32>(p, at);  // written in every mode: its line is then owned already
    if (MODE == kMaster) prefetch_lines<32>(master, at);
    prefetch_lines<32>(g, at);
    prefetch_lines<32>(m, at);
    prefetch_lines<32>(v, at);
    if (AMSGRAD) prefetch_lines<32>(vmax, at);
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
      if (n >= kPrefetchMin && i + kPrefetchAhead + kChunk <= n) {
        prefetch(p, g, m, v, vmax, nullptr, i + kPrefetchAhead);
      }
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
  using Body =
      AdamBody<param_t, state_t, at::opmath_type<param_t>, MODE, DECOUPLED, AMSGRAD, MAXIMIZE>;
  run_update<Body, param_t, state_t, MODE, true, true, AMSGRAD>(mt, sc.data(), true, keys,
                                                                master_list);
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

}  // namespace

void adam_(const ops::adam_::Args& a) {
  std::vector<StateList> states = {{a.exp_avgs, "exp_avgs"}, {a.exp_avg_sqs, "exp_avg_sqs"}};
  if (a.amsgrad) states.push_back({a.max_exp_avg_sqs, "max_exp_avg_sqs"});
  Update u(op_label<ops::adam_>(), a, states);
  if (u.skip || a.params.empty()) return;

  dispatch_mixed(u.mx, [&]<typename param_t, typename state_t, int MODE>() {
    const auto sc = adam_scalars<at::opmath_type<param_t>>(u, a);
    adam_dispatch<param_t, state_t, MODE>(*u.mt, sc, u.keys, u.master_list,
                                          a.decoupled_weight_decay, a.amsgrad, a.maximize);
  });
}

}  // namespace fusedopt::cpu
