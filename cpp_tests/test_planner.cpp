// The CUDA backend's launch planner and launch tables (csrc/cuda/launch_plan.h,
// kernel_table.h): plain host code, so it runs here and under the sanitizers. Every plan is
// checked block by block through fill_table() and locate(), the functions the kernels use.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernel_table.h"
#include "cuda/launch_plan.h"
#include "harness.h"

namespace {

using namespace fusedopt::cuda;

// Every chunk of every non-empty tensor in exactly one block, in order, with 64-bit offsets;
// slots tile their launch; capacities kept; nothing empty; global block numbers consecutive.
void check_plan(const std::vector<int64_t>& numels, int64_t chunk, Capacity cap) {
  using Table = TableFor<1, kArgBytesLarge>;
  FO_CHECK(cap.slots <= Table::kSlots, "test capacity too large");
  const LaunchPlan plan = plan_launches(numels, chunk, cap);
  std::vector<TensorRef> refs(numels.size());
  for (size_t i = 0; i < numels.size(); ++i) {
    refs[i] = TensorRef{};
    refs[i].numel = numels[i];
    refs[i].index = static_cast<int32_t>(i);
  }
  std::vector<Table> tables(1);
  Table& t = tables[0];
  size_t tensor = 0;
  int64_t chunk_of_tensor = 0;
  int64_t global = 0;
  auto skip_finished = [&] {
    while (tensor < numels.size() && chunk_of_tensor >= num_chunks(numels[tensor], chunk)) {
      ++tensor;
      chunk_of_tensor = 0;
    }
  };
  for (const PlannedLaunch& l : plan.launches) {
    FO_CHECK(l.first_block == global, "first_block ", l.first_block, " != ", global);
    FO_CHECK(!l.slots.empty() && static_cast<int>(l.slots.size()) <= cap.slots);
    FO_CHECK(l.num_blocks >= 1 && l.num_blocks <= cap.blocks);
    fill_table(t, l, chunk, refs.data());
    for (int b = 0; b < t.num_blocks; ++b, ++global, ++chunk_of_tensor) {
      skip_finished();
      const BlockWork w = locate(t, b);
      FO_CHECK(t.index[w.slot] == static_cast<int32_t>(tensor), "block ", global, ": tensor ",
               t.index[w.slot], ", expected ", tensor);
      FO_CHECK(w.chunk == chunk_of_tensor && w.offset == chunk_of_tensor * chunk, "block ", global);
      const int64_t left = numels[tensor] - w.offset;
      FO_CHECK(w.n == (left < chunk ? left : chunk) && w.n > 0, "block ", global, " n ", w.n);
    }
  }
  skip_finished();
  FO_CHECK(tensor == numels.size(), "tensors left unplanned from ", tensor);
  FO_CHECK(plan.total_blocks == global);
}

FO_TEST(tensor_past_2_pow_31) {
  const Capacity cap = table_capacity(1, kArgBytesLarge);
  check_plan({int64_t{1} << 31 | 1}, kChunkSize, cap);
  check_plan({int64_t{1} << 31 | 1}, kChunkSize, {cap.slots, 4000});
  const LaunchPlan plan = plan_launches({(int64_t{1} << 31) + 1}, kChunkSize, cap);
  FO_CHECK(plan.launches.size() == 1 &&
           plan.total_blocks == ((int64_t{1} << 31) + kChunkSize) / kChunkSize);
}

FO_TEST(empty_tensors_anywhere) {
  const std::vector<int64_t> base = {33, 5, 70, 16, 1, 48};
  for (size_t pos = 0; pos <= base.size(); ++pos) {
    for (int empties : {1, 3}) {
      std::vector<int64_t> numels(base.begin(), base.begin() + pos);
      numels.insert(numels.end(), empties, 0);
      numels.insert(numels.end(), base.begin() + pos, base.end());
      for (Capacity cap : {Capacity{1, 1}, Capacity{2, 3}, Capacity{3, 2}, Capacity{100, 100}}) {
        check_plan(numels, 16, cap);
      }
    }
  }
  FO_CHECK(plan_launches({0, 0, 0}, 16, {4, 4}).launches.empty());
}

FO_TEST(random_plans) {
  std::mt19937 rng(0);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int64_t> numels(rng() % 20);
    for (auto& n : numels) n = (rng() % 3 == 0) ? 0 : static_cast<int64_t>(rng() % 300);
    check_plan(numels, 16, {1 + static_cast<int>(rng() % 6), 1 + static_cast<int>(rng() % 9)});
  }
}

FO_TEST(tables_fit_and_capacities) {
  constexpr auto depths = std::make_integer_sequence<int, kMaxDepth>{};
  FO_CHECK(tables_fit<kArgBytesSmall>(depths) && tables_fit<kArgBytesLarge>(depths));
  FO_CHECK(table_capacity(4, kArgBytesLarge).slots == 495);
  FO_CHECK(table_capacity(4, kArgBytesSmall).slots == 54);
  FO_CHECK(kernel_arg_bytes(12010, 7) == kArgBytesLarge);
  FO_CHECK(kernel_arg_bytes(12000, 9) == kArgBytesSmall);
  FO_CHECK(kernel_arg_bytes(13000, 6) == kArgBytesSmall);
}

FO_TEST(rejects_bad_arguments) {
  // Each case must fail for its own reason: a check that any exception passes would also pass
  // if, say, a bad capacity threw for the chunk size.
  const auto rejects = [](auto&& call, const std::string& needle) {
    const std::string msg = FO_CHECK_THROWS(call());
    FO_CHECK(msg.find(needle) != std::string::npos, "message does not say '", needle, "': ", msg);
  };
  rejects([] { plan_launches({10}, 24, {4, 4}); },
          "chunk_size must be a positive multiple of 16 below 2^30, got 24");
  rejects([] { plan_launches({10}, 0, {4, 4}); }, "positive multiple of 16 below 2^30, got 0");
  rejects([] { plan_launches({10}, int64_t{1} << 31, {4, 4}); }, "got 2147483648");
  rejects([] { plan_launches({10}, 16, {0, 4}); }, "bad launch capacity: 0 slots, 4 blocks");
  rejects([] { plan_launches({10}, 16, {4, 0}); }, "bad launch capacity: 4 slots, 0 blocks");
  rejects([] { plan_launches({3, -1}, 16, {4, 4}); }, "negative numel");
}

}  // namespace
