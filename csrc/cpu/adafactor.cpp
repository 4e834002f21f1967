// Adafactor on the CPU (torch.optim.Adafactor's for-loop, torch/optim/_adafactor.py), math from
// fusedopt/math.h.
//
// Note [Adafactor passes]
// A matrix's (a param of 2 or more dims, [..., m, n]) update needs the row and column means of
// g^2 over the whole matrix before any element's variance estimate is known, and the RMS of the
// whole update before any element of the param may change. So three passes over each param
// (each cut into tasks: ranges of rows of one matrix, or of a vector):
//   pass 1  sum p^2, the row sums and the column sums of g^2          read p, g
//   (host)  row_var, col_var lerped toward the means; alpha, mean(row_var); the factors
//           a = rsqrt(row_var / mean(row_var)) per row, b = rsqrt(col_var) per column  O(m + n)
//   pass 2  u = g min(a b, rsqrt(eps1^2)), sum u^2                      read g
//   (host)  the clipping: -alpha / max(1, RMS(u)/d)
//   pass 3  p = p (1 - lr wd) - alpha' u, u recomputed                  read p, g; write p
// Each thread steps whole params, all three passes of one before the next (largest first, the
// next param to whichever thread is free): passes 2 and 3 find p and g in the cache pass 1 left
// them in (the largest GPT matrix, 8192 x 384, is 25 MB of p and g), the threads need no
// barrier between the passes, and while one streams a param from memory in pass 1 the other
// computes. u is computed factored (Note [factored direction] in fusedopt/math.h): two
// products and a min per element, no division, so pass 3 recomputes it rather than reading it
// from a buffer that pass 2 would write. When u took a division, a square root and a reciprocal
// per element it was computed once and stored; now storing it costs more than it saves (one
// thread, GPT-like list, CPU ms per step in passes 2 + 3: 11.5 + 9.8 stored, 8.0 + 11.1
// recomputed; benchmarks/README.md).
// Every pass requests its lines ahead (Note [prefetch ahead]): at one thread on the GPT-like
// list that cut pass 1 by a fifth and pass 2 by a fourth. Pass 3 steps the param's tasks last
// to first, so it starts on the g that pass 2 read last, still in the cache.
// DRAM: p and g read once and p written once, 12 B per fp32 parameter; passes 2 and 3 read
// another 12 B from the cache (with u stored: 16). A param larger than kPrivateMax elements,
// or than a thread's share of the call, is stepped by all threads pass by pass instead:
// 2 S + S + 3 S from memory (24 B per fp32 parameter).
// A vector ([n] or 0-d) keeps a variance v: pass 1 also updates v and computes u (torch's
// rsqrt of v, a division per element) and sum u^2 (read p, g, v; write v), u kept in a buffer
// of the thread's for pass 3 (recomputed from v where the vector is stepped pass by pass).
// torch's foreach path for a matrix: the param's norm (S), the weight decay (2S), the two
// vector_norms (2S), the outer product r @ c (S), div_, clamp_, rsqrt_ (2S each), mul_ by g
// (3S), the update's norm (S), mul_ by alpha (2S), add_ to the param (3S): 21*S.
// Sums are in fp64 from per-row fp32/opmath lanes; a matrix's column sums are fp64 partials per
// task combined in task order, tasks cut at fixed rows, so the result depends neither on the
// number of threads nor on which thread steps a param, nor on the path (Note [fixed-order
// reductions]).
#include "../common/adafactor.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "fusedopt/math.h"
#include "isa.h"
#include "ops.h"

namespace fusedopt::cpu {
namespace {

constexpr int kLanes = 16;

// Pass 1 over rows [0, rows) of a matrix (row length n): row sums of g^2 into rowsum, column
// sums added to col, sum of p^2 added to *pp.
template <typename T, typename O>
struct SumsBody {
  FUSEDOPT_INLINE static void run(const T* __restrict p, const T* __restrict g, int64_t rows,
                                  int64_t n, O s, double* __restrict rowsum, double* __restrict col,
                                  double* __restrict pp) {
    double ppd = 0;
    const int64_t ahead_end = rows * n >= kPrefetchMin ? rows * n - kPrefetchAhead : 0;
    for (int64_t i = 0; i < rows; ++i) {
      const T* __restrict pr = p + i * n;
      const T* __restrict gr = g + i * n;
      O ra[kLanes] = {};
      O pa[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        if (i * n + j + kLanes <= ahead_end) {
          prefetch_lines<kLanes>(pr, j + kPrefetchAhead);
          prefetch_lines<kLanes>(gr, j + kPrefetchAhead);
        }
        for (int k = 0; k < kLanes; ++k) {
          const O gk = static_cast<O>(gr[j + k]) * s;
          const O gg = gk * gk;
          ra[k] += gg;
          col[j + k] += static_cast<double>(gg);
          const O pk = static_cast<O>(pr[j + k]);
          pa[k] += pk * pk;
        }
      }
      for (; j < n; ++j) {
        const O gk = static_cast<O>(gr[j]) * s;
        const O gg = gk * gk;
        ra[0] += gg;
        col[j] += static_cast<double>(gg);
        const O pk = static_cast<O>(pr[j]);
        pa[0] += pk * pk;
      }
      double rs = 0, ps = 0;
      for (int k = 0; k < kLanes; ++k) {
        rs += static_cast<double>(ra[k]);
        ps += static_cast<double>(pa[k]);
      }
      rowsum[i] = rs;
      ppd += ps;
    }
    *pp += ppd;
  }
};

// Pass 2 over rows of a matrix: sum of u^2 added to *uu. a: the rows' factors, b: the columns'
// (Note [factored direction] in fusedopt/math.h).
template <typename T, typename O>
struct DirectionBody {
  FUSEDOPT_INLINE static void run(const T* __restrict g, int64_t rows, int64_t n,
                                  const O* __restrict a, const O* __restrict b, O gs, O cap,
                                  double* __restrict uu) {
    double total = 0;
    const int64_t ahead_end = rows * n >= kPrefetchMin ? rows * n - kPrefetchAhead : 0;
    for (int64_t i = 0; i < rows; ++i) {
      const T* __restrict gr = g + i * n;
      const O ai = a[i];
      O ua[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        if (i * n + j + kLanes <= ahead_end) {
          prefetch_lines<kLanes>(gr, j + kPrefetchAhead);
        }
        // Kept a loop: GCC would unroll this short body whole and then leave it scalar.
#pragma GCC unroll 1
        for (int k = 0; k < kLanes; ++k) {
          const O u =
              adafactor_factored_direction(ai, b[j + k], static_cast<O>(gr[j + k]) * gs, cap);
          ua[k] += u * u;
        }
      }
      for (; j < n; ++j) {
        const O u = adafactor_factored_direction(ai, b[j], static_cast<O>(gr[j]) * gs, cap);
        ua[0] += u * u;
      }
      for (int k = 0; k < kLanes; ++k) total += static_cast<double>(ua[k]);
    }
    *uu += total;
  }
};

// Pass 3 of a vector: p = p (1 - lr wd) + neg_step u, u stored by pass 1.
template <typename T, typename O>
struct ApplyBody {
  FUSEDOPT_INLINE static void run(T* __restrict p, const O* __restrict u, int64_t n, O decay,
                                  O neg_step) {
    constexpr int64_t kBlock = 32;
    int64_t j0 = 0;
    for (; j0 + kBlock <= n; j0 += kBlock) {
      if (n >= kPrefetchMin && j0 + kPrefetchAhead + kBlock <= n) {
        prefetch_lines<kBlock>(p, j0 + kPrefetchAhead);
        prefetch_lines<kBlock>(u, j0 + kPrefetchAhead);
      }
      for (int64_t j = j0; j < j0 + kBlock; ++j) element(p, u, j, decay, neg_step);
    }
    for (int64_t j = j0; j < n; ++j) element(p, u, j, decay, neg_step);
  }

  FUSEDOPT_INLINE static void element(T* __restrict p, const O* __restrict u, int64_t j, O decay,
                                      O neg_step) {
    O pj = static_cast<O>(p[j]);
    adafactor_apply(pj, u[j], decay, neg_step);
    p[j] = static_cast<T>(pj);
  }
};

// Pass 3 of a matrix: u recomputed from g and the factors.
template <typename T, typename O>
struct RecomputeBody {
  FUSEDOPT_INLINE static void run(T* __restrict p, const T* __restrict g, int64_t rows, int64_t n,
                                  const O* __restrict a, const O* __restrict b, O gs, O cap,
                                  O decay, O neg_step) {
    const int64_t ahead_end = rows * n >= kPrefetchMin ? rows * n - kPrefetchAhead : 0;
    for (int64_t i = 0; i < rows; ++i) {
      T* __restrict pr = p + i * n;
      const T* __restrict gr = g + i * n;
      const O ai = a[i];
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        if (i * n + j + kLanes <= ahead_end) {
          prefetch_lines<kLanes>(pr, j + kPrefetchAhead);
          prefetch_lines<kLanes>(gr, j + kPrefetchAhead);
        }
#pragma GCC unroll 1  // as in DirectionBody
        for (int k = 0; k < kLanes; ++k) element(pr, gr, ai, b, j + k, gs, cap, decay, neg_step);
      }
      for (; j < n; ++j) element(pr, gr, ai, b, j, gs, cap, decay, neg_step);
    }
  }

  FUSEDOPT_INLINE static void element(T* __restrict pr, const T* __restrict gr, O ai,
                                      const O* __restrict b, int64_t j, O gs, O cap, O decay,
                                      O neg_step) {
    const O u = adafactor_factored_direction(ai, b[j], static_cast<O>(gr[j]) * gs, cap);
    O pj = static_cast<O>(pr[j]);
    adafactor_apply(pj, u, decay, neg_step);
    pr[j] = static_cast<T>(pj);
  }
};

template <typename T, typename O>
struct VectorRecomputeBody {
  FUSEDOPT_INLINE static void run(T* __restrict p, const T* __restrict g, const T* __restrict v,
                                  int64_t n, O gs, O eps1_sq, O decay, O neg_step) {
    for (int64_t j = 0; j < n; ++j) {
      const O u = adafactor_direction(static_cast<O>(v[j]), static_cast<O>(g[j]) * gs, eps1_sq);
      O pj = static_cast<O>(p[j]);
      adafactor_apply(pj, u, decay, neg_step);
      p[j] = static_cast<T>(pj);
    }
  }
};

// Pass 1 of a vector: v updated (and stored: pass 3 reads it back where it recomputes u, as
// torch's clone does), sums of p^2 and u^2 added to *pp, *uu; with kStore, u (with its update's
// sign: u^2 is the same for either) stored in out.
template <typename T, typename O, bool kStore>
struct VectorBody {
  FUSEDOPT_INLINE static void element(const T* __restrict p, const T* __restrict g, T* __restrict v,
                                      O* __restrict out, int64_t e, O gs, O w, O eps1_sq, O& pa,
                                      O& ua) {
    const O gk = static_cast<O>(g[e]) * gs;
    const T vt = static_cast<T>(lerp_(static_cast<O>(v[e]), gk * gk, w));
    v[e] = vt;
    const O u = adafactor_direction(static_cast<O>(vt), gk, eps1_sq);
    if constexpr (kStore) out[e] = u;
    ua += u * u;
    const O pk = static_cast<O>(p[e]);
    pa += pk * pk;
  }

  FUSEDOPT_INLINE static void run(const T* __restrict p, const T* __restrict g, T* __restrict v,
                                  O* __restrict out, int64_t n, O gs, O w, O eps1_sq,
                                  double* __restrict pp, double* __restrict uu) {
    O pa[kLanes] = {};
    O ua[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        element(p, g, v, out, j + k, gs, w, eps1_sq, pa[k], ua[k]);
      }
    }
    for (; j < n; ++j) element(p, g, v, out, j, gs, w, eps1_sq, pa[0], ua[0]);
    double ps = 0, us = 0;
    for (int k = 0; k < kLanes; ++k) {
      ps += static_cast<double>(pa[k]);
      us += static_cast<double>(ua[k]);
    }
    *pp += ps;
    *uu += us;
  }
};

// One param of the call, its tensors dense (staged copies where they were not).
struct Slot {
  at::Tensor p, g, r, c, v;  // r, c: matrices; v: vectors
  bool factored = false;
  int64_t batches = 1, rows = 1, cols = 1, numel = 0;
  double w = 0, rho = 0, pp = 0, uu = 0, neg_step = 0;
  std::vector<double> rowsum, colsum;  // batches x rows, batches x cols
  size_t task0 = 0, task1 = 0;         // its tasks
};

// A range of one param: rows [lo, hi) of batch `batch` of a matrix, or elements of a vector.
struct Task {
  size_t slot;
  int64_t batch, lo, hi;
  size_t col;     // offset of the task's column sums in the partials
  int64_t first;  // its first element in the param
};

// A param of at most this many elements is stepped whole by one thread (Note [Adafactor
// passes]), a vector's u kept in a buffer of that thread's.
constexpr int64_t kPrivateMax = int64_t{1} << 22;

// A buffer of n elements of the calling thread's, kept between calls (a fresh one would fault its
// pages in again every step): at most kPrivateMax elements a thread.
template <typename O>
O* thread_buffer(int64_t n) {
  thread_local std::vector<O> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

template <typename T>
class Stepper {
  using O = at::opmath_type<T>;

 public:
  Stepper(std::vector<Slot>& slots, const ops::adafactor_::Args& a, double lr, double inv_scale)
      : slots_(slots),
        a_(a),
        isa_(current_isa()),
        s_(static_cast<O>(inv_scale)),
        gs_(static_cast<O>(a.maximize ? -inv_scale : inv_scale)),
        eps1_sq_(static_cast<O>(a.eps1 * a.eps1)),
        cap_(adafactor_col_factor(eps1_sq_)),
        decay_(static_cast<O>(a.weight_decay != 0 ? 1 - lr * a.weight_decay : 1.0)),
        rfac_(slots.size()),
        cfac_(slots.size()) {
    size_t col_total = 0;
    for (size_t k = 0; k < slots.size(); ++k) {
      Slot& sl = slots[k];
      sl.task0 = tasks_.size();
      if (sl.factored && sl.numel > 0) {
        // Fixed cuts: about kGrainSize elements a task, at most 32 tasks a matrix (their
        // column partials stay small).
        const int64_t by_grain = (kGrainSize + sl.cols - 1) / sl.cols;
        const int64_t rows_per = std::max<int64_t>({1, by_grain, (sl.rows + 31) / 32});
        for (int64_t b = 0; b < sl.batches; ++b) {
          for (int64_t lo = 0; lo < sl.rows; lo += rows_per) {
            const int64_t hi = std::min(sl.rows, lo + rows_per);
            tasks_.push_back({k, b, lo, hi, col_total, (b * sl.rows + lo) * sl.cols});
            col_total += static_cast<size_t>(sl.cols);
          }
        }
      } else {
        for (int64_t lo = 0; lo < sl.numel; lo += kGrainSize) {
          tasks_.push_back({k, 0, lo, std::min(sl.numel, lo + kGrainSize), 0, lo});
        }
      }
      sl.task1 = tasks_.size();
    }
    cols_.assign(col_total, 0.0);
    pp_.assign(tasks_.size(), 0.0);
    uu_.assign(tasks_.size(), 0.0);
  }

  void run() {
    int64_t total = 0;
    for (const Slot& sl : slots_) total += sl.numel;
    const int64_t threads = at::get_num_threads();
    // Whole params to single threads, largest first; a param larger than a thread's share or
    // kPrivateMax is stepped by all threads together, pass by pass.
    std::vector<size_t> own, shared;
    for (size_t k = 0; k < slots_.size(); ++k) {
      const int64_t n = slots_[k].numel;
      if (n == 0) continue;
      (n <= kPrivateMax && n * threads <= total ? own : shared).push_back(k);
    }
    std::stable_sort(own.begin(), own.end(),
                     [&](size_t x, size_t y) { return slots_[x].numel > slots_[y].numel; });
    for (size_t k : shared) step_shared(k);
    std::atomic<size_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (size_t i = next++; i < own.size(); i = next++) step_own(own[i]);
    });
  }

 private:
  void pass1(size_t ti, O* u) {
    const Task& t = tasks_[ti];
    Slot& sl = slots_[t.slot];
    if (sl.factored) {
      run_isa<SumsBody<T, O>>(isa_, sl.p.const_data_ptr<T>() + t.first,
                              sl.g.const_data_ptr<T>() + t.first, t.hi - t.lo, sl.cols, s_,
                              sl.rowsum.data() + t.batch * sl.rows + t.lo, cols_.data() + t.col,
                              pp_.data() + ti);
    } else if (u != nullptr) {
      run_isa<VectorBody<T, O, true>>(isa_, sl.p.const_data_ptr<T>() + t.lo,
                                      sl.g.const_data_ptr<T>() + t.lo, sl.v.data_ptr<T>() + t.lo,
                                      u + t.lo, t.hi - t.lo, gs_, static_cast<O>(sl.w), eps1_sq_,
                                      pp_.data() + ti, uu_.data() + ti);
    } else {
      run_isa<VectorBody<T, O, false>>(isa_, sl.p.const_data_ptr<T>() + t.lo,
                                       sl.g.const_data_ptr<T>() + t.lo, sl.v.data_ptr<T>() + t.lo,
                                       nullptr, t.hi - t.lo, gs_, static_cast<O>(sl.w), eps1_sq_,
                                       pp_.data() + ti, uu_.data() + ti);
    }
  }

  // The partials of pass 1 combined in task order; a matrix's statistics and their factors.
  void statistics(size_t k) {
    Slot& sl = slots_[k];
    for (size_t ti = sl.task0; ti < sl.task1; ++ti) {
      sl.pp += pp_[ti];
      if (!sl.factored) {
        sl.uu += uu_[ti];
      } else {
        double* dst = sl.colsum.data() + tasks_[ti].batch * sl.cols;
        for (int64_t j = 0; j < sl.cols; ++j) dst[j] += cols_[tasks_[ti].col + j];
      }
    }
    if (!sl.factored) return;
    const O w = static_cast<O>(sl.w);
    T* r = sl.r.data_ptr<T>();
    T* c = sl.c.data_ptr<T>();
    std::vector<O>& ra = rfac_[k];
    std::vector<O>& cb = cfac_[k];
    ra.resize(static_cast<size_t>(sl.batches * sl.rows));
    cb.resize(static_cast<size_t>(sl.batches * sl.cols));
    for (int64_t b = 0; b < sl.batches; ++b) {
      double rsum = 0;
      for (int64_t i = 0; i < sl.rows; ++i) {
        const int64_t e = b * sl.rows + i;
        const O mean = static_cast<O>(sl.rowsum[e] / static_cast<double>(sl.cols));
        r[e] = static_cast<T>(lerp_(static_cast<O>(r[e]), mean, w));
        rsum += static_cast<double>(static_cast<O>(r[e]));
      }
      for (int64_t j = 0; j < sl.cols; ++j) {
        const int64_t e = b * sl.cols + j;
        const O mean = static_cast<O>(sl.colsum[e] / static_cast<double>(sl.rows));
        c[e] = static_cast<T>(lerp_(static_cast<O>(c[e]), mean, w));
        cb[e] = adafactor_col_factor(static_cast<O>(c[e]));
      }
      const O rm = static_cast<O>(rsum / static_cast<double>(sl.rows));
      const O e1 = static_cast<O>(a_.eps1);
      const O rmean = rm < e1 ? e1 : rm;  // clamp_(min=): NaN stays NaN
      for (int64_t i = 0; i < sl.rows; ++i) {
        const int64_t e = b * sl.rows + i;
        ra[e] = adafactor_row_factor(static_cast<O>(r[e]), rmean);
      }
    }
  }

  // Pass 2 of a matrix's task: sum u^2.
  void pass2(size_t ti) {
    const Task& t = tasks_[ti];
    Slot& sl = slots_[t.slot];
    if (!sl.factored) return;
    const T* g = sl.g.const_data_ptr<T>() + t.first;
    const O* a = rfac_[t.slot].data() + t.batch * sl.rows + t.lo;
    const O* b = cfac_[t.slot].data() + t.batch * sl.cols;
    run_isa<DirectionBody<T, O>>(isa_, g, t.hi - t.lo, sl.cols, a, b, gs_, cap_, uu_.data() + ti);
  }

  void clip(Slot& sl) {
    if (sl.factored) {
      for (size_t ti = sl.task0; ti < sl.task1; ++ti) sl.uu += uu_[ti];
    }
    // torch's Python floats: max(eps2, RMS(p)) * rho and max(1, RMS(u) / d)
    const double sq_n = std::sqrt(static_cast<double>(sl.numel));
    const double rms = std::sqrt(sl.pp) / sq_n;
    const double alpha = (rms > a_.eps2 ? rms : a_.eps2) * sl.rho;
    const double ratio = std::sqrt(sl.uu) / (sq_n * a_.d);
    sl.neg_step = -alpha / (ratio > 1.0 ? ratio : 1.0);
  }

  void pass3(size_t ti, const O* u) {
    const Task& t = tasks_[ti];
    Slot& sl = slots_[t.slot];
    const O neg_step = static_cast<O>(sl.neg_step);
    T* p = sl.p.data_ptr<T>() + t.first;
    if (sl.factored) {
      run_isa<RecomputeBody<T, O>>(isa_, p, sl.g.const_data_ptr<T>() + t.first, t.hi - t.lo,
                                   sl.cols, rfac_[t.slot].data() + t.batch * sl.rows + t.lo,
                                   cfac_[t.slot].data() + t.batch * sl.cols, gs_, cap_, decay_,
                                   neg_step);
    } else if (u != nullptr) {
      run_isa<ApplyBody<T, O>>(isa_, p, u + t.first, t.hi - t.lo, decay_, neg_step);
    } else {
      run_isa<VectorRecomputeBody<T, O>>(isa_, p, sl.g.const_data_ptr<T>() + t.lo,
                                         sl.v.const_data_ptr<T>() + t.lo, t.hi - t.lo, gs_,
                                         eps1_sq_, decay_, neg_step);
    }
  }

  // All passes of one param on this thread; a vector's u kept in its buffer, a matrix's
  // recomputed in pass 3.
  void step_own(size_t k) {
    Slot& sl = slots_[k];
    O* u = sl.factored ? nullptr : thread_buffer<O>(sl.numel);
    for (size_t ti = sl.task0; ti < sl.task1; ++ti) pass1(ti, u);
    statistics(k);
    for (size_t ti = sl.task0; ti < sl.task1; ++ti) pass2(ti);
    clip(sl);
    for (size_t ti = sl.task1; ti-- > sl.task0;) pass3(ti, u);  // elementwise: any order
  }

  // Each pass of one param over all threads, u recomputed in pass 3.
  void step_shared(size_t k) {
    Slot& sl = slots_[k];
    auto each = [&](auto&& fn) {
      at::parallel_for(static_cast<int64_t>(sl.task0), static_cast<int64_t>(sl.task1), 1,
                       [&](int64_t b, int64_t e) {
                         for (int64_t t = b; t < e; ++t) fn(static_cast<size_t>(t));
                       });
    };
    each([&](size_t ti) { pass1(ti, nullptr); });
    statistics(k);
    each([&](size_t ti) { pass2(ti); });
    clip(sl);
    each([&](size_t ti) { pass3(ti, nullptr); });
  }

  std::vector<Slot>& slots_;
  const ops::adafactor_::Args& a_;
  const Isa isa_;
  const O s_, gs_, eps1_sq_, cap_, decay_;
  std::vector<Task> tasks_;
  std::vector<std::vector<O>> rfac_, cfac_;  // per matrix: its rows' and columns' factors
  std::vector<double> cols_, pp_, uu_;
};

// A dense tensor standing for t: t itself, or a copy that `back` copies into t after the step.
at::Tensor dense(const at::Tensor& t, std::vector<std::pair<at::Tensor, at::Tensor>>* back) {
  if (t.is_contiguous()) return t;
  at::Tensor d = t.contiguous();
  if (back != nullptr) back->emplace_back(t, d);
  return d;
}

}  // namespace

void adafactor_(const ops::adafactor_::Args& a) {
  const char* op = op_label<ops::adafactor_>();
  const size_t n = a.params.size();
  check_adafactor_args(a, op);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(a.params[i].device().is_cpu(), op, ": params[", i, "] is on ", a.params[i].device(),
                ", not the CPU");
  }
  check_steps(op, a.state_steps, n);
  const double lr = scalar_value(a.lr, "lr");
  const double inv_scale = inv_grad_scale(a.grad_scale);
  if (skip_for_found_inf(a.found_inf) || n == 0) return;
  const std::vector<double> steps = increment_steps(a.state_steps);

  std::vector<std::pair<at::Tensor, at::Tensor>> back;
  std::vector<Slot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    Slot& sl = slots[i];
    const at::Tensor& p = a.params[i];
    sl.p = dense(p, &back);
    sl.g = dense(a.grads[i], nullptr);
    sl.numel = p.numel();
    sl.factored = p.dim() >= 2;
    sl.w = std::pow(steps[i], a.beta2_decay);
    sl.rho = std::min(lr, 1.0 / std::pow(steps[i], 0.5));
    if (sl.factored) {
      sl.rows = p.size(-2);
      sl.cols = p.size(-1);
      sl.batches = 1;
      for (int64_t k = 0; k + 2 < p.dim(); ++k) sl.batches *= p.size(k);
      sl.r = dense(a.row_vars[i], &back);
      sl.c = dense(a.col_vars[i], &back);
      sl.rowsum.assign(static_cast<size_t>(sl.batches * sl.rows), 0.0);
      sl.colsum.assign(static_cast<size_t>(sl.batches * sl.cols), 0.0);
    } else {
      sl.v = dense(a.variances[i], &back);
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.params[0].scalar_type(), "adafactor_",
                                  [&] { Stepper<scalar_t>(slots, a, lr, inv_scale).run(); });
  for (auto& [dst, src] : back) dst.copy_(src);
}

}  // namespace fusedopt::cpu
