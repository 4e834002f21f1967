// Bad arguments raise c10::Error before anything is written: params, state, step counters and
// the memory around sliced tensors are unchanged after the throw. And a step with found_inf set
// changes nothing at all.
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>

#include "harness.h"
#include "op_util.h"

namespace {

using namespace fusedopt_test;

// Small lists with every layout; the bad tensor goes in the LAST slot, so that a kernel that
// validated lazily would already have updated the others.
std::vector<ParamSpec> specs() {
  return {{{17}, Layout::kContiguous},
          {{37, 29}, Layout::kTransposed},
          {{24, 20}, Layout::kSliced},
          {{1023}, Layout::kContiguous}};
}

at::Tensor lr() { return at::scalar_tensor(0.05, at::kDouble); }

// Calls adam_ on (possibly edited) lists of g; amsgrad on.
void adam(Group& g, const TensorVec& params, const TensorVec& grads, const TensorVec& exp_avgs,
          const TensorVec& exp_avg_sqs, const TensorVec& maxs, const TensorVec& steps,
          const at::Tensor& lr_t = lr(), const std::optional<at::Tensor>& grad_scale = {},
          const std::optional<at::Tensor>& found_inf = {}) {
  (void)g;
  adam_op(params, grads, exp_avgs, exp_avg_sqs, maxs, steps, lr_t, 0.9, 0.999, 0.01, 1e-8,
          /*amsgrad=*/true, /*maximize=*/false, /*decoupled=*/true, grad_scale, found_inf);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Expects `call` to throw c10::Error whose message contains `needle` (in any case), with g
// unchanged.
template <class F>
void expect_rejected(Group& g, const std::string& what, const std::string& needle, F&& call) {
  const Snapshot before = snapshot(g);
  const std::string msg = FO_CHECK_THROWS(call());
  FO_CHECK(lower(msg).find(needle) != std::string::npos, what, ": message does not mention '",
           needle, "': ", msg.substr(0, msg.find('\n')));
  check_unchanged(g, before, what);
  std::printf("  %-44s -> %s\n", what.c_str(),
              msg.substr(0, std::min(msg.find('\n'), size_t{100})).c_str());
}

FO_TEST(adam_rejects_bad_lists) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    Group g = make_group(dtype, adam_roles(true), specs(), 5, true);
    const auto& L = g.lists;
    auto drop_last = [](TensorVec v) {
      v.pop_back();
      return v;
    };
    auto replace_last = [](TensorVec v, at::Tensor t) {
      v.back() = t;
      return v;
    };
    const at::Tensor last = L[0].back();
    expect_rejected(g, "grads one short", "grads",
                    [&] { adam(g, L[0], drop_last(L[1]), L[2], L[3], L[4], g.steps); });
    expect_rejected(g, "max_exp_avg_sqs empty with amsgrad", "max_exp_avg_sqs",
                    [&] { adam(g, L[0], L[1], L[2], L[3], {}, g.steps); });
    expect_rejected(g, "state_steps one short", "state_steps",
                    [&] { adam(g, L[0], L[1], L[2], L[3], L[4], drop_last(g.steps)); });
    expect_rejected(g, "exp_avgs[last] of the wrong shape", "shape", [&] {
      adam(g, L[0], L[1], replace_last(L[2], at::zeros({1022}, last.options())), L[3], L[4],
           g.steps);
    });
    expect_rejected(g, "exp_avg_sqs[last] with one element more", "shape", [&] {
      adam(g, L[0], L[1], L[2], replace_last(L[3], at::zeros({1024}, last.options())), L[4],
           g.steps);
    });
    expect_rejected(g, "grads[last] of another dtype", "dtype", [&] {
      adam(g, L[0], replace_last(L[1], at::zeros({1023}, at::kDouble)), L[2], L[3], L[4], g.steps);
    });
    // Through the dispatcher a sparse grad selects the SparseCPU kernel, which does not exist,
    // so the dispatcher raises before the op's own check: either way, nothing is written.
    expect_rejected(g, "grads[last] sparse", "sparse", [&] {
      adam(g, L[0], replace_last(L[1], at::zeros({1023}, last.options()).to_sparse()), L[2], L[3],
           L[4], g.steps);
    });
    expect_rejected(g, "state_steps[last] int64", "state_steps", [&] {
      adam(g, L[0], L[1], L[2], L[3], L[4], replace_last(g.steps, at::scalar_tensor(3, at::kLong)));
    });
    expect_rejected(g, "lr with two elements", "lr", [&] {
      adam(g, L[0], L[1], L[2], L[3], L[4], g.steps, at::zeros({2}, at::kDouble));
    });
    expect_rejected(g, "grad_scale with two elements", "grad_scale", [&] {
      adam(g, L[0], L[1], L[2], L[3], L[4], g.steps, lr(), at::ones({2}, at::kFloat));
    });
    expect_rejected(g, "found_inf with two elements", "found_inf", [&] {
      adam(g, L[0], L[1], L[2], L[3], L[4], g.steps, lr(), std::nullopt,
           at::zeros({2}, at::kFloat));
    });
  }
}

// A written tensor whose elements share memory cannot be updated element by element
// (torch.optim's in-place ops raise "more than one element of the written-to tensor refers to a
// single memory location"); it must be refused before the first write, not found out when the
// results are copied back.
FO_TEST(adam_rejects_overlapping_state) {
  Group g = make_group(at::kFloat, adam_roles(true), specs(), 14, true);
  const auto& L = g.lists;
  TensorVec exp_avgs = L[2];
  exp_avgs.back() = at::zeros({1}, at::kFloat).expand({1023});
  expect_rejected(g, "exp_avgs[last] expanded (overlapping)", "share memory",
                  [&] { adam(g, L[0], L[1], exp_avgs, L[3], L[4], g.steps); });
}

// Params of a dtype the kernels do not handle: refused, and the step counters not advanced.
FO_TEST(adam_rejects_integer_params) {
  Group g = make_group(at::kFloat, adam_roles(false), specs(), 13, true);
  TensorVec ints;
  for (const auto& t : g.lists[0]) ints.push_back(at::zeros(t.sizes(), at::kLong));
  Group gi = g;
  gi.lists = {ints, ints, ints, ints};
  for (auto& list : gi.lists) {
    for (auto& t : list) t = t.clone();
  }
  expect_rejected(gi, "int64 params", "long", [&] {
    adam_op(gi.lists[0], gi.lists[1], gi.lists[2], gi.lists[3], {}, gi.steps, lr(), 0.9, 0.999, 0.0,
            1e-8, false, false, true);
  });
}

FO_TEST(sgd_rejects_bad_lists) {
  Group g = make_group(at::kFloat, sgd_roles(true), specs(), 6, false);
  const auto& L = g.lists;
  auto sgd = [&](const TensorVec& p, const TensorVec& gr, const TensorVec& b, double momentum) {
    sgd_op(p, gr, b, lr(), momentum, 0.0, 0.0, false, false, false);
  };
  TensorVec short_bufs(L[2].begin(), L[2].end() - 1);
  expect_rejected(g, "momentum_buffers one short", "momentum_buffers",
                  [&] { sgd(L[0], L[1], short_bufs, 0.9); });
  expect_rejected(g, "momentum_buffers given with momentum=0", "momentum_buffers",
                  [&] { sgd(L[0], L[1], L[2], 0.0); });
  TensorVec bad_bufs = L[2];
  bad_bufs.back() = at::zeros({1023, 1}, at::kFloat);
  expect_rejected(g, "momentum_buffers[last] of the wrong shape", "shape",
                  [&] { sgd(L[0], L[1], bad_bufs, 0.9); });
  TensorVec bad_grads = L[1];
  bad_grads.back() = at::zeros({1023}, at::kHalf);
  expect_rejected(g, "grads[last] of another dtype", "dtype",
                  [&] { sgd(L[0], bad_grads, L[2], 0.9); });
}

// found_inf = 1 (GradScaler saw an inf/NaN): nothing changes, not even the step counters.
// found_inf = 0: an ordinary step.
FO_TEST(found_inf_skips_the_step) {
  for (at::ScalarType dtype : {at::kFloat, at::kHalf}) {
    Group g = make_group(dtype, adam_roles(true), specs(), 7, true);
    const auto& L = g.lists;
    Snapshot before = snapshot(g);
    adam(g, L[0], L[1], L[2], L[3], L[4], g.steps, lr(), at::scalar_tensor(2.0, at::kFloat),
         at::ones({1}, at::kFloat));
    check_unchanged(g, before, "adam with found_inf=1");

    AdamHyper h;
    h.lr = 0.05;
    h.decoupled = h.amsgrad = true;
    h.weight_decay = 0.01;
    h.grad_scale = 2.0;
    adam(g, L[0], L[1], L[2], L[3], L[4], g.steps, lr(), at::scalar_tensor(2.0, at::kFloat),
         at::zeros({1}, at::kFloat));
    CheckStats stats;
    check_adam(g, before, h, "adam with found_inf=0", stats);

    Group s = make_group(dtype, sgd_roles(true), specs(), 8, false);
    before = snapshot(s);
    sgd_op(s.lists[0], s.lists[1], s.lists[2], lr(), 0.9, 0.0, 0.0, false, false, false,
           std::nullopt, at::ones({1}, at::kFloat));
    check_unchanged(s, before, "sgd with found_inf=1");
  }
}

// A list whose params have different dtypes cannot be run as one dtype group. The op must either
// reject it before writing anything or update every param correctly; anything else means some
// param's memory was read (and written) as another dtype.
constexpr const char* kMixedDtypes = "params [float32, float64] in one call";

template <class Run, class Check>
void rejected_or_correct(Group& g, const Snapshot& before, Run run, Check check) {
  try {
    run();
  } catch (const fusedopt_test::Failure&) {
    throw;
  } catch (const std::exception& e) {
    check_unchanged(g, before, "mixed dtypes (rejected)");
    std::printf("  rejected: %s\n", std::string(e.what()).substr(0, 200).c_str());
    return;
  }
  CheckStats stats;
  check(stats);
}

FO_TEST(adam_params_of_mixed_dtypes) {
  Group a = make_group(at::kFloat, adam_roles(false), {{{1000}, Layout::kContiguous}}, 9, true);
  Group b = make_group(at::kDouble, adam_roles(false), {{{1000}, Layout::kContiguous}}, 10, true);
  Group g = a;  // float param first, then the double one
  for (size_t k = 0; k < g.lists.size(); ++k) g.lists[k].push_back(b.lists[k][0]);
  g.steps.push_back(b.steps[0]);
  const Snapshot before = snapshot(g);
  AdamHyper h;
  h.lr = 0.05;
  rejected_or_correct(
      g, before, [&] { run_adam(g, h); },
      [&](CheckStats& stats) { check_adam(g, before, h, kMixedDtypes, stats); });
}

FO_TEST(sgd_params_of_mixed_dtypes) {
  Group a = make_group(at::kFloat, sgd_roles(true), {{{1000}, Layout::kContiguous}}, 11, false);
  Group b = make_group(at::kDouble, sgd_roles(true), {{{1000}, Layout::kContiguous}}, 12, false);
  Group g = a;
  for (size_t k = 0; k < g.lists.size(); ++k) g.lists[k].push_back(b.lists[k][0]);
  const Snapshot before = snapshot(g);
  SgdHyper h;
  h.lr = 0.1;
  h.momentum = 0.9;
  rejected_or_correct(
      g, before, [&] { run_sgd(g, h); },
      [&](CheckStats& stats) { check_sgd(g, before, h, kMixedDtypes, stats); });
}

}  // namespace
