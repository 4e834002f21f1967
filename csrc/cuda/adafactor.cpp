// The host plan of adafactor_ on the CUDA backend and its simulation: which blocks every param
// gets in each of the kernels' launch sequences (Note [Adafactor on the GPU] in
// adafactor_kernels.h), dense staging of odd layouts, the fp64 scratch on the params' device.
#include "adafactor.h"

#include <ATen/ops/empty.h>

#include <algorithm>

namespace fusedopt::cuda {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

AdafactorPlan::AdafactorPlan(const ops::adafactor_::Args& a, const StepList& steps,
                             const ExecConfig& cfg, c10::Device device) {
  job.dtype = a.params[0].scalar_type();
  job.state_dtype = job.dtype;
  job.device = device.is_cuda() ? device.index() : -1;
  job.arg_bytes = cfg.arg_bytes;
  job.plan.chunk_size = cfg.chunk_size;
  chunk = cfg.chunk_size;
  group = std::min(kAfGroup, cfg.chunk_size);
  // A short planned chunk (the simulation's) makes short tiles too, so tests see tiles of 1 to
  // kAfRows rows.
  const int64_t tile_rows = std::clamp<int64_t>(cfg.chunk_size / 16, 1, kAfRows);
  auto dense = [&](const at::Tensor& t, bool written) {
    if (t.is_contiguous()) return t;
    at::Tensor d = t.contiguous();
    if (written) {
      back.emplace_back(t, d);
    } else {
      keep.push_back(d);
    }
    return d;
  };
  int64_t tiles = 0, cols = 0, rows = 0, rparts = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    const at::Tensor& p = a.params[i];
    if (p.numel() == 0) continue;  // it only counts its step
    AfSlot s{};
    s.p = dense(p, true).data_ptr();
    s.g = dense(a.grads[i], false).data_ptr();
    s.step = steps.ptrs[i];
    s.index = static_cast<int32_t>(i);
    s.flags = steps.kinds[i] == kCounterDouble ? kStepDouble : 0;
    s.first_tile = tiles;
    s.blocks[kAfFinish] = 1;
    if (p.dim() >= 2) {
      s.rows = p.size(-2);
      s.cols = p.size(-1);
      s.batches = p.numel() / (s.rows * s.cols);
      s.tile_rows = tile_rows;
      s.r = dense(a.row_vars[i], true).data_ptr();
      s.c = dense(a.col_vars[i], true).data_ptr();
      const int64_t n_tiles = s.batches * ceil_div(s.rows, tile_rows);
      const int64_t row_groups = ceil_div(s.rows, group);
      s.col_off = cols;
      s.row_off = rows;
      s.rpart_off = rparts;
      tiles += n_tiles;
      cols += n_tiles * s.cols;
      rows += s.batches * s.rows;
      rparts += s.batches * row_groups;
      s.blocks[kAfSums] = s.blocks[kAfNorm] = s.blocks[kAfApply] = n_tiles;
      s.blocks[kAfStats] = s.batches * (ceil_div(s.cols, group) + row_groups);
    } else {
      s.rows = 1;
      s.cols = p.numel();
      s.batches = 1;
      s.flags |= kAfVectorSlot;
      s.r = dense(a.variances[i], true).data_ptr();
      const int64_t n_tiles = ceil_div(s.cols, chunk);
      tiles += n_tiles;
      s.blocks[kAfSums] = s.blocks[kAfApply] = n_tiles;
    }
    slots.push_back(s);
  }
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  part = at::empty({std::max<int64_t>(1, 2 * tiles)}, f64);
  colpart = at::empty({std::max<int64_t>(1, cols)}, f64);
  rowsum = at::empty({std::max<int64_t>(1, rows)}, f64);
  rpart = at::empty({std::max<int64_t>(1, rparts)}, f64);
  neg_step = at::empty({static_cast<int64_t>(a.params.size())}, f64);
}

void AdafactorPlan::bind(AdafactorArgs& args) const {
  args.part = part.data_ptr<double>();
  args.colpart = colpart.data_ptr<double>();
  args.rowsum = rowsum.data_ptr<double>();
  args.rpart = rpart.data_ptr<double>();
  args.neg_step = neg_step.data_ptr<double>();
}

void AdafactorPlan::copy_back() const {
  for (const auto& [dst, src] : back) dst.copy_(src);
}

}  // namespace fusedopt::cuda
