// Adafactor on the CPU (torch.optim.Adafactor's for-loop, torch/optim/_adafactor.py), math from
// fusedopt/math.h.
//
// Note [Adafactor passes]
// A matrix's (a param of 2 or more dims, [..., m, n]) update needs the row and column means of
// g^2 over the whole matrix before any element's variance estimate is known, and the RMS of the
// whole update before any element of the param may change. So three parallel passes over all
// params of the call (each a range of rows of one matrix per task, or a range of a vector):
//   pass 1  sum p^2, the row sums and the column sums of g^2         read p, g          2*S
//   (host)  row_var, col_var lerped toward the means; alpha, mean(row_var)   O(m + n)
//   pass 2  sum u^2, u = rsqrt(max((r c)/mean(r), eps1^2)) g          read g             S
//   (host)  the clipping: -alpha / max(1, RMS(u)/d)
//   pass 3  p = p (1 - lr wd) - alpha' u, u recomputed                read p, g; write p 3*S
// 6*S per matrix element: 24 B per fp32 parameter, with no temporary of the param's size (u is
// recomputed, as cheap as storing and reloading it). A vector ([n] or 0-d) keeps a variance v:
// pass 1 also updates v and sums u^2 (read p, g, v; write v), pass 3 reads v: 2 passes, 8*S.
// torch's foreach path for a matrix: the param's norm (S), the weight decay (2S), the two
// vector_norms (2S), the outer product r @ c (S), div_, clamp_, rsqrt_ (2S each), mul_ by g
// (3S), the update's norm (S), mul_ by alpha (2S), add_ to the param (3S): 21*S.
// Sums are in fp64 from per-row fp32/opmath lanes; the column sums of each task are fp64
// partials combined in task order, tasks cut at fixed rows, so the result does not depend on the
// number of threads (Note [fixed-order reductions]).
#include "../common/adafactor.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
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
    for (int64_t i = 0; i < rows; ++i) {
      const T* __restrict pr = p + i * n;
      const T* __restrict gr = g + i * n;
      O ra[kLanes] = {};
      O pa[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
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

// Pass 2 over rows of a matrix: sum of u^2 added to *uu.
template <typename T, typename O>
struct NormBody {
  FUSEDOPT_INLINE static void run(const T* __restrict g, int64_t rows, int64_t n,
                                  const T* __restrict r, const T* __restrict c, O rmean, O s,
                                  O eps1_sq, double* __restrict uu) {
    double total = 0;
    for (int64_t i = 0; i < rows; ++i) {
      const T* __restrict gr = g + i * n;
      const O ri = static_cast<O>(r[i]);
      O ua[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) {
          const O v = adafactor_factored(ri, static_cast<O>(c[j + k]), rmean);
          const O u = adafactor_direction(v, static_cast<O>(gr[j + k]) * s, eps1_sq);
          ua[k] += u * u;
        }
      }
      for (; j < n; ++j) {
        const O v = adafactor_factored(ri, static_cast<O>(c[j]), rmean);
        const O u = adafactor_direction(v, static_cast<O>(gr[j]) * s, eps1_sq);
        ua[0] += u * u;
      }
      for (int k = 0; k < kLanes; ++k) total += static_cast<double>(ua[k]);
    }
    *uu += total;
  }
};

// Pass 3 over rows of a matrix.
template <typename T, typename O>
struct ApplyBody {
  FUSEDOPT_INLINE static void run(T* __restrict p, const T* __restrict g, int64_t rows, int64_t n,
                                  const T* __restrict r, const T* __restrict c, O rmean, O s,
                                  O eps1_sq, O decay, O neg_step) {
    for (int64_t i = 0; i < rows; ++i) {
      T* __restrict pr = p + i * n;
      const T* __restrict gr = g + i * n;
      const O ri = static_cast<O>(r[i]);
      for (int64_t j = 0; j < n; ++j) {
        const O v = adafactor_factored(ri, static_cast<O>(c[j]), rmean);
        const O u = adafactor_direction(v, static_cast<O>(gr[j]) * s, eps1_sq);
        O pj = static_cast<O>(pr[j]);
        adafactor_apply(pj, u, decay, neg_step);
        pr[j] = static_cast<T>(pj);
      }
    }
  }
};

// Pass 1 of a vector: v updated (and stored: the update reads it back, as torch's clone
// does), sums of p^2 and u^2 added to *pp, *uu.
template <typename T, typename O>
struct VectorBody {
  FUSEDOPT_INLINE static void element(const T* __restrict p, const T* __restrict g, T* __restrict v,
                                      int64_t e, O s, O w, O eps1_sq, O& pa, O& ua) {
    const O gk = static_cast<O>(g[e]) * s;
    const T vt = static_cast<T>(lerp_(static_cast<O>(v[e]), gk * gk, w));
    v[e] = vt;
    const O u = adafactor_direction(static_cast<O>(vt), gk, eps1_sq);
    ua += u * u;
    const O pk = static_cast<O>(p[e]);
    pa += pk * pk;
  }

  FUSEDOPT_INLINE static void run(const T* __restrict p, const T* __restrict g, T* __restrict v,
                                  int64_t n, O s, O w, O eps1_sq, double* __restrict pp,
                                  double* __restrict uu) {
    O pa[kLanes] = {};
    O ua[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int k = 0; k < kLanes; ++k) element(p, g, v, j + k, s, w, eps1_sq, pa[k], ua[k]);
    }
    for (; j < n; ++j) element(p, g, v, j, s, w, eps1_sq, pa[0], ua[0]);
    double ps = 0, us = 0;
    for (int k = 0; k < kLanes; ++k) {
      ps += static_cast<double>(pa[k]);
      us += static_cast<double>(ua[k]);
    }
    *pp += ps;
    *uu += us;
  }
};

template <typename T, typename O>
struct VectorApplyBody {
  FUSEDOPT_INLINE static void run(T* __restrict p, const T* __restrict g, const T* __restrict v,
                                  int64_t n, O s, O eps1_sq, O decay, O neg_step) {
    for (int64_t j = 0; j < n; ++j) {
      const O u = adafactor_direction(static_cast<O>(v[j]), static_cast<O>(g[j]) * s, eps1_sq);
      O pj = static_cast<O>(p[j]);
      adafactor_apply(pj, u, decay, neg_step);
      p[j] = static_cast<T>(pj);
    }
  }
};

// One param of the call, its tensors dense (staged copies where they were not).
struct Slot {
  at::Tensor p, g, r, c, v;  // r, c: matrices; v: vectors
  bool factored = false;
  int64_t batches = 1, rows = 1, cols = 1, numel = 0;
  double w = 0, rho = 0, pp = 0, uu = 0, neg_step = 0;
  std::vector<double> rowsum, colsum;  // batches x rows, batches x cols
  std::vector<double> rmean;           // per batch: max(mean(row_var), eps1)
};

// A range of one param: rows [lo, hi) of batch `batch` of a matrix, or elements of a vector.
struct Task {
  size_t slot;
  int64_t batch, lo, hi;
  size_t col;  // offset of the task's column sums in the partials
};

template <typename T>
void run(std::vector<Slot>& slots, const ops::adafactor_::Args& a, double lr, double inv_scale) {
  using O = at::opmath_type<T>;
  const Isa isa = current_isa();
  const O s = static_cast<O>(inv_scale);
  const O gs = static_cast<O>(a.maximize ? -inv_scale : inv_scale);
  const O eps1_sq = static_cast<O>(a.eps1 * a.eps1);
  const O decay = static_cast<O>(a.weight_decay != 0 ? 1 - lr * a.weight_decay : 1.0);
  std::vector<Task> tasks;
  size_t col_total = 0;
  for (size_t k = 0; k < slots.size(); ++k) {
    Slot& sl = slots[k];
    if (sl.numel == 0) continue;
    if (sl.factored) {
      // Fixed cuts: about kGrainSize elements a task, at most 32 tasks a matrix (their column
      // partials stay small).
      const int64_t by_grain = (kGrainSize + sl.cols - 1) / sl.cols;
      const int64_t rows_per = std::max<int64_t>({1, by_grain, (sl.rows + 31) / 32});
      for (int64_t b = 0; b < sl.batches; ++b) {
        for (int64_t lo = 0; lo < sl.rows; lo += rows_per) {
          tasks.push_back({k, b, lo, std::min(sl.rows, lo + rows_per), col_total});
          col_total += static_cast<size_t>(sl.cols);
        }
      }
    } else {
      for (int64_t lo = 0; lo < sl.numel; lo += kGrainSize) {
        tasks.push_back({k, 0, lo, std::min(sl.numel, lo + kGrainSize), 0});
      }
    }
  }
  const int64_t nt = static_cast<int64_t>(tasks.size());
  std::vector<double> cols(col_total, 0.0), pp(tasks.size(), 0.0), uu(tasks.size(), 0.0);
  auto each = [&](auto&& fn) {
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) fn(tasks[t], slots[tasks[t].slot], t);
    });
  };
  // pass 1
  each([&](const Task& t, Slot& sl, int64_t ti) {
    if (sl.factored) {
      const int64_t off = (t.batch * sl.rows + t.lo) * sl.cols;
      run_isa<SumsBody<T, O>>(isa, sl.p.const_data_ptr<T>() + off, sl.g.const_data_ptr<T>() + off,
                              t.hi - t.lo, sl.cols, s, sl.rowsum.data() + t.batch * sl.rows + t.lo,
                              cols.data() + t.col, pp.data() + ti);
    } else {
      run_isa<VectorBody<T, O>>(isa, sl.p.const_data_ptr<T>() + t.lo,
                                sl.g.const_data_ptr<T>() + t.lo, sl.v.data_ptr<T>() + t.lo,
                                t.hi - t.lo, s, static_cast<O>(sl.w), eps1_sq, pp.data() + ti,
                                uu.data() + ti);
    }
  });
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    Slot& sl = slots[tasks[ti].slot];
    sl.pp += pp[ti];
    if (!sl.factored) {
      sl.uu += uu[ti];
    } else {
      double* dst = sl.colsum.data() + tasks[ti].batch * sl.cols;
      for (int64_t j = 0; j < sl.cols; ++j) dst[j] += cols[tasks[ti].col + j];
    }
  }
  // the factored statistics (a param with no elements only counts its step)
  for (Slot& sl : slots) {
    if (!sl.factored || sl.numel == 0) continue;
    const O w = static_cast<O>(sl.w);
    T* r = sl.r.data_ptr<T>();
    T* c = sl.c.data_ptr<T>();
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
      }
      const O rm = static_cast<O>(rsum / static_cast<double>(sl.rows));
      const O e1 = static_cast<O>(a.eps1);
      sl.rmean[b] = static_cast<double>(rm < e1 ? e1 : rm);
    }
  }
  // pass 2 (matrices)
  each([&](const Task& t, Slot& sl, int64_t ti) {
    if (!sl.factored) return;
    const int64_t off = (t.batch * sl.rows + t.lo) * sl.cols;
    run_isa<NormBody<T, O>>(isa, sl.g.const_data_ptr<T>() + off, t.hi - t.lo, sl.cols,
                            sl.r.const_data_ptr<T>() + t.batch * sl.rows + t.lo,
                            sl.c.const_data_ptr<T>() + t.batch * sl.cols,
                            static_cast<O>(sl.rmean[t.batch]), s, eps1_sq, uu.data() + ti);
  });
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    Slot& sl = slots[tasks[ti].slot];
    if (sl.factored) sl.uu += uu[ti];
  }
  for (Slot& sl : slots) {
    // torch's Python floats: max(eps2, RMS(p)) * rho and max(1, RMS(u) / d)
    const double sq_n = std::sqrt(static_cast<double>(sl.numel));
    const double rms = std::sqrt(sl.pp) / sq_n;
    const double alpha = (rms > a.eps2 ? rms : a.eps2) * sl.rho;
    const double clip = std::sqrt(sl.uu) / (sq_n * a.d);
    sl.neg_step = -alpha / (clip > 1.0 ? clip : 1.0);
  }
  // pass 3
  each([&](const Task& t, Slot& sl, int64_t) {
    const O neg_step = static_cast<O>(sl.neg_step);
    if (sl.factored) {
      const int64_t off = (t.batch * sl.rows + t.lo) * sl.cols;
      run_isa<ApplyBody<T, O>>(isa, sl.p.data_ptr<T>() + off, sl.g.const_data_ptr<T>() + off,
                               t.hi - t.lo, sl.cols,
                               sl.r.const_data_ptr<T>() + t.batch * sl.rows + t.lo,
                               sl.c.const_data_ptr<T>() + t.batch * sl.cols,
                               static_cast<O>(sl.rmean[t.batch]), gs, eps1_sq, decay, neg_step);
    } else {
      run_isa<VectorApplyBody<T, O>>(
          isa, sl.p.data_ptr<T>() + t.lo, sl.g.const_data_ptr<T>() + t.lo,
          sl.v.const_data_ptr<T>() + t.lo, t.hi - t.lo, gs, eps1_sq, decay, neg_step);
    }
  });
}

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
      sl.rmean.assign(static_cast<size_t>(sl.batches), 0.0);
    } else {
      sl.v = dense(a.variances[i], &back);
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.params[0].scalar_type(), "adafactor_",
                                  [&] { run<scalar_t>(slots, a, lr, inv_scale); });
  for (auto& [dst, src] : back) dst.copy_(src);
}

}  // namespace fusedopt::cpu
