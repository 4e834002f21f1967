// The kernels of every op (OpKernels<Op>, jobs.h): thin per-optimizer functors for the
// multi-tensor block body (block.h) saying which arrays to load and store, the per-block
// constants and one call into the shared math (fusedopt/math.h) per element; the op's Params
// (its arguments besides the launch table: hyperparameters as the op received them, the scalars
// read on the device, Note [scalars on the device]); and run(), which turns the op's flags and
// dtypes into template parameters once per call, for whichever runner (GPU or host simulation)
// instantiates it. An elementwise update op also says which state lists it has and how its
// Params come from its arguments; the host glue (glue.h) does the rest.
//
// The per-block constants mirror the CPU kernels' per-call ones, computed the same way in
// double (csrc/cpu/<op>.cpp); tests/test_cuda_planner.py compares the two backends.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <functional>
#include <type_traits>
#include <vector>

#include "../common/multi_tensor.h"
#include "block.h"
#include "fusedopt/math.h"
#include "fusedopt/ops_generated.h"
#include "jobs.h"

namespace fusedopt::cuda {

// Note [mixed precision on the GPU]
// The semantics are Note [mixed precision] in fusedopt/math.h. An update functor is
// instantiated for a Storage<param_t, state_t, MODE>; its arrays are the param and the grad
// (param_t), the states (state_t) and, with kMaster, the fp32 master last. With kStochastic the
// slot carries one more pointer, the param's int64 seed: the prologue turns it into this step's
// noise key, sr_key(seed + 1), and the launch that stores the step increments advances it
// afterwards, unless found_inf is set (Note [step counters on the device] in block.h): no host
// sync, and a CUDA graph replays it. The block body loads each array in its own type into
// opmath_t (the params') and rounds each to nearest on store, except the param of kStochastic:
// sr_bf16_bits with the element's index in its tensor as the noise counter (in the staged
// contiguous copy of a non-dense param: row-major), the bits fusedopt.reference computes.
//
// Instantiations. The four plain combinations (params and states in one dtype, no master, no
// seed: Storage::kFull) keep every mode flag a template parameter, so their kernels are what they
// were before mixed precision. The ten others keep as template parameters only the flags that
// change which arrays are read or written (Adam's amsgrad, SGD's momentum and first step, LAMB's
// passes); the others (maximize, decoupled decay, nesterov) are kDyn: read from Params, a branch
// that is uniform across the launch, free in a memory-bound kernel. That makes 202 kernels over
// all ops (108 without mixed precision), where templating every flag of every combination would
// make about 365.

template <typename P, typename S, int MODE>
struct Storage {
  using param_t = P;
  using state_t = S;
  using opmath_t = at::opmath_type<P>;
  static constexpr int kMode = MODE;
  static constexpr bool kFull = std::is_same_v<P, S> && MODE == kPlain;
};

// A mode flag left to run time: with_flag<kDyn> branches on the value from Params, with_flag<0>
// and with_flag<1> are the template's.
constexpr int kDyn = 2;

template <int FLAG, class Fn>
C10_HOST_DEVICE FUSEDOPT_INLINE void with_flag(int32_t value, Fn&& fn) {
  if constexpr (FLAG == kDyn) {
    if (value) {
      fn(std::true_type{});
    } else {
      fn(std::false_type{});
    }
  } else {
    fn(std::bool_constant<FLAG != 0>{});
  }
}

// The arrays of an update: param, grad (param_t), NSTATES states (state_t), then the master.
template <class M, int NSTATES, class... States>
struct UpdateArrays : UpdateArrays<M, NSTATES - 1, States..., typename M::state_t> {};

template <class M, class... States>
struct UpdateArrays<M, 0, States...> {
  using P = typename M::param_t;
  using type = std::conditional_t<M::kMode == kMaster, ArrayTypes<P, P, States..., float>,
                                  ArrayTypes<P, P, States...>>;
};

// Which arrays of an update are loaded and stored: theta from the param or the master, the grad
// if READ_GRAD, the states of the bit masks STATE_READ and STATE_WRITE (bit k: state k), and the
// param (with its master, or stochastically rounded) if WRITE_PARAM.
template <class M, int NSTATES, unsigned STATE_READ, unsigned STATE_WRITE, bool READ_GRAD,
          bool WRITE_PARAM>
struct UpdateLayout {
  using opmath_t = typename M::opmath_t;
  using Arrays = typename UpdateArrays<M, NSTATES>::type;
  static constexpr bool kHasMaster = M::kMode == kMaster;
  static constexpr int kArrays = Arrays::size;
  static constexpr int kTheta = kHasMaster ? kArrays - 1 : 0;  // where theta is loaded from
  static constexpr bool kSeeded = M::kMode == kStochastic && WRITE_PARAM;
  static constexpr int kSrArray = kSeeded ? 0 : -1;
  static constexpr int kDepth = kArrays + (kSeeded ? 1 : 0);
  static constexpr unsigned kThetaBit = 1u << kTheta;
  static constexpr unsigned kRead = kThetaBit | (READ_GRAD ? 2u : 0u) | (STATE_READ << 2);
  static constexpr unsigned kWrite = (WRITE_PARAM ? 1u | kThetaBit : 0u) | (STATE_WRITE << 2);

  // After the math updated theta in x[kTheta]: the param is stored from it too.
  C10_HOST_DEVICE FUSEDOPT_INLINE static void publish_theta(opmath_t* x) {
    if constexpr (kHasMaster) x[0] = x[kTheta];
  }
};

// The functor interface's layout members (block.h), from a layout.
#define FUSEDOPT_LAYOUT(...)                        \
  using Layout = __VA_ARGS__;                       \
  using opmath_t = typename Layout::opmath_t;       \
  using Arrays = typename Layout::Arrays;           \
  static constexpr int kArrays = Layout::kArrays;   \
  static constexpr int kDepth = Layout::kDepth;     \
  static constexpr bool kSeeded = Layout::kSeeded;  \
  static constexpr int kSrArray = Layout::kSrArray; \
  static constexpr unsigned kRead = Layout::kRead;  \
  static constexpr unsigned kWrite = Layout::kWrite;

// ... and the other members of an update functor without a reduction: its Params p, and skip()
// when found_inf is set.
#define FUSEDOPT_UPDATE(PARAMS, ...)     \
  FUSEDOPT_LAYOUT(__VA_ARGS__)           \
  using Params = PARAMS;                 \
  static constexpr int kReduce = 0;      \
  static constexpr bool kFinish = false; \
  Params p;                              \
  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

// A block's constants and its stochastic-rounding key (kSeeded functors; 0 otherwise).
template <class Scalars>
struct Keyed {
  Scalars sc;
  uint32_t key;
};

template <class Layout, class Scalars>
C10_HOST_DEVICE inline Keyed<Scalars> keyed(const Scalars& sc, const SlotInfo& slot) {
  Keyed<Scalars> st;
  st.sc = sc;
  st.key = 0;
  if constexpr (Layout::kSeeded) st.key = next_sr_key(slot.seed);
  return st;
}

struct NoState {
  int unused;
};

// ---- dispatch: run-time flags and dtypes to template parameters, once per call ----------------
// Runner::run<F>(job, params) launches (or simulates) F over every launch of job.plan.

// Calls fn(Storage<param_t, state_t, MODE>{}) for the job's combination: one of
// FUSEDOPT_FOR_EACH_MIXED (fusedopt/math.h), the list fusedopt::check_mixed admits.
template <class Fn>
void dispatch_storage(const Job& job, const char* name, Fn&& fn) {
#define FUSEDOPT_STORAGE_CASE(P, PT, S, ST, MODE)                           \
  if (job.dtype == at::P && job.state_dtype == at::S && job.mode == MODE) { \
    return fn(Storage<PT, ST, MODE>{});                                     \
  }
  FUSEDOPT_FOR_EACH_MIXED(FUSEDOPT_STORAGE_CASE)
#undef FUSEDOPT_STORAGE_CASE
  TORCH_CHECK(false, name, ": unsupported dtype combination (params ", job.dtype, ", states ",
              job.state_dtype, ", param mode ", job.mode, ")");
}

// fn(std::bool_constant<value>{}): a flag that changes which arrays are read or written, a
// template parameter of every instantiation.
template <class Fn>
void with_bool(bool value, Fn&& fn) {
  if (value) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// fn(std::integral_constant<int, FLAG>{}) for a mode flag of storage M: FLAG is the value (0 or
// 1) for the plain combinations (M::kFull), kDyn for the others (Note [mixed precision on the
// GPU]).
template <class M, class Fn>
void with_mode_flag(bool value, Fn&& fn) {
  if constexpr (M::kFull) {
    with_bool(value, [&](auto v) { fn(std::integral_constant<int, decltype(v)::value>{}); });
  } else {
    fn(std::integral_constant<int, kDyn>{});
  }
}

// The value of a compile-time flag handed to a dispatch lambda.
#define FUSEDOPT_V(flag) std::decay_t<decltype(flag)>::value

// run() of an op whose functors F<M, MAXIMIZE> have no other flag.
template <template <class, int> class F, class Runner, class Params>
void run_maximize(Runner& r, const Job& job, const Params& p, const char* name) {
  dispatch_storage(job, name, [&](auto storage) {
    using M = std::decay_t<decltype(storage)>;
    with_mode_flag<M>(p.maximize, [&](auto max) { r.template run<F<M, FUSEDOPT_V(max)>>(job, p); });
  });
}

// The scalars of every update op (Note [scalars on the device]), the first fields of its Params.
struct UpdateScalars {
  ScalarArg lr, grad_scale, found_inf;
};

// Reads a one-element Tensor argument as the lr is read (glue.h's scalar_arg), for an op whose
// OpKernels has `tensor_scalars(params, args, read)`: its Params' other Tensor scalars.
using ScalarReader = std::function<ScalarArg(const at::Tensor&, const char*)>;

// An elementwise update op's OpKernels also has (glue.h runs them, Note [mixed precision on the
// GPU] for the arrays):
//   states(args, op)       its state lists, in the functors' array order after param and grad
//                          (dtype left unset: the call's state dtype); may reject the arguments
//   params(args, scalars)  its Params, the int32_t mode flags set from the arguments
// The mode flags are read by the functors whose template leaves them to run time (the
// mixed-precision combinations) and by run().

// ---- Adam / AdamW -----------------------------------------------------------------------------
struct AdamParams : UpdateScalars {
  double beta1, beta2, weight_decay, eps;
  int32_t decoupled, amsgrad, maximize;
};

template <class M, int DECOUPLED, bool AMSGRAD, int MAXIMIZE>
struct AdamFunctor {
  // p, g, exp_avg, exp_avg_sq[, max_exp_avg_sq][, master]
  FUSEDOPT_UPDATE(
      AdamParams,
      UpdateLayout<M, AMSGRAD ? 3 : 2, AMSGRAD ? 0x7u : 0x3u, AMSGRAD ? 0x7u : 0x3u, true, true>)
  using State = Keyed<AdamScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(make_adam_scalars<opmath_t>(
                             p.lr.get(), p.lr.lr_dtype(), p.beta1, p.beta2, p.eps, p.weight_decay,
                             next_step(slot.step, slot.flags), 1.0 / p.grad_scale.get()),
                         slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    opmath_t& theta = x[Layout::kTheta];
    with_flag<DECOUPLED>(p.decoupled, [&](auto dec) {
      with_flag<MAXIMIZE>(p.maximize, [&](auto max) {
        constexpr bool D = decltype(dec)::value;
        constexpr bool X = decltype(max)::value;
        if constexpr (AMSGRAD) {
          adam_element<D, true, X>(theta, x[1], x[2], x[3], x[4], s.sc);
        } else {
          opmath_t unused = opmath_t(0);
          adam_element<D, false, X>(theta, x[1], x[2], x[3], unused, s.sc);
        }
      });
    });
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::adam_> {
  using Args = ops::adam_::Args;
  using Params = AdamParams;
  static std::vector<ListSpec> states(const Args& a, const char*) {
    std::vector<ListSpec> s = {{a.exp_avgs, "exp_avgs", true},
                               {a.exp_avg_sqs, "exp_avg_sqs", true}};
    if (a.amsgrad) s.push_back({a.max_exp_avg_sqs, "max_exp_avg_sqs", true});
    return s;
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    const bool decoupled = a.decoupled_weight_decay;
    return {s, a.beta1, a.beta2, a.weight_decay, a.eps, decoupled, a.amsgrad, a.maximize};
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_adam_cuda", [&](auto storage) {
      using M = std::decay_t<decltype(storage)>;
      with_bool(p.amsgrad, [&](auto ams) {
        with_mode_flag<M>(p.decoupled, [&](auto dec) {
          with_mode_flag<M>(p.maximize, [&](auto max) {
            using F = AdamFunctor<M, FUSEDOPT_V(dec), FUSEDOPT_V(ams), FUSEDOPT_V(max)>;
            r.template run<F>(job, p);
          });
        });
      });
    });
  }
};

// ---- SGD --------------------------------------------------------------------------------------
struct SgdParams : UpdateScalars {
  double momentum, dampening, weight_decay;
  int32_t nesterov, maximize, first;
};

template <class M, bool MOMENTUM, bool FIRST, int NESTEROV, int MAXIMIZE>
struct SgdFunctor {
  // p, g[, momentum_buffer][, master]. A buffer created this step is written, never read (it
  // may be uninitialised memory).
  FUSEDOPT_UPDATE(SgdParams, UpdateLayout<M, MOMENTUM ? 1 : 0, (MOMENTUM && !FIRST) ? 0x1u : 0x0u,
                                          MOMENTUM ? 0x1u : 0x0u, true, true>)
  using State = Keyed<SgdScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(make_sgd_scalars<opmath_t>(p.lr.get(), p.momentum, p.dampening,
                                                    p.weight_decay, 1.0 / p.grad_scale.get()),
                         slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    opmath_t& theta = x[Layout::kTheta];
    with_flag<NESTEROV>(p.nesterov, [&](auto nesterov) {
      with_flag<MAXIMIZE>(p.maximize, [&](auto max) {
        constexpr bool X = decltype(max)::value;
        if constexpr (MOMENTUM) {
          sgd_element<true, FIRST, decltype(nesterov)::value, X>(theta, x[1], x[2], s.sc);
        } else {
          opmath_t unused = opmath_t(0);
          sgd_element<false, false, false, X>(theta, x[1], unused, s.sc);
        }
      });
    });
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::sgd_> {
  using Args = ops::sgd_::Args;
  using Params = SgdParams;
  static std::vector<ListSpec> states(const Args& a, const char* op) {
    if (a.momentum != 0.0) return {{a.momentum_buffers, "momentum_buffers", true}};
    TORCH_CHECK(a.momentum_buffers.empty(), op, ": momentum_buffers must be empty when momentum=0");
    return {};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, a.momentum, a.dampening, a.weight_decay, a.nesterov, a.maximize, a.is_first_step};
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_sgd_cuda", [&](auto storage) {
      using M = std::decay_t<decltype(storage)>;
      with_bool(p.momentum != 0.0, [&](auto momentum) {
        with_mode_flag<M>(p.maximize, [&](auto max) {
          if constexpr (!FUSEDOPT_V(momentum)) {
            r.template run<SgdFunctor<M, false, false, 0, FUSEDOPT_V(max)>>(job, p);
          } else {
            with_bool(p.first, [&](auto first) {
              with_mode_flag<M>(p.nesterov, [&](auto nesterov) {
                using F =
                    SgdFunctor<M, true, FUSEDOPT_V(first), FUSEDOPT_V(nesterov), FUSEDOPT_V(max)>;
                r.template run<F>(job, p);
              });
            });
          }
        });
      });
    });
  }
};

// ---- Lion -------------------------------------------------------------------------------------
struct LionParams : UpdateScalars {
  double beta1, beta2, weight_decay;
  int32_t maximize;
};

template <class M, int MAXIMIZE>
struct LionFunctor {
  // p, g, exp_avg[, master]
  FUSEDOPT_UPDATE(LionParams, UpdateLayout<M, 1, 0x1u, 0x1u, true, true>)
  using State = Keyed<LionScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(make_lion_scalars<opmath_t>(p.lr.get(), p.lr.lr_dtype(), p.beta1, p.beta2,
                                                     p.weight_decay, 1.0 / p.grad_scale.get()),
                         slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    with_flag<MAXIMIZE>(p.maximize, [&](auto max) {
      lion_element<decltype(max)::value>(x[Layout::kTheta], x[1], x[2], s.sc);
    });
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::lion_> {
  using Args = ops::lion_::Args;
  using Params = LionParams;
  static std::vector<ListSpec> states(const Args& a, const char*) {
    return {{a.exp_avgs, "exp_avgs", true}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, a.beta1, a.beta2, a.weight_decay, a.maximize};
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    run_maximize<LionFunctor>(r, job, p, "fusedopt_lion_cuda");
  }
};

// ---- Schedule-Free AdamW ----------------------------------------------------------------------
struct ScheduleFreeParams : UpdateScalars {
  double beta1, beta2, eps, weight_decay;
  ScalarArg ckp1, bias_correction2;  // Tensor arguments, read as the lr is
};

template <class M>
struct ScheduleFreeFunctor {
  // y (the param), g, z, exp_avg_sq[, master]
  FUSEDOPT_UPDATE(ScheduleFreeParams, UpdateLayout<M, 2, 0x3u, 0x3u, true, true>)
  using State = Keyed<ScheduleFreeScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(make_schedule_free_scalars<opmath_t>(
                             p.lr.get(), p.beta1, p.beta2, p.eps, p.weight_decay, p.ckp1.get(),
                             p.bias_correction2.get(), 1.0 / p.grad_scale.get()),
                         slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    schedule_free_adamw_element(x[Layout::kTheta], x[1], x[2], x[3], s.sc);
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::schedule_free_adamw_> {
  using Args = ops::schedule_free_adamw_::Args;
  using Params = ScheduleFreeParams;
  static std::vector<ListSpec> states(const Args& a, const char*) {
    return {{a.zs, "zs", true}, {a.exp_avg_sqs, "exp_avg_sqs", true}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, a.beta1, a.beta2, a.eps, a.weight_decay, host_scalar(0.0), host_scalar(0.0)};
  }
  static void tensor_scalars(Params& p, const Args& a, const ScalarReader& read) {
    p.ckp1 = read(a.ckp1, "ckp1");
    p.bias_correction2 = read(a.bias_correction2, "bias_correction2");
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_schedule_free_adamw_cuda", [&](auto storage) {
      r.template run<ScheduleFreeFunctor<std::decay_t<decltype(storage)>>>(job, p);
    });
  }
};

// Schedule-Free's train/eval swap: theta = lerp(theta, z, weight), z in the grad's place (an
// update op without state lists or lr).
struct ScheduleFreeSwapParams : UpdateScalars {
  double weight;
};

template <class M>
struct ScheduleFreeSwapFunctor {
  // theta (the param), z[, master]
  FUSEDOPT_UPDATE(ScheduleFreeSwapParams, UpdateLayout<M, 0, 0x0u, 0x0u, true, true>)
  using State = Keyed<ScheduleFreeSwapScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(ScheduleFreeSwapScalars<opmath_t>{static_cast<opmath_t>(p.weight)}, slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    schedule_free_swap_element(x[Layout::kTheta], x[1], s.sc);
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::schedule_free_swap_> {
  using Args = ops::schedule_free_swap_::Args;
  using Params = ScheduleFreeSwapParams;
  static std::vector<ListSpec> states(const Args&, const char*) { return {}; }
  static Params params(const Args& a, const UpdateScalars& s) { return {s, a.weight}; }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_schedule_free_swap_cuda", [&](auto storage) {
      r.template run<ScheduleFreeSwapFunctor<std::decay_t<decltype(storage)>>>(job, p);
    });
  }
};

// ---- Muon -------------------------------------------------------------------------------------
// Muon's update with the orthogonalized momentum O in the grad's place: an update op without
// state lists.
struct MuonParams : UpdateScalars {
  double weight_decay, lr_ratio;
};

template <class M>
struct MuonFunctor {
  // p, O[, master]
  FUSEDOPT_UPDATE(MuonParams, UpdateLayout<M, 0, 0x0u, 0x0u, true, true>)
  using State = Keyed<MuonScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(make_muon_scalars<opmath_t>(p.lr.get(), p.weight_decay, p.lr_ratio,
                                                     1.0 / p.grad_scale.get()),
                         slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    muon_element(x[Layout::kTheta], x[1], s.sc);
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::muon_> {
  using Args = ops::muon_::Args;
  using Params = MuonParams;
  static std::vector<ListSpec> states(const Args&, const char*) { return {}; }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, a.weight_decay, a.lr_ratio};
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_muon_cuda", [&](auto storage) {
      r.template run<MuonFunctor<std::decay_t<decltype(storage)>>>(job, p);
    });
  }
};

// Muon's momentum: buffers in the state dtype, grads in the params', the updates written in
// bf16 or the grads' dtype (OUT), math in the params' opmath (M::kMode is kPlain). Not an
// update op: its host glue is its own (glue.h).
struct MuonMomentumParams {
  ScalarArg grad_scale, found_inf;
  double momentum;
  int32_t nesterov, out_bf16;
};

template <class M, class OUT, bool NESTEROV>
struct MuonMomentumFunctor {
  using opmath_t = typename M::opmath_t;
  using Arrays = ArrayTypes<typename M::state_t, typename M::param_t, OUT>;  // b, g, update
  static constexpr int kArrays = 3;
  static constexpr int kDepth = 3;
  static constexpr bool kSeeded = false;
  static constexpr int kSrArray = -1;
  static constexpr unsigned kRead = 0x3;
  static constexpr unsigned kWrite = 0x5;
  using Params = MuonMomentumParams;
  using State = MuonMomentumScalars<opmath_t>;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    State s;
    s.momentum = static_cast<opmath_t>(p.momentum);
    s.one_minus_momentum = static_cast<opmath_t>(1.0 - p.momentum);
    s.inv_grad_scale = static_cast<opmath_t>(1.0 / p.grad_scale.get());
    return s;
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    x[2] = muon_momentum_element<NESTEROV, typename M::state_t, typename M::param_t>(x[1], x[0], s);
  }
};

template <>
struct OpKernels<ops::muon_momentum_> {
  using Params = MuonMomentumParams;
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_muon_momentum_cuda", [&](auto storage) {
      using M = std::decay_t<decltype(storage)>;
      if constexpr (M::kMode == kPlain) {
        with_bool(p.nesterov != 0, [&](auto nesterov) {
          if (p.out_bf16) {
            r.template run<MuonMomentumFunctor<M, c10::BFloat16, FUSEDOPT_V(nesterov)>>(job, p);
          } else {
            r.template run<MuonMomentumFunctor<M, typename M::param_t, FUSEDOPT_V(nesterov)>>(job,
                                                                                              p);
          }
        });
      } else {
        TORCH_CHECK(false, "fusedopt.muon_momentum_: no param mode");
      }
    });
  }
};

// ---- SophiaG ----------------------------------------------------------------------------------
struct SophiaParams : UpdateScalars {
  double beta1, rho, bs, weight_decay;
  int32_t maximize;
};

template <class M, int MAXIMIZE>
struct SophiaFunctor {
  // p, g, exp_avg, hessian (read only)[, master]
  FUSEDOPT_UPDATE(SophiaParams, UpdateLayout<M, 2, 0x3u, 0x1u, true, true>)
  using State = Keyed<SophiaScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return keyed<Layout>(
        make_sophia_scalars<opmath_t>(p.lr.get(), p.lr.lr_dtype(), p.beta1, p.rho, p.bs,
                                      p.weight_decay, 1.0 / p.grad_scale.get()),
        slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    with_flag<MAXIMIZE>(p.maximize, [&](auto max) {
      sophia_element<decltype(max)::value>(x[Layout::kTheta], x[1], x[2], x[3], s.sc);
    });
    Layout::publish_theta(x);
  }
};

template <>
struct OpKernels<ops::sophia_> {
  using Args = ops::sophia_::Args;
  using Params = SophiaParams;
  static std::vector<ListSpec> states(const Args& a, const char*) {
    return {{a.exp_avgs, "exp_avgs", true}, {a.hessians, "hessians", false}};
  }
  static Params params(const Args& a, const UpdateScalars& s) {
    return {s, a.beta1, a.rho, a.bs, a.weight_decay, a.maximize};
  }
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    run_maximize<SophiaFunctor>(r, job, p, "fusedopt_sophia_cuda");
  }
};

// Sophia's curvature EMA: hessians in the state dtype, grads in the params', math in the
// params' opmath (M::kMode is kPlain). Not an update op: its host glue is its own (glue.h).
struct SophiaHessianParams {
  ScalarArg grad_scale, found_inf;
  double beta2;
};

template <class M>
struct SophiaHessianFunctor {
  using opmath_t = typename M::opmath_t;
  using Arrays = ArrayTypes<typename M::state_t, typename M::param_t>;  // hessian, g
  static constexpr int kArrays = 2;
  static constexpr int kDepth = 2;
  static constexpr bool kSeeded = false;
  static constexpr int kSrArray = -1;
  static constexpr unsigned kRead = 0x3;
  static constexpr unsigned kWrite = 0x1;
  using Params = SophiaHessianParams;
  using State = SophiaHessianScalars<opmath_t>;
  static constexpr int kReduce = 0;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }

  C10_HOST_DEVICE State prologue(const SlotInfo&) const {
    State s;
    s.beta2 = static_cast<opmath_t>(p.beta2);
    s.one_minus_beta2 = static_cast<opmath_t>(1.0 - p.beta2);
    s.inv_grad_scale = static_cast<opmath_t>(1.0 / p.grad_scale.get());
    return s;
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    sophia_hessian_element(x[0], x[1], s);
  }
};

template <>
struct OpKernels<ops::sophia_update_hessian_> {
  using Params = SophiaHessianParams;
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_sophia_hessian_cuda", [&](auto storage) {
      using M = std::decay_t<decltype(storage)>;
      if constexpr (M::kMode == kPlain) {
        return r.template run<SophiaHessianFunctor<M>>(job, p);
      } else {
        TORCH_CHECK(false, "fusedopt.sophia_update_hessian_: no param mode");
      }
    });
  }
};

// ---- LAMB -------------------------------------------------------------------------------------
// Two passes (Note [LAMB passes] in csrc/cpu/lamb.cpp), both computing u from the moments in
// opmath precision, as fusedopt.reference does:
//   pass 1 (LambNormsFunctor): per tensor, the sums of theta^2 and u^2; the last block of each
//     tensor stores their roots in norms (phase 0), or the sums themselves (phase 1: the caller
//     reduces them across ranks, and phase 2 is handed their roots).
//   pass 2 (LambApplyFunctor): theta = theta - lr * r * u, r from norms (per block, in double).
// Where the states are in opmath_t (fp32 states, fp32/fp64 params) pass 1 stores the moments,
// exactly, and pass 2 reads them back; otherwise storing would round them, so pass 1 only reads
// and pass 2 recomputes the moments from the same old values and stores them. Phase 2 of a
// call whose phase 1 ran (with the same arguments) thus finds the moments as it expects.
// LAMB's host glue is its own (glue.h: phases, norms).

struct LambParams : UpdateScalars {
  double beta1, beta2, weight_decay, eps;
  double trust_clip;
  int32_t bias_correction;
  int32_t has_trust_clip;
  int32_t maximize;
  int32_t steps_done;            // the counters already hold this step (phase 2)
  int32_t finish_sums;           // pass 1 stores the sums of squares, not their roots (phase 1)
  double* partials;              // [global block][2]: sums of p^2 and u^2
  unsigned long long* counters;  // [param]: blocks done (Note [multi-tensor reductions])
  double* norms;                 // [param][2]: ||p||, ||u|| (pass 1 writes, pass 2 reads them)
};

template <typename opmath_t>
C10_HOST_DEVICE inline LambScalars<opmath_t> lamb_scalars(const LambParams& p,
                                                          const SlotInfo& slot) {
  const double step =
      p.steps_done ? stored_step(slot.step, slot.flags) : next_step(slot.step, slot.flags);
  LambScalars<opmath_t> s;
  s.beta1 = static_cast<opmath_t>(p.beta1);
  s.one_minus_beta1 = static_cast<opmath_t>(1.0 - p.beta1);
  s.beta2 = static_cast<opmath_t>(p.beta2);
  s.one_minus_beta2 = static_cast<opmath_t>(1.0 - p.beta2);
  s.bias_correction1 =
      static_cast<opmath_t>(p.bias_correction ? 1.0 - std::pow(p.beta1, step) : 1.0);
  s.bias_correction2 =
      static_cast<opmath_t>(p.bias_correction ? 1.0 - std::pow(p.beta2, step) : 1.0);
  s.eps = static_cast<opmath_t>(p.eps);
  s.weight_decay = static_cast<opmath_t>(p.weight_decay);
  s.inv_grad_scale = static_cast<opmath_t>(1.0 / p.grad_scale.get());
  return s;
}

// -lr * trust ratio of param `index`, in double, as csrc/cpu/lamb.cpp and the reference.
C10_HOST_DEVICE inline double lamb_neg_step(const LambParams& p, int32_t index) {
  const double p_norm = p.norms[2 * index];
  const double u_norm = p.norms[2 * index + 1];
  double r = (p_norm > 0.0 && u_norm > 0.0) ? p_norm / u_norm : 1.0;
  if (p.has_trust_clip) r = p.trust_clip < r ? p.trust_clip : r;  // std::min(r, clip)
  return -(p.lr.get() * r);
}

// Whether pass 1 stores the moments (storing them in opmath_t does not round them).
template <class M>
constexpr bool kLambStoreInPass1 = std::is_same_v<typename M::state_t, typename M::opmath_t>;

// Pass 1 writes no param: a stochastically rounded job runs the plain pass 1.
template <class M>
using LambPass1Storage =
    Storage<typename M::param_t, typename M::state_t, M::kMode == kStochastic ? kPlain : M::kMode>;

template <class M, int MAXIMIZE, bool STORE>
struct LambNormsFunctor {
  // p, g, exp_avg, exp_avg_sq[, master]
  FUSEDOPT_LAYOUT(UpdateLayout<M, 2, 0x3u, STORE ? 0x3u : 0x0u, true, false>)
  using Params = LambParams;
  using State = LambScalars<opmath_t>;
  static constexpr int kReduce = 2;
  static constexpr bool kFinish = true;
  Params p;

  C10_HOST_DEVICE bool skip() const { return p.found_inf.get() != 0.0; }
  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    return lamb_scalars<opmath_t>(p, slot);
  }
  C10_HOST_DEVICE double* partials() const { return p.partials; }
  C10_HOST_DEVICE unsigned long long* counters() const { return p.counters; }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double* acc) const {
    with_flag<MAXIMIZE>(p.maximize,
                        [&](auto max) { lamb_moments<decltype(max)::value>(x[1], x[2], x[3], s); });
    const opmath_t theta = x[Layout::kTheta];
    const opmath_t u = lamb_direction(theta, x[2], x[3], s);
    acc[0] += static_cast<double>(theta) * static_cast<double>(theta);
    acc[1] += static_cast<double>(u) * static_cast<double>(u);
  }

  C10_HOST_DEVICE void finish(int32_t index, const double* sums) const {
    if (p.finish_sums) {
      p.norms[2 * index] = sums[0];
      p.norms[2 * index + 1] = sums[1];
    } else {
      p.norms[2 * index] = std::sqrt(sums[0]);
      p.norms[2 * index + 1] = std::sqrt(sums[1]);
    }
  }
};

template <typename opmath_t>
struct LambApplyScalars {
  LambScalars<opmath_t> s;
  opmath_t neg_step;
};

template <class M, int MAXIMIZE, bool STORED>
struct LambApplyFunctor {
  // p, g (read unless STORED), exp_avg, exp_avg_sq (written unless STORED)[, master]
  FUSEDOPT_UPDATE(LambParams, UpdateLayout<M, 2, 0x3u, STORED ? 0x0u : 0x3u, !STORED, true>)
  using State = Keyed<LambApplyScalars<opmath_t>>;

  C10_HOST_DEVICE State prologue(const SlotInfo& slot) const {
    LambApplyScalars<opmath_t> sc;
    sc.s = lamb_scalars<opmath_t>(p, slot);
    sc.neg_step = static_cast<opmath_t>(lamb_neg_step(p, slot.index));
    return keyed<Layout>(sc, slot);
  }

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State& s, double*) const {
    if constexpr (!STORED) {
      with_flag<MAXIMIZE>(p.maximize, [&](auto max) {
        lamb_moments<decltype(max)::value>(x[1], x[2], x[3], s.sc.s);
      });
    }
    opmath_t& theta = x[Layout::kTheta];
    lamb_apply(theta, lamb_direction(theta, x[2], x[3], s.sc.s), s.sc.neg_step);
    Layout::publish_theta(x);
  }
};

// The passes of the call's phase: 1 (the norms) for phase 1, 2 (the update) for phase 2, both
// for phase 0; the second launch sequence starts after the first has finished (one stream).
template <>
struct OpKernels<ops::lamb_> {
  using Params = LambParams;
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    dispatch_storage(job, "fusedopt_lamb_cuda", [&](auto storage) {
      using M = std::decay_t<decltype(storage)>;
      using M1 = LambPass1Storage<M>;
      constexpr bool kStore = kLambStoreInPass1<M>;
      if (!p.steps_done) {
        with_mode_flag<M1>(p.maximize, [&](auto max) {
          r.template run<LambNormsFunctor<M1, FUSEDOPT_V(max), kStore>>(job, p);
        });
      }
      if (!p.finish_sums) {
        if constexpr (kStore) {
          r.template run<LambApplyFunctor<M, 0, true>>(job, p);  // maximize is in the moments
        } else {
          with_mode_flag<M>(p.maximize, [&](auto max) {
            r.template run<LambApplyFunctor<M, FUSEDOPT_V(max), false>>(job, p);
          });
        }
      }
    });
  }
};

// ---- sum of squares ---------------------------------------------------------------------------
// In fp64, of values widened as the CPU kernel widens them (through float for fp16/bf16,
// csrc/cpu/norm.cpp). Host glue: glue.h.
struct SumSqParams {
  double* partials;  // [global block]
};

template <typename scalar_t>
struct SumSqFunctor {
  using opmath_t = at::opmath_type<scalar_t>;
  using Arrays = ArrayTypes<scalar_t>;
  static constexpr int kArrays = 1;
  static constexpr int kDepth = 1;
  static constexpr bool kSeeded = false;
  static constexpr int kSrArray = -1;
  static constexpr unsigned kRead = 0x1;
  static constexpr unsigned kWrite = 0x0;
  using Params = SumSqParams;
  using State = NoState;
  static constexpr int kReduce = 1;
  static constexpr bool kFinish = false;
  Params p;

  C10_HOST_DEVICE bool skip() const { return false; }
  C10_HOST_DEVICE State prologue(const SlotInfo&) const { return State{0}; }
  C10_HOST_DEVICE double* partials() const { return p.partials; }
  C10_HOST_DEVICE unsigned long long* counters() const { return nullptr; }
  C10_HOST_DEVICE void finish(int32_t, const double*) const {}

  C10_HOST_DEVICE FUSEDOPT_INLINE void apply(opmath_t* x, const State&, double* acc) const {
    const double v = static_cast<double>(x[0]);
    acc[0] += v * v;
  }
};

template <>
struct OpKernels<ops::sum_sq> {
  using Params = SumSqParams;
  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, job.dtype, "fusedopt_sum_sq_cuda",
                                    [&] { return r.template run<SumSqFunctor<scalar_t>>(job, p); });
  }
};

#undef FUSEDOPT_V

}  // namespace fusedopt::cuda

#include "adafactor_kernels.h"  // OpKernels<ops::adafactor_>, with its own launch table
#include "q8_kernels.h"         // the 8-bit ops' OpKernels, with their own block body
