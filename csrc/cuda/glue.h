// The host side of the CUDA ops, one function of the op's argument struct each (HostOp<Op, B>,
// registered through ByArgs (common/op_glue.h) for every op of the registry): validation (shared
// with the CPU kernels: fusedopt::MultiTensor), staging of odd layouts, scalars, planning, then a
// backend runs the job. Written once for two backends B, each with static config(device),
// run<Op>(job, params), sum_partials(...) and increment_steps(...):
//   GpuBackend (register.cpp)  the kernels in this folder, on the params' CUDA device
//   SimBackend (sim.cpp)       the same block bodies run on the host over CPU tensors, for tests
// Semantics are the CPU kernels' (csrc/cpu/*.cpp) and fusedopt.reference's: everything is
// validated before anything is written; found_inf set => nothing changes, step counters and
// seeds included; grads are multiplied by 1/grad_scale; the step counters are incremented and
// the stochastic-rounding seeds advanced by the op, on the device; any layout, through staging;
// mixed precision (Note [mixed precision] in fusedopt/math.h) with fusedopt::check_mixed's checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/adafactor.h"
#include "../common/common.h"
#include "../common/mixed.h"
#include "../common/multi_tensor.h"
#include "../common/op_glue.h"
#include "../common/q8.h"
#include "adafactor.h"
#include "functors.h"
#include "fusedopt/ops_generated.h"
#include "jobs.h"

namespace fusedopt::cuda {

using fusedopt::ListSpec;
using fusedopt::MultiTensor;

// Note [scalars on the device]: a CPU scalar by value, one on the params' device by pointer.
inline ScalarArg scalar_arg(const at::Tensor& t, const char* op, const char* what,
                            c10::Device device, const ExecConfig& cfg) {
  const bool by_value = t.device().is_cpu() && !(cfg.scalars_by_pointer && device.is_cpu());
  TORCH_CHECK(by_value || t.device() == device, op, ": ", what, " is on ", t.device(),
              ", expected cpu or ", device, " (the params' device)");
  // A value read on the host keeps its kind too: the lr's dtype sets the arithmetic of its
  // derived scalars (Note [Tensor lr arithmetic] in math.h).
  ScalarArg a{by_value ? nullptr : t.data_ptr(), by_value ? t.item<double>() : 0.0, kScalarFloat};
  switch (t.scalar_type()) {
    case at::kFloat: a.kind = kScalarFloat; break;
    case at::kDouble: a.kind = kScalarDouble; break;
    case at::kHalf: a.kind = kScalarHalf; break;
    case at::kBFloat16: a.kind = kScalarBFloat16; break;
    case at::kBool:
    case at::kByte: a.kind = kScalarBool; break;
    case at::kInt: a.kind = kScalarInt32; break;
    case at::kLong: a.kind = kScalarInt64; break;
    default:
      TORCH_CHECK(by_value, op, ": ", what, " has unsupported dtype ", t.scalar_type());
      a.kind = kScalarDouble;  // the value, read on the host, is exact as a double
  }
  return a;
}

// The same one-element checks, with the same messages, as the CPU kernels (common/common.h).
inline ScalarArg lr_arg(const at::Tensor& lr, const char* op, c10::Device device,
                        const ExecConfig& cfg) {
  TORCH_CHECK(lr.numel() == 1, "Tensor lr must be 1-element");
  return scalar_arg(lr, op, "lr", device, cfg);
}

// grad_scale and found_inf: an absent one is `absent` (1 and 0), passed by value.
inline ScalarArg amp_arg(const std::optional<at::Tensor>& t, double absent, const char* op,
                         const char* what, c10::Device device, const ExecConfig& cfg) {
  if (!t.has_value() || !t->defined()) return host_scalar(absent);
  TORCH_CHECK(t->numel() == 1, what, " must have one element");
  return scalar_arg(*t, op, what, device, cfg);
}

// found_inf known on the host to be set: the op returns before touching anything.
inline bool skipped_on_host(const ScalarArg& found_inf) {
  return found_inf.ptr == nullptr && found_inf.value != 0.0;
}

// Step counters: one-element float32/float64 tensors on the params' device (torch's fused and
// capturable layout; fusedopt.optim keeps them there: _plan.py _zero_step), one per param.
inline StepList check_steps(const char* op, at::TensorList steps, size_t n, c10::Device device) {
  TORCH_CHECK(steps.size() == n, op, ": expected state_steps to have ", n,
              " tensors (one per param), got ", steps.size());
  StepList out;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.defined() && s.numel() == 1, op, ": state_steps[", i,
                "] must be a one-element tensor");
    TORCH_CHECK(s.device() == device, op, ": state_steps[", i, "] is on ", s.device(),
                ", expected ", device, " (the params' device)");
    TORCH_CHECK(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, op,
                ": state_steps[", i, "] must be float32 or float64, got ", s.scalar_type());
    out.ptrs.push_back(s.data_ptr());
    out.kinds.push_back(s.scalar_type() == at::kDouble ? kCounterDouble : kCounterFloat);
  }
  fusedopt::check_unshared(op, "state_steps", steps, "step counter");
  return out;
}

// The device the op runs on: the params' (the lists are checked against it).
inline c10::Device op_device(at::TensorList params, const at::Tensor& fallback) {
  return params.empty() ? fallback.device() : params[0].device();
}

// An op without an lr (schedule_free_swap_) and without params has no device: the host's, where
// the op returns after its checks.
template <class Args>
c10::Device op_device(const Args& a) {
  if constexpr (has_lr<Args>) {
    return op_device(a.params, a.lr);
  } else {
    return a.params.empty() ? c10::Device(c10::kCPU) : a.params[0].device();
  }
}

// An update op's mixed-precision arguments, checked (fusedopt::check_mixed, before anything is
// written): the state lists' dtype, the master list appended to `lists` (kMaster), the seeds'
// pointers (kStochastic).
struct MixedArgs {
  fusedopt::Mixed mx;
  std::vector<void*> seeds;  // per param: its seed's data, for the slot and the increment
};

inline MixedArgs check_mixed_args(const char* op, at::TensorList params,
                                  const std::vector<at::TensorList>& states,
                                  const std::optional<at::TensorList>& master_params,
                                  const std::optional<at::TensorList>& sr_seeds,
                                  c10::Device device) {
  MixedArgs a;
  a.mx = fusedopt::check_mixed(op, params, states, master_params, sr_seeds, device);
  if (a.mx.mode == kStochastic) {
    for (const at::Tensor& s : *sr_seeds) a.seeds.push_back(s.data_ptr());
  }
  return a;
}

// The fp32 master list, last of the op's lists (kMaster).
inline void add_master_list(std::vector<ListSpec>& lists, const MixedArgs& a,
                            const std::optional<at::TensorList>& master_params) {
  if (a.mx.mode == kMaster) lists.push_back({*master_params, "master_params", true, at::kFloat});
}

// The counters incremented after the update: `steps` (may be null), then the seeds.
inline StepList counters(const StepList* steps, const MixedArgs* a) {
  StepList out;
  if (steps != nullptr) out = *steps;
  if (a != nullptr) {
    for (void* s : a->seeds) {
      out.ptrs.push_back(s);
      out.kinds.push_back(kCounterInt64);
    }
  }
  return out;
}

// The launches of tensors of `numels` elements with `depth` pointers each, in chunks of
// `chunk_size`, within the table's capacity and the configured limits.
inline LaunchPlan plan_job(const std::vector<int64_t>& numels, int depth, int64_t chunk_size,
                           const ExecConfig& cfg, int64_t first_block = 0) {
  Capacity cap = table_capacity(depth, cfg.arg_bytes);
  if (cfg.max_slots > 0) cap.slots = std::min(cap.slots, cfg.max_slots);
  if (cfg.max_blocks > 0) cap.blocks = std::min(cap.blocks, cfg.max_blocks);
  return plan_launches(numels, chunk_size, cap, first_block);
}

// A param's step counter in its slot (steps may be null: an op without).
inline void set_step(TensorRef& r, const StepList* steps, size_t index) {
  if (steps == nullptr) return;
  r.step = steps->ptrs[index];
  if (steps->kinds[index] == kCounterDouble) r.flags |= kStepDouble;
}

// Plans the non-empty params of `mt` (whose `arrays` lists are the kernel's arrays); a seed
// pointer, if any, follows them in each slot.
inline Job make_job(const MultiTensor& mt, int arrays, const StepList* steps,
                    const MixedArgs* mixed, c10::ScalarType dtype, c10::Device device,
                    const ExecConfig& cfg, int64_t first_block = 0) {
  Job job;
  job.dtype = dtype;
  job.state_dtype = dtype;
  if (mixed != nullptr) {
    job.state_dtype = mixed->mx.state;
    job.mode = mixed->mx.mode;
  }
  job.device = device.is_cuda() ? device.index() : -1;
  job.arg_bytes = cfg.arg_bytes;
  const bool seeded = mixed != nullptr && !mixed->seeds.empty();
  const int depth = arrays + (seeded ? 1 : 0);
  TORCH_CHECK(depth <= kMaxDepth, "fusedopt: too many arrays per parameter");
  std::vector<int64_t> numels;
  for (const fusedopt::FlatTuple& t : mt.tuples()) {
    TensorRef r{};
    for (int d = 0; d < arrays; ++d) r.ptr[d] = t.ptr[d];
    if (seeded) r.ptr[arrays] = mixed->seeds[t.index];
    r.numel = t.numel;
    r.index = static_cast<int32_t>(t.index);
    r.flags = vector_aligned(r.ptr, arrays) ? kVectorOk : 0;
    set_step(r, steps, t.index);
    job.tensors.push_back(r);
    numels.push_back(t.numel);
  }
  job.plan = plan_job(numels, depth, cfg.chunk_size, cfg, first_block);
  return job;
}

// The checks of an update op's arguments that come before its own (all before anything is
// written): the mixed-precision arguments and the state lists' dtype, the step counters, the
// scalars; and its lists for MultiTensor (params, grads, the states, the master).
template <class Op, class B>
struct Update {
  const char* op = op_label<Op>();
  c10::Device device;
  MixedArgs mixed;
  std::vector<ListSpec> lists;
  int arrays;
  std::optional<StepList> steps;  // for ops with state_steps
  ExecConfig cfg;
  UpdateScalars scalars;

  Update(const typename Op::Args& a, std::vector<ListSpec> states) : device(op_device(a)) {
    std::vector<at::TensorList> state_lists;
    for (const ListSpec& s : states) state_lists.push_back(s.tensors);
    mixed = check_mixed_args(op, a.params, state_lists, a.master_params, a.sr_seeds, device);
    lists = {{a.params, "params", true}, {a.grads, "grads", false}};
    for (ListSpec& s : states) {
      s.dtype = mixed.mx.state;
      lists.push_back(s);
    }
    add_master_list(lists, mixed, a.master_params);
    arrays = static_cast<int>(lists.size());
    if constexpr (has_state_steps<typename Op::Args>) {
      steps = check_steps(op, a.state_steps, a.params.size(), device);
    }
    cfg = B::config(device);
    ScalarArg lr = host_scalar(0.0);
    if constexpr (has_lr<typename Op::Args>) lr = lr_arg(a.lr, op, device, cfg);
    scalars = {lr, amp_arg(a.grad_scale, 1.0, op, "grad_scale", device, cfg),
               amp_arg(a.found_inf, 0.0, op, "found_inf", device, cfg)};
  }

  const StepList* step_list() const { return steps ? &*steps : nullptr; }

  Job job(const MultiTensor& mt, const typename Op::Args& a) const {
    return make_job(mt, arrays, step_list(), &mixed, a.params[0].scalar_type(), device, cfg);
  }
};

// The host side of op Op on backend B, Op::Args in: an elementwise update op here (its
// OpKernels: functors.h); lamb_, sophia_update_hessian_ and sum_sq below.
template <class K, class = void>
struct HasTensorScalars : std::false_type {};
template <class K>
struct HasTensorScalars<K, std::void_t<decltype(&K::tensor_scalars)>> : std::true_type {};

template <class Op, class B>
struct HostOp {
  static void call(const typename Op::Args& a) {
    using K = OpKernels<Op>;
    Update<Op, B> u(a, K::states(a, op_label<Op>()));
    typename K::Params p = K::params(a, u.scalars);
    if constexpr (HasTensorScalars<K>::value) {
      K::tensor_scalars(p, a, [&](const at::Tensor& t, const char* what) {
        TORCH_CHECK(t.numel() == 1, "Tensor ", what, " must be 1-element");
        return scalar_arg(t, u.op, what, u.device, u.cfg);
      });
    }
    MultiTensor mt(u.op, std::move(u.lists), u.device);
    if (skipped_on_host(p.found_inf) || a.params.empty()) return;
    B::template run<Op>(u.job(mt, a), p);
    B::increment_steps(u.device, u.cfg, counters(u.step_list(), &u.mixed), p.found_inf);
    mt.copy_back();
  }
};

// phase (the lamb_ entry of fusedopt/_opdefs.py): 0 both passes; 1 the norms pass, the step
// increments and the sums of squares into sq_sums; 2 the update pass with the norms
// sqrt(sq_sums), and the seeds.
template <class B>
struct HostOp<ops::lamb_, B> {
  static void call(const ops::lamb_::Args& a) {
    const char* op = op_label<ops::lamb_>();
    const size_t n = a.params.size();
    const int64_t phase = a.phase;
    TORCH_CHECK(phase >= 0 && phase <= 2, op, ": phase must be 0, 1 or 2, got ", phase);
    Update<ops::lamb_, B> u(a,
                            {{a.exp_avgs, "exp_avgs", true}, {a.exp_avg_sqs, "exp_avg_sqs", true}});
    const c10::Device device = u.device;
    LambParams p{u.scalars};
    p.beta1 = a.beta1;
    p.beta2 = a.beta2;
    p.weight_decay = a.weight_decay;
    p.eps = a.eps;
    p.bias_correction = a.bias_correction;
    p.has_trust_clip = a.trust_clip.has_value();
    p.trust_clip = a.trust_clip.value_or(0.0);
    p.maximize = a.maximize;
    p.steps_done = phase == 2;
    p.finish_sums = phase == 1;
    const std::optional<at::Tensor>& tensor_norms = a.tensor_norms;
    const std::optional<at::Tensor>& sq_sums = a.sq_sums;
    const bool want_norms = tensor_norms.has_value() && tensor_norms->defined();
    if (want_norms) {
      const at::Tensor& t = *tensor_norms;
      TORCH_CHECK(t.device() == device && at::isFloatingType(t.scalar_type()) && t.dim() == 2 &&
                      t.size(0) == static_cast<int64_t>(n) && t.size(1) == 2,
                  op, ": tensor_norms must be a floating-point tensor on ", device, " of shape (",
                  n, ", 2), got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
    }
    if (phase != 0) {
      const bool ok = sq_sums.has_value() && sq_sums->defined();
      TORCH_CHECK(ok && sq_sums->dim() == 2 && sq_sums->size(0) == static_cast<int64_t>(n) &&
                      sq_sums->size(1) == 2,
                  op, ": phase ", phase, " needs sq_sums of shape (", n, ", 2)");
      TORCH_CHECK(sq_sums->scalar_type() == at::kDouble && sq_sums->device() == device, op,
                  ": sq_sums must be float64 on ", device, ", got ", sq_sums->scalar_type(), " on ",
                  sq_sums->device());
    }
    MultiTensor mt(op, std::move(u.lists), device);
    if (skipped_on_host(p.found_inf) || n == 0) return;
    const Job job = u.job(mt, a);
    const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
    // Phase 2 takes the norms from the (reduced) sums; the others compute them (rows of empty
    // params stay 0).
    const at::Tensor norms =
        phase == 2 ? sq_sums->sqrt().contiguous() : at::zeros({static_cast<int64_t>(n), 2}, f64);
    at::Tensor partials, arrivals;
    if (phase != 2) {
      partials = at::empty({job.plan.total_blocks * 2}, f64);
      arrivals =
          at::zeros({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kLong).device(device));
      p.partials = partials.data_ptr<double>();
      p.counters = reinterpret_cast<unsigned long long*>(arrivals.data_ptr<int64_t>());
    }
    p.norms = norms.data_ptr<double>();
    if (!job.tensors.empty()) B::template run<ops::lamb_>(job, p);
    B::increment_steps(
        device, u.cfg,
        counters(phase == 2 ? nullptr : u.step_list(), phase == 1 ? nullptr : &u.mixed),
        p.found_inf);
    mt.copy_back();
    // A device found_inf keeps the old values of the outputs written here.
    auto store = [&](const at::Tensor& dst, const at::Tensor& values) {
      if (p.found_inf.ptr != nullptr) {
        dst.copy_(at::where(a.found_inf->reshape({}).ne(0), dst, values));
      } else {
        dst.copy_(values);
      }
    };
    if (phase == 1) {
      store(*sq_sums, norms);  // the sums of squares, as finish_sums stored them
    } else if (want_norms) {
      store(*tensor_norms, norms);
    }
  }
};

// The hessians are Sophia's state (dtype S), the grads the params' (P): the math runs in P's
// opmath, as in sophia_.
template <class B>
struct HostOp<ops::sophia_update_hessian_, B> {
  static void call(const ops::sophia_update_hessian_::Args& a) {
    const char* op = op_label<ops::sophia_update_hessian_>();
    const at::TensorList hessians = a.hessians;
    const at::TensorList grads = a.grads;
    if (hessians.empty()) {
      // No device to run on; the CPU kernel's checks of the scalars still apply.
      TORCH_CHECK(grads.empty(), op, ": expected grads to have 0 tensors (one per param), got ",
                  grads.size());
      return;
    }
    const c10::Device device = hessians[0].device();
    const ExecConfig cfg = B::config(device);
    SophiaHessianParams p{amp_arg(a.grad_scale, 1.0, op, "grad_scale", device, cfg),
                          amp_arg(a.found_inf, 0.0, op, "found_inf", device, cfg), a.beta2};
    // The grads' dtype (P) and the hessians' (S) must be a supported pair (check_mixed, with the
    // grads standing in for the params); MultiTensor checks every tensor against them.
    std::optional<at::ScalarType> grad_dtype;
    MixedArgs mixed;
    if (!grads.empty() && grads[0].defined()) {
      grad_dtype = grads[0].scalar_type();
      mixed = check_mixed_args(op, grads, {hessians}, std::nullopt, std::nullopt, device);
    }
    MultiTensor mt(op, {{hessians, "hessians", true}, {grads, "grads", false, grad_dtype}}, device);
    if (skipped_on_host(p.found_inf)) return;
    const Job job = make_job(mt, 2, nullptr, &mixed, grads[0].scalar_type(), device, cfg);
    B::template run<ops::sophia_update_hessian_>(job, p);
    mt.copy_back();
  }
};

// The 8-bit ops (Note [8-bit CUDA kernel] in q8_kernels.h): the checks are the CPU kernel's, in
// its order (the 8-bit arguments, then Update's); the params, grads and masters are staged
// contiguous (the blocks are row-major), each param one slot of 7 pointers.
template <class Op, class B>
struct Q8HostOp {
  static void call(const typename Op::Args& a) {
    using K = OpKernels<Op>;
    const char* op = op_label<Op>();
    const std::vector<fusedopt::Q8List> lists = K::lists(a);
    const bool stochastic = a.sr_seeds.has_value() && !a.sr_seeds->empty();
    fusedopt::check_8bit_args(op, a.params, a.qmaps, lists, stochastic, op_device(a));
    Update<Op, B> u(a, {});
    typename K::Params p = K::params(a, u.scalars);
    MultiTensor checked(u.op, std::move(u.lists), u.device);
    if (skipped_on_host(p.found_inf) || a.params.empty()) return;
    const size_t n = a.params.size();
    const int moments = static_cast<int>(lists.size()) / 2;
    const bool master = u.mixed.mx.mode == kMaster;
    const at::Tensor qmaps = a.qmaps.contiguous();
    p.qmaps = qmaps.data_ptr<float>();
    std::vector<fusedopt::Staged> ps(n), gs(n), ms(n);
    Job job;
    job.dtype = a.params[0].scalar_type();
    job.state_dtype = job.dtype;
    job.mode = u.mixed.mx.mode;
    job.device = u.device.is_cuda() ? u.device.index() : -1;
    job.arg_bytes = u.cfg.arg_bytes;
    std::vector<int64_t> numels;
    for (size_t i = 0; i < n; ++i) {
      if (a.params[i].numel() == 0) continue;  // it only counts its step
      ps[i] = fusedopt::Staged(a.params[i], true);
      gs[i] = fusedopt::Staged(a.grads[i], false);
      TensorRef r{};
      r.ptr[kQ8Param] = ps[i].work.data_ptr();
      r.ptr[kQ8Grad] = gs[i].work.data_ptr();
      for (int k = 0; k < moments; ++k) {
        r.ptr[kQ8Codes + k] = lists[k].tensors[i].data_ptr();
        r.ptr[kQ8Absmax + k] = lists[moments + k].tensors[i].data_ptr();
      }
      if (master) {
        ms[i] = fusedopt::Staged((*a.master_params)[i], true);
        r.ptr[kQ8Extra] = ms[i].work.data_ptr();
      } else if (!u.mixed.seeds.empty()) {
        r.ptr[kQ8Extra] = u.mixed.seeds[i];
      }
      r.numel = a.params[i].numel();
      r.index = static_cast<int32_t>(i);
      set_step(r, u.step_list(), i);
      job.tensors.push_back(r);
      numels.push_back(r.numel);
    }
    job.plan = plan_job(numels, kQ8Depth, q8_chunk(u.cfg.chunk_size), u.cfg);
    if (!job.tensors.empty()) B::template run<Op>(job, p);
    B::increment_steps(u.device, u.cfg, counters(u.step_list(), &u.mixed), p.found_inf);
    for (size_t i = 0; i < n; ++i) {
      ps[i].write_back();
      ms[i].write_back();
    }
  }
};

template <class B>
struct HostOp<ops::adam8bit_, B> : Q8HostOp<ops::adam8bit_, B> {};
template <class B>
struct HostOp<ops::lion8bit_, B> : Q8HostOp<ops::lion8bit_, B> {};
template <class B>
struct HostOp<ops::sgd8bit_, B> : Q8HostOp<ops::sgd8bit_, B> {};

// The buffers are Muon's state (dtype S), the grads the params' (P), the updates bf16 or P.
template <class B>
struct HostOp<ops::muon_momentum_, B> {
  static void call(const ops::muon_momentum_::Args& a) {
    const char* op = op_label<ops::muon_momentum_>();
    const at::TensorList bufs = a.momentum_buffers;
    const at::TensorList grads = a.grads;
    if (bufs.empty()) {
      TORCH_CHECK(grads.empty() && a.updates.empty(), op,
                  ": expected grads and updates to have 0 tensors (one per param), got ",
                  grads.size(), " and ", a.updates.size());
      return;
    }
    const c10::Device device = bufs[0].device();
    const ExecConfig cfg = B::config(device);
    MuonMomentumParams p{amp_arg(a.grad_scale, 1.0, op, "grad_scale", device, cfg),
                         amp_arg(a.found_inf, 0.0, op, "found_inf", device, cfg), a.momentum,
                         a.nesterov, 1};
    std::optional<at::ScalarType> grad_dtype;
    MixedArgs mixed;
    if (!grads.empty() && grads[0].defined()) {
      grad_dtype = grads[0].scalar_type();
      mixed = check_mixed_args(op, grads, {bufs}, std::nullopt, std::nullopt, device);
    }
    const at::ScalarType out =
        a.updates.empty() || !a.updates[0].defined() ? at::kBFloat16 : a.updates[0].scalar_type();
    TORCH_CHECK(out == at::kBFloat16 || (grad_dtype.has_value() && out == *grad_dtype), op,
                ": updates must be bfloat16 or the grads' dtype, got ", out);
    p.out_bf16 = out == at::kBFloat16;
    MultiTensor mt(op,
                   {{bufs, "momentum_buffers", true},
                    {grads, "grads", false, grad_dtype},
                    {a.updates, "updates", true, out}},
                   device);
    if (skipped_on_host(p.found_inf)) return;
    const Job job = make_job(mt, 3, nullptr, &mixed, grads[0].scalar_type(), device, cfg);
    B::template run<ops::muon_momentum_>(job, p);
    mt.copy_back();
  }
};

template <class B>
struct HostOp<ops::sum_sq, B> {
  static at::Tensor call(const ops::sum_sq::Args& a) {
    const char* op = op_label<ops::sum_sq>();
    const at::TensorList tensors = a.tensors;
    TORCH_CHECK(!tensors.empty(), op, ": expected at least one tensor");
    const c10::Device device = tensors[0].device();
    const ExecConfig cfg = B::config(device);
    // Grads of different dtypes may be mixed: one job per dtype, all writing one partials array.
    for (const at::Tensor& t : tensors) TORCH_CHECK(t.defined(), op, ": a tensor is undefined");
    const std::vector<std::vector<at::Tensor>> groups = group_by_dtype(tensors);
    std::vector<MultiTensor> mts;
    mts.reserve(groups.size());
    std::vector<Job> jobs;
    int64_t total = 0;
    for (size_t k = 0; k < groups.size(); ++k) {
      mts.emplace_back(op, std::vector<ListSpec>{{groups[k], "tensors", false}}, device);
      jobs.push_back(make_job(mts.back(), 1, nullptr, nullptr, groups[k][0].scalar_type(), device,
                              cfg, total));
      total += jobs.back().plan.total_blocks;
    }
    const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
    at::Tensor out = at::zeros({}, f64);
    if (total == 0) return out;
    const at::Tensor partials = at::empty({total}, f64);
    for (const Job& job : jobs)
      B::template run<ops::sum_sq>(job, SumSqParams{partials.data_ptr<double>()});
    B::sum_partials(device, partials.data_ptr<double>(), total, out.data_ptr<double>());
    return out;
  }
};

// Adafactor's own kernels (adafactor_kernels.h, Note [Adafactor on the GPU]), planned by
// AdafactorPlan (adafactor.cpp); the checks are the CPU kernel's, in its order.
template <class B>
struct HostOp<ops::adafactor_, B> {
  static void call(const ops::adafactor_::Args& a) {
    const char* op = op_label<ops::adafactor_>();
    const size_t n = a.params.size();
    fusedopt::check_adafactor_args(a, op);
    const c10::Device device = op_device(a.params, a.lr);
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(a.params[i].device() == device, op, ": params[", i, "] is on ",
                  a.params[i].device(), ", expected ", device, " (params[0]'s device)");
    }
    const StepList steps = check_steps(op, a.state_steps, n, device);
    const ExecConfig cfg = B::config(device);
    AdafactorParams p{};
    p.args.lr = lr_arg(a.lr, op, device, cfg);
    p.args.grad_scale = amp_arg(a.grad_scale, 1.0, op, "grad_scale", device, cfg);
    p.args.found_inf = amp_arg(a.found_inf, 0.0, op, "found_inf", device, cfg);
    if (skipped_on_host(p.args.found_inf) || n == 0) return;
    p.args.beta2_decay = a.beta2_decay;
    p.args.eps1 = a.eps1;
    p.args.eps2 = a.eps2;
    p.args.d = a.d;
    p.args.weight_decay = a.weight_decay;
    p.args.maximize = a.maximize;
    const AdafactorPlan plan(a, steps, cfg, device);
    plan.bind(p.args);
    p.slots = &plan.slots;
    p.chunk = plan.chunk;
    p.group = plan.group;
    p.max_slots = cfg.max_slots;
    p.max_blocks = cfg.max_blocks;
    if (!plan.slots.empty()) B::template run<ops::adafactor_>(plan.job, p);
    B::increment_steps(device, cfg, steps, p.args.found_inf);
    plan.copy_back();
  }
};

}  // namespace fusedopt::cuda
