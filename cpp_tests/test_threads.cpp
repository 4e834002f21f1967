// Threads: the work of a group is split over the elements of all its tensors together (Note [one
// parallel region per group]), so thread ranges start and end inside tensors. Results with two
// threads must be bitwise those with one, and match the reference, also for thousands of tiny
// tensors where ranges cross many tensor boundaries.
#include <ATen/Parallel.h>

#include <cstdio>
#include <random>

#include "cpu/isa.h"
#include "harness.h"
#include "op_util.h"

namespace {

using namespace fusedopt_test;

// Sets the thread count for a scope.
struct Threads {
  int saved = at::get_num_threads();
  explicit Threads(int n) {
    at::set_num_threads(n);
    FO_CHECK(at::get_num_threads() == n, "at::set_num_threads(", n,
             ") did not take: ", at::get_num_threads());
  }
  ~Threads() { at::set_num_threads(saved); }
};

// 3,000 tensors of 1 to 64 elements (about 100k in all: three parallel grains), and the standard
// specs after them.
std::vector<ParamSpec> many_small() {
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int64_t> size(1, 64);
  std::vector<ParamSpec> specs;
  for (int i = 0; i < 3000; ++i) specs.push_back({{size(rng)}, Layout::kContiguous});
  for (const auto& s : standard_specs()) specs.push_back(s);
  return specs;
}

FO_TEST(two_threads_match_one) {
  const auto specs = standard_specs();
  int calls = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    for (int mode = 0; mode < 8; ++mode) {
      AdamHyper h;
      h.lr = 0.05;
      h.weight_decay = 0.01;
      h.decoupled = mode & 4;
      h.amsgrad = mode & 2;
      h.maximize = mode & 1;
      Group one = make_group(dtype, adam_roles(h.amsgrad), specs, 40 + mode, true);
      Group two = clone_group(one);
      {
        Threads t(1);
        run_adam(one, h);
      }
      {
        Threads t(2);
        run_adam(two, h);
      }
      std::string where;
      FO_CHECK(identical(one, two, &where), dtype_name(dtype), " ", describe(h),
               ": 2 threads differ from 1 at ", where);
      ++calls;
    }
    for (bool first : {false, true}) {
      SgdHyper h;
      h.lr = 0.1;
      h.momentum = 0.9;
      h.nesterov = true;
      h.first = first;
      Group one = make_group(dtype, sgd_roles(true), specs, 60 + first, false);
      Group two = clone_group(one);
      {
        Threads t(1);
        run_sgd(one, h);
      }
      {
        Threads t(2);
        run_sgd(two, h);
      }
      std::string where;
      FO_CHECK(identical(one, two, &where), dtype_name(dtype), " ", describe(h),
               ": 2 threads differ from 1 at ", where);
      ++calls;
    }
  }
  std::printf("  %d op calls identical with 1 and 2 threads\n", calls);
}

FO_TEST(many_small_tensors_two_threads) {
  Threads t(2);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    AdamHyper h;
    h.lr = 0.05;
    h.decoupled = true;
    h.weight_decay = 0.01;
    Group g = make_group(dtype, adam_roles(false), many_small(), 70, true);
    const Snapshot before = snapshot(g);
    run_adam(g, h);
    CheckStats stats;
    check_adam(g, before, h, describe(h), stats);

    SgdHyper s;
    s.lr = 0.1;
    s.momentum = 0.9;
    Group gs = make_group(dtype, sgd_roles(true), many_small(), 71, false);
    const Snapshot before_s = snapshot(gs);
    run_sgd(gs, s);
    check_sgd(gs, before_s, s, describe(s), stats);
    std::printf("  %s: %lld param elements in %zu tensors checked\n", dtype_name(dtype),
                static_cast<long long>(stats.checked), g.lists[0].size());
  }
}

}  // namespace
