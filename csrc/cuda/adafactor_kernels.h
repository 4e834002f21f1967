// Adafactor's kernels (OpKernels<ops::adafactor_>): the passes of the CPU kernel (Note
// [Adafactor passes] in csrc/cpu/adafactor.cpp) as block bodies over a launch table of their
// own, written once for the GPU and the host simulation (Note [one block body, two executors] in
// block.h). Host glue: glue.h.
//
// Note [Adafactor on the GPU]
// A matrix ([..., m, n], a batch of B matrices) is cut into tiles of R <= kAfRows whole rows of
// one batch, one block each, threads over the columns (consecutive threads, consecutive
// elements: coalesced); a vector ([n] or 0-d) into chunks of the planned chunk size. Five
// launch sequences on one stream, every per-param scalar computed on the device from the step
// counter, lr, grad_scale and found_inf as the other ops read them (Note [scalars on the
// device]): no host sync, nothing a CUDA graph capture refuses.
//   1 kSums   matrix tile: row sums of (s g)^2 (whole rows: final), the tile's column sums
//             (colpart[tile][n]) and sum p^2; vector chunk: v = lerp(v, (s g)^2, w) stored,
//             sums of p^2 and u^2                                       read p, g (v; write v)
//   2 kStats  per batch, blocks of kAfGroup columns: col_var lerped toward the mean of the
//             tiles' column sums; blocks of kAfGroup rows: row_var toward the row sums, and
//             the group's sum of the stored row_var (rpart)               O(m + n + B*T*n)
//   3 kNorm   matrix tile: sum u^2, mean(row_var) from rpart; u factored: the tile's row
//             factors once per block, a column's once per thread (Note [factored direction]
//             in fusedopt/math.h): no division per element                 read g
//   4 kFinish per param, one block: sum p^2, sum u^2 of its tiles -> -alpha / max(1, RMS(u)/d)
//   5 kApply  p = p (1 - lr wd) - alpha' u, u recomputed                  read p, g; write p
// Per matrix element 6*S as on the CPU (24 B per fp32 param) plus the column sums, 8 B per
// column per tile written by kSums and read by kStats: 8/R B per element (1 B at R = 8). A
// vector: 8*S.
// Every sum is fp64 in a fixed order (per thread in element order, then a fixed tree, then
// partials in tile order), so a launch shape gives the same bits on every run; the order
// differs from the CPU kernel's (per SIMD lane) by fp64 rounding, which moves the fp32 row and
// column means by at most an ulp now and then (tests/test_cuda_planner.py: against the fp64
// reference element by element, the fp32 one within fp32 rounding, the CPU kernel in fp16/bf16).
// Limits: a tile spans whole rows, so a wide matrix has few tiles (a 768 x 50257 head: 96
// blocks), and a narrow one (n << kBlockThreads, e.g. a conv's 3 x 3 kernels batched over its
// channels) leaves most threads of a block idle; kStats sums a column over all tiles of its
// batch in one thread, so a tall matrix (50257 x 768: 6,283 tiles, 2 column blocks) has 2
// blocks read 25 MB each. Not yet measured on a GPU: splitting the tiles among a block's
// threads (and its columns among more blocks) is the first thing to try there.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "block.h"
#include "fusedopt/math.h"
#include "fusedopt/ops_generated.h"
#include "jobs.h"
#include "kernel_table.h"

namespace fusedopt::cuda {

constexpr int kAfRows = 8;         // rows per matrix tile (the per-thread row sums in registers)
constexpr int64_t kAfGroup = 512;  // rows or columns per statistics block

enum AfKind : int { kAfSums, kAfStats, kAfNorm, kAfFinish, kAfApply, kAfKinds };

// Slot flag beside kStepDouble: the param is a vector (variance in r, c unused).
constexpr uint8_t kAfVectorSlot = 4;

// The kernels' arguments besides the table: the op's scalars and the fp64 scratch arrays.
struct AdafactorArgs {
  ScalarArg lr, grad_scale, found_inf;
  double beta2_decay, eps1, eps2, d, weight_decay;
  int32_t maximize;
  double* part;      // [tile][2]: sum p^2, sum u^2
  double* colpart;   // matrices: [tile][n] column sums of (s g)^2
  double* rowsum;    // matrices: [batch][m] row sums of (s g)^2
  double* rpart;     // matrices: [batch][row group] sums of the stored row_var
  double* neg_step;  // [param]: -alpha / max(1, RMS(u) / d)
};

// One param as the host plans it (glue.h); blocks[kind]: its blocks in that launch sequence.
struct AfSlot {
  void* p;
  void* g;
  void* r;  // row_var, or a vector's variance
  void* c;  // col_var
  void* step;
  int64_t rows, cols, batches, tile_rows;  // a vector: 1, numel, 1, 0
  int64_t first_tile, col_off, row_off, rpart_off;
  int32_t index;
  uint8_t flags;
  int64_t blocks[kAfKinds];
};

constexpr int64_t af_slot_bytes() { return 5 * 8 + 9 * 8 + 2 * 4 + 1; }
constexpr int af_capacity(int arg_bytes) {
  return static_cast<int>((arg_bytes - kFunctorArgBytes - 2 * 8 - 2 * 4 - 8) / af_slot_bytes());
}

// A launch's slots (pieces of the planned params), struct-of-arrays as LaunchTable.
template <int SLOTS>
struct AfTable {
  static constexpr int kSlots = SLOTS;
  int64_t chunk;  // a vector's elements per block
  int64_t group;  // rows or columns per statistics block
  int32_t num_slots;
  int32_t num_blocks;
  void* p[SLOTS];
  void* g[SLOTS];
  void* r[SLOTS];
  void* c[SLOTS];
  void* step[SLOTS];
  int64_t rows[SLOTS], cols[SLOTS], batches[SLOTS], tile_rows[SLOTS];
  int64_t first_tile[SLOTS], col_off[SLOTS], row_off[SLOTS], rpart_off[SLOTS];
  int64_t first_local[SLOTS];  // the slot's first block, counted in its param's blocks
  int32_t block_start[SLOTS];
  int32_t index[SLOTS];
  uint8_t flags[SLOTS];
};

template <int ARG_BYTES>
using AfTableFor = AfTable<af_capacity(ARG_BYTES)>;

static_assert(sizeof(AfTableFor<kArgBytesSmall>) + kFunctorArgBytes <= kArgBytesSmall &&
                  sizeof(AfTableFor<kArgBytesLarge>) + kFunctorArgBytes <= kArgBytesLarge &&
                  sizeof(AdafactorArgs) <= kFunctorArgBytes,
              "an Adafactor launch table overflows the kernel-argument space");

// The matrix tile of a block: batch b, rows [lo, lo + nr) of it, elements from `base`.
struct AfTile {
  int64_t b, lo, nr, base, tile;
};

C10_HOST_DEVICE inline int64_t af_tiles_per_batch(int64_t rows, int64_t tile_rows) {
  return (rows + tile_rows - 1) / tile_rows;
}

// Block `block` of one kind's launch, for element type T (opmath O).
template <typename T, int KIND, int ARG_BYTES>
struct AdafactorKernel {
  using O = at::opmath_type<T>;
  static constexpr int kRed = kAfRows + 1;  // the tile's row sums and sum p^2
  struct Shared {
    double red[kRed * kBlockThreads];
    double row[kAfRows];  // a tile's row factors (Note [factored direction]), in opmath
    double x[3];          // per-block scalars
  };

  AfTableFor<ARG_BYTES> t;
  AdafactorArgs a;

  C10_HOST_DEVICE bool skip() const { return a.found_inf.get() != 0.0; }

  template <class Exec>
  C10_HOST_DEVICE void operator()(int block, Exec& ex, Shared& sh) const {
    if (skip()) return;  // uniform across the launch
    const int slot = find_slot(t, block);
    const int64_t lb = t.first_local[slot] + (block - t.block_start[slot]);
    if constexpr (KIND == kAfSums) {
      if (t.flags[slot] & kAfVectorSlot) {
        vector_sums(slot, lb, ex, sh);
      } else {
        matrix_sums(slot, lb, ex, sh);
      }
    } else if constexpr (KIND == kAfStats) {
      stats(slot, lb, ex, sh);
    } else if constexpr (KIND == kAfNorm) {
      matrix_pass(false, slot, lb, ex, sh);
    } else if constexpr (KIND == kAfFinish) {
      finish(slot, ex, sh);
    } else {
      if (t.flags[slot] & kAfVectorSlot) {
        vector_apply(slot, lb, ex, sh);
      } else {
        matrix_pass(true, slot, lb, ex, sh);
      }
    }
  }

  // Two block-wide sums of what fn(tid, x, y) adds to x and y, in sh.red[0] and
  // sh.red[nthreads] (a fixed tree).
  template <class Exec, class Fn>
  C10_HOST_DEVICE static void sums2(Exec& ex, Shared& sh, Fn&& fn) {
    const int nt = ex.nthreads;
    ex.each([&](int tid) {
      double x = 0, y = 0;
      fn(tid, x, y);
      sh.red[tid] = x;
      sh.red[nt + tid] = y;
    });
    ex.sync();
    tree_sum<2>(ex, sh.red);
  }

  C10_HOST_DEVICE double step(int slot) const { return next_step(t.step[slot], t.flags[slot]); }
  C10_HOST_DEVICE O inv_scale() const { return static_cast<O>(1.0 / a.grad_scale.get()); }
  C10_HOST_DEVICE O signed_scale() const {
    const double s = 1.0 / a.grad_scale.get();
    return static_cast<O>(a.maximize ? -s : s);
  }
  C10_HOST_DEVICE O eps1_sq() const { return static_cast<O>(a.eps1 * a.eps1); }

  C10_HOST_DEVICE AfTile tile(int slot, int64_t lb) const {
    const int64_t rows = t.rows[slot];
    const int64_t per = af_tiles_per_batch(rows, t.tile_rows[slot]);
    AfTile w;
    w.tile = lb;
    w.b = lb / per;
    w.lo = (lb % per) * t.tile_rows[slot];
    w.nr = rows - w.lo < t.tile_rows[slot] ? rows - w.lo : t.tile_rows[slot];
    w.base = (w.b * rows + w.lo) * t.cols[slot];
    return w;
  }

  template <class Exec>
  C10_HOST_DEVICE void matrix_sums(int slot, int64_t lb, Exec& ex, Shared& sh) const {
    const AfTile w = tile(slot, lb);
    const int64_t n = t.cols[slot];
    const T* p = static_cast<const T*>(t.p[slot]) + w.base;
    const T* g = static_cast<const T*>(t.g[slot]) + w.base;
    double* col = a.colpart + t.col_off[slot] + w.tile * n;
    const O s = inv_scale();
    const int nt = ex.nthreads;
    ex.each([&](int tid) {
      double acc[kRed] = {};
      for (int64_t j = tid; j < n; j += nt) {
        double cs = 0;
        // A constant bound, unrolled: acc stays in registers.
        FUSEDOPT_UNROLL
        for (int i = 0; i < kAfRows; ++i) {
          if (i < w.nr) {
            const O gk = static_cast<O>(g[i * n + j]) * s;
            const double gg = static_cast<double>(gk * gk);
            acc[i] += gg;
            cs += gg;
            const double pk = static_cast<double>(static_cast<O>(p[i * n + j]));
            acc[kAfRows] += pk * pk;
          }
        }
        col[j] = cs;
      }
      for (int k = 0; k < kRed; ++k) sh.red[k * nt + tid] = acc[k];
    });
    ex.sync();
    tree_sum<kRed>(ex, sh.red);
    ex.each([&](int tid) {
      if (tid == 0) {
        double* rowsum = a.rowsum + t.row_off[slot] + w.b * t.rows[slot] + w.lo;
        for (int64_t i = 0; i < w.nr; ++i) rowsum[i] = sh.red[i * nt];
        a.part[2 * (t.first_tile[slot] + w.tile)] = sh.red[kAfRows * nt];
      }
    });
  }

  // [lo, lo + count) of a vector's elements: the block's chunk.
  C10_HOST_DEVICE int64_t chunk_count(int slot, int64_t lo) const {
    const int64_t left = t.cols[slot] - lo;
    return left < t.chunk ? left : t.chunk;
  }

  template <class Exec>
  C10_HOST_DEVICE void vector_sums(int slot, int64_t lb, Exec& ex, Shared& sh) const {
    const int64_t lo = lb * t.chunk;
    const int64_t count = chunk_count(slot, lo);
    const T* p = static_cast<const T*>(t.p[slot]) + lo;
    const T* g = static_cast<const T*>(t.g[slot]) + lo;
    T* v = static_cast<T*>(t.r[slot]) + lo;
    const O s = inv_scale();
    const O e1 = eps1_sq();
    const int nt = ex.nthreads;
    ex.each([&](int tid) {
      if (tid == 0) sh.x[0] = std::pow(step(slot), a.beta2_decay);
    });
    ex.sync();
    const O wt = static_cast<O>(sh.x[0]);
    sums2(ex, sh, [&](int tid, double& pp, double& uu) {
      for (int64_t e = tid; e < count; e += nt) {
        const O gk = static_cast<O>(g[e]) * s;
        const T vt = static_cast<T>(lerp_(static_cast<O>(v[e]), gk * gk, wt));
        v[e] = vt;
        const double u = static_cast<double>(adafactor_direction(static_cast<O>(vt), gk, e1));
        uu += u * u;
        const double pk = static_cast<double>(static_cast<O>(p[e]));
        pp += pk * pk;
      }
    });
    ex.each([&](int tid) {
      if (tid == 0) {
        double* part = a.part + 2 * (t.first_tile[slot] + lb);
        part[0] = sh.red[0];
        part[1] = sh.red[nt];
      }
    });
  }

  // Block lb of a batch's statistics: column groups first, then row groups.
  template <class Exec>
  C10_HOST_DEVICE void stats(int slot, int64_t lb, Exec& ex, Shared& sh) const {
    const int64_t m = t.rows[slot];
    const int64_t n = t.cols[slot];
    const int64_t col_groups = (n + t.group - 1) / t.group;
    const int64_t row_groups = (m + t.group - 1) / t.group;
    const int64_t b = lb / (col_groups + row_groups);
    const int64_t k = lb % (col_groups + row_groups);
    const int nt = ex.nthreads;
    ex.each([&](int tid) {
      if (tid == 0) sh.x[0] = std::pow(step(slot), a.beta2_decay);
    });
    ex.sync();
    const O wt = static_cast<O>(sh.x[0]);
    if (k < col_groups) {
      const int64_t per = af_tiles_per_batch(m, t.tile_rows[slot]);
      const double* col = a.colpart + t.col_off[slot] + b * per * n;
      T* c = static_cast<T*>(t.c[slot]) + b * n;
      const int64_t j0 = k * t.group;
      const int64_t j1 = j0 + t.group < n ? j0 + t.group : n;
      ex.each([&](int tid) {
        for (int64_t j = j0 + tid; j < j1; j += nt) {
          double sum = 0;
          for (int64_t tt = 0; tt < per; ++tt) sum += col[tt * n + j];
          const O mean = static_cast<O>(sum / static_cast<double>(m));
          c[j] = static_cast<T>(lerp_(static_cast<O>(c[j]), mean, wt));
        }
      });
      return;
    }
    const int64_t rg = k - col_groups;
    const int64_t i0 = rg * t.group;
    const int64_t i1 = i0 + t.group < m ? i0 + t.group : m;
    T* r = static_cast<T*>(t.r[slot]) + b * m;
    const double* rowsum = a.rowsum + t.row_off[slot] + b * m;
    ex.each([&](int tid) {
      for (int64_t i = i0 + tid; i < i1; i += nt) {
        const O mean = static_cast<O>(rowsum[i] / static_cast<double>(n));
        r[i] = static_cast<T>(lerp_(static_cast<O>(r[i]), mean, wt));
      }
    });
    ex.sync();
    // The stored values, summed in row order by one thread: the same bits for any block size.
    ex.each([&](int tid) {
      if (tid == 0) {
        double sum = 0;
        for (int64_t i = i0; i < i1; ++i) sum += static_cast<double>(static_cast<O>(r[i]));
        a.rpart[t.rpart_off[slot] + b * row_groups + rg] = sum;
      }
    });
  }

  // Pass 2 (sum u^2 into part[tile][1]) or pass 3 (the update) over a matrix tile.
  template <class Exec>
  C10_HOST_DEVICE void matrix_pass(bool update, int slot, int64_t lb, Exec& ex, Shared& sh) const {
    const AfTile w = tile(slot, lb);
    const int64_t m = t.rows[slot];
    const int64_t n = t.cols[slot];
    ex.each([&](int tid) {
      if (tid == 0) {
        const int64_t row_groups = (m + t.group - 1) / t.group;
        const double* rp = a.rpart + t.rpart_off[slot] + w.b * row_groups;
        double sum = 0;
        for (int64_t k = 0; k < row_groups; ++k) sum += rp[k];
        const O rm = static_cast<O>(sum / static_cast<double>(m));
        const O e1 = static_cast<O>(a.eps1);
        const O rmean = rm < e1 ? e1 : rm;  // clamp_(min=): NaN stays NaN
        const T* r = static_cast<const T*>(t.r[slot]) + w.b * m + w.lo;
        for (int64_t i = 0; i < w.nr; ++i) {
          sh.row[i] = static_cast<double>(adafactor_row_factor(static_cast<O>(r[i]), rmean));
        }
        if (update) {
          const double lr = a.lr.get();
          sh.x[1] = a.weight_decay != 0 ? 1 - lr * a.weight_decay : 1.0;
          sh.x[2] = a.neg_step[t.index[slot]];
        }
      }
    });
    ex.sync();
    const O cap = adafactor_col_factor(eps1_sq());
    const T* c = static_cast<const T*>(t.c[slot]) + w.b * n;
    const T* g = static_cast<const T*>(t.g[slot]) + w.base;
    const int nt = ex.nthreads;
    if (update) {
      const O gs = signed_scale();
      const O decay = static_cast<O>(sh.x[1]);
      const O neg = static_cast<O>(sh.x[2]);
      T* p = static_cast<T*>(t.p[slot]) + w.base;
      ex.each([&](int tid) {
        for (int64_t j = tid; j < n; j += nt) {
          const O bj = adafactor_col_factor(static_cast<O>(c[j]));
          for (int64_t i = 0; i < w.nr; ++i) {
            const O u = adafactor_factored_direction(static_cast<O>(sh.row[i]), bj,
                                                     static_cast<O>(g[i * n + j]) * gs, cap);
            O pj = static_cast<O>(p[i * n + j]);
            adafactor_apply(pj, u, decay, neg);
            p[i * n + j] = static_cast<T>(pj);
          }
        }
      });
      return;
    }
    const O s = inv_scale();
    ex.each([&](int tid) {
      double uu = 0;
      for (int64_t j = tid; j < n; j += nt) {
        const O bj = adafactor_col_factor(static_cast<O>(c[j]));
        for (int64_t i = 0; i < w.nr; ++i) {
          const double u = static_cast<double>(adafactor_factored_direction(
              static_cast<O>(sh.row[i]), bj, static_cast<O>(g[i * n + j]) * s, cap));
          uu += u * u;
        }
      }
      sh.red[tid] = uu;
    });
    ex.sync();
    tree_sum<1>(ex, sh.red);
    ex.each([&](int tid) {
      if (tid == 0) a.part[2 * (t.first_tile[slot] + w.tile) + 1] = sh.red[0];
    });
  }

  // One param: the step size from the sums of its tiles, as torch's Python floats compute it
  // (csrc/cpu/adafactor.cpp).
  template <class Exec>
  C10_HOST_DEVICE void finish(int slot, Exec& ex, Shared& sh) const {
    const bool vector = t.flags[slot] & kAfVectorSlot;
    const int64_t numel = vector ? t.cols[slot] : t.batches[slot] * t.rows[slot] * t.cols[slot];
    const int64_t tiles =
        vector ? (numel + t.chunk - 1) / t.chunk
               : t.batches[slot] * af_tiles_per_batch(t.rows[slot], t.tile_rows[slot]);
    const double* part = a.part + 2 * t.first_tile[slot];
    const int nt = ex.nthreads;
    sums2(ex, sh, [&](int tid, double& pp, double& uu) {
      for (int64_t k = tid; k < tiles; k += nt) {
        pp += part[2 * k];
        uu += part[2 * k + 1];
      }
    });
    ex.each([&](int tid) {
      if (tid == 0) {
        const double lr = a.lr.get();
        const double inv_sqrt = 1.0 / std::pow(step(slot), 0.5);
        const double rho = inv_sqrt < lr ? inv_sqrt : lr;  // std::min(lr, 1 / sqrt(step))
        const double sq_n = std::sqrt(static_cast<double>(numel));
        const double rms = std::sqrt(sh.red[0]) / sq_n;
        const double alpha = (rms > a.eps2 ? rms : a.eps2) * rho;
        const double clip = std::sqrt(sh.red[nt]) / (sq_n * a.d);
        a.neg_step[t.index[slot]] = -alpha / (clip > 1.0 ? clip : 1.0);
      }
    });
  }

  template <class Exec>
  C10_HOST_DEVICE void vector_apply(int slot, int64_t lb, Exec& ex, Shared& sh) const {
    const int64_t lo = lb * t.chunk;
    const int64_t count = chunk_count(slot, lo);
    ex.each([&](int tid) {
      if (tid == 0) {
        const double lr = a.lr.get();
        sh.x[1] = a.weight_decay != 0 ? 1 - lr * a.weight_decay : 1.0;
        sh.x[2] = a.neg_step[t.index[slot]];
      }
    });
    ex.sync();
    const O gs = signed_scale();
    const O e1 = eps1_sq();
    const O decay = static_cast<O>(sh.x[1]);
    const O neg = static_cast<O>(sh.x[2]);
    T* p = static_cast<T*>(t.p[slot]) + lo;
    const T* g = static_cast<const T*>(t.g[slot]) + lo;
    const T* v = static_cast<const T*>(t.r[slot]) + lo;
    const int nt = ex.nthreads;
    ex.each([&](int tid) {
      for (int64_t e = tid; e < count; e += nt) {
        const O u = adafactor_direction(static_cast<O>(v[e]), static_cast<O>(g[e]) * gs, e1);
        O pj = static_cast<O>(p[e]);
        adafactor_apply(pj, u, decay, neg);
        p[e] = static_cast<T>(pj);
      }
    });
  }
};

// What the host glue hands the kernels: the arguments, the planned params, the planning limits.
struct AdafactorParams {
  AdafactorArgs args;
  const std::vector<AfSlot>* slots;
  int64_t chunk, group;
  int max_slots, max_blocks;  // 0: the table's capacity, the grid's limit
};

// Copies the slots with blocks in launch sequence `kind` into tables of at most `cap` slots and
// `max_blocks` blocks (a param may span launches, as in Note [launch plans]), running each.
template <class K, class Runner>
void af_launches(Runner& r, const Job& job, const AdafactorParams& p, int kind, K& k) {
  auto& t = k.t;
  const int cap = p.max_slots > 0 && p.max_slots < t.kSlots ? p.max_slots : t.kSlots;
  const int64_t max_blocks = p.max_blocks > 0 ? p.max_blocks : kMaxGridBlocks;
  t.chunk = p.chunk;
  t.group = p.group;
  t.num_slots = 0;
  t.num_blocks = 0;
  auto flush = [&] {
    if (t.num_slots > 0) r.blocks(job, k, t.num_blocks);
    t.num_slots = 0;
    t.num_blocks = 0;
  };
  for (const AfSlot& s : *p.slots) {
    for (int64_t done = 0; done < s.blocks[kind];) {
      if (t.num_slots == cap || t.num_blocks == max_blocks) flush();
      const int64_t room = max_blocks - t.num_blocks;
      const int64_t take = s.blocks[kind] - done < room ? s.blocks[kind] - done : room;
      const int i = t.num_slots++;
      t.p[i] = s.p;
      t.g[i] = s.g;
      t.r[i] = s.r;
      t.c[i] = s.c;
      t.step[i] = s.step;
      t.rows[i] = s.rows;
      t.cols[i] = s.cols;
      t.batches[i] = s.batches;
      t.tile_rows[i] = s.tile_rows;
      t.first_tile[i] = s.first_tile;
      t.col_off[i] = s.col_off;
      t.row_off[i] = s.row_off;
      t.rpart_off[i] = s.rpart_off;
      t.first_local[i] = done;
      t.block_start[i] = t.num_blocks;
      t.index[i] = s.index;
      t.flags[i] = s.flags;
      t.num_blocks += static_cast<int32_t>(take);
      done += take;
    }
  }
  flush();
}

// The five launch sequences, for the params' dtype and the table variant of the job; the
// runner launches (or simulates) one kernel object over a number of blocks (runner.blocks).
template <>
struct OpKernels<ops::adafactor_> {
  using Params = AdafactorParams;

  template <typename T, int ARG_BYTES, class Runner>
  static void run_with(Runner& r, const Job& job, const Params& p) {
    auto seq = [&](auto kind) {
      using K = AdafactorKernel<T, decltype(kind)::value, ARG_BYTES>;
      std::vector<K> proto(1);  // the table is large: on the heap
      proto[0].a = p.args;
      af_launches(r, job, p, decltype(kind)::value, proto[0]);
    };
    seq(std::integral_constant<int, kAfSums>{});
    seq(std::integral_constant<int, kAfStats>{});
    seq(std::integral_constant<int, kAfNorm>{});
    seq(std::integral_constant<int, kAfFinish>{});
    seq(std::integral_constant<int, kAfApply>{});
  }

  template <class Runner>
  static void run(Runner& r, const Job& job, const Params& p) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, job.dtype, "fusedopt_adafactor_cuda", [&] {
          with_arg_bytes<Runner>(
              job, [&](auto bytes) { run_with<scalar_t, decltype(bytes)::value>(r, job, p); });
        });
  }
};

}  // namespace fusedopt::cuda
