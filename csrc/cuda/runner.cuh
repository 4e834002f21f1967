// The GPU executor: kernels around the shared block body (block.h) and the launch loop over a
// job's planned launches. Included by the per-optimizer .cu files, each instantiating its own
// op's kernels with one FUSEDOPT_GPU_KERNELS line (narrow translation units compile in
// parallel).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "block.h"
#include "functors.h"
#include "jobs.h"

// Which table variants the kernels are compiled for (Note [kernel-argument space]); -D either
// macro to override (e.g. to compile the 4 KB variant with a CUDA 13 toolkit).
#ifndef FUSEDOPT_LARGE_ARGS
#if CUDART_VERSION >= 12010
#define FUSEDOPT_LARGE_ARGS 1
#else
#define FUSEDOPT_LARGE_ARGS 0
#endif
#endif
// A CUDA 13 runtime refuses to start on drivers older than 13.0, and CUDA 13 supports no GPU
// below sm_75, so builds with it never need the 4 KB variant.
#ifndef FUSEDOPT_SMALL_ARGS
#if CUDART_VERSION < 13000
#define FUSEDOPT_SMALL_ARGS 1
#else
#define FUSEDOPT_SMALL_ARGS 0
#endif
#endif

namespace fusedopt::cuda {

// Note [kernel-argument space]
// Kernel arguments (here: the launch table, by value) are limited to 4 KB, or 32,764 bytes on
// Volta and newer with a CUDA 12.1+ toolkit and driver; more table means fewer launches (10,000
// tensors of 1,024 elements: 21 launches instead of 186). The kernels are compiled for the
// variants the toolkit can need (above) and gpu::arg_bytes() picks one per device at run time.

struct DeviceThreads {
  int nthreads;
  template <class Fn>
  __device__ __forceinline__ void each(Fn&& fn) const {
    fn(static_cast<int>(threadIdx.x));
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};

// __grid_constant__: the table stays in the kernel-parameter space, indexed there, rather than
// being copied to local memory. kMinBlocksPerSm: see launch_plan.h.
template <class F, class Table>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    multi_tensor_kernel(const __grid_constant__ Table table, const __grid_constant__ F f) {
  constexpr int W = F::kReduce > 0 ? F::kReduce : 1;
  __shared__ typename F::State state;
  __shared__ double red[F::kReduce > 0 ? W * kBlockThreads : 1];
  __shared__ int flag;
  DeviceThreads ex{static_cast<int>(blockDim.x)};
  run_block(table, f, static_cast<int>(blockIdx.x), ex, BlockShared<F>{&state, red, &flag});
}

__global__ void __launch_bounds__(kBlockThreads)
    sum_partials_kernel(const double* partials, int64_t n, double* out);

// A kernel object of its own layout (Adafactor's, adafactor_kernels.h): K holds its table and
// arguments, K::Shared its block's shared memory, k(block, ex, shared) one block's body.
template <class K>
__global__ void __launch_bounds__(kBlockThreads) block_kernel(const __grid_constant__ K k) {
  __shared__ typename K::Shared shared;
  DeviceThreads ex{static_cast<int>(blockDim.x)};
  k(static_cast<int>(blockIdx.x), ex, shared);
}

template <int ARG_BYTES>
__global__ void increment_steps_kernel(const __grid_constant__ StepTable<ARG_BYTES> table,
                                       const ScalarArg found_inf) {
  DeviceThreads ex{static_cast<int>(blockDim.x)};
  increment_steps_block(table, found_inf, ex);
}

struct GpuRunner {
  static constexpr bool kLargeArgs = FUSEDOPT_LARGE_ARGS;
  static constexpr bool kSmallArgs = FUSEDOPT_SMALL_ARGS;

  template <class K>
  void blocks(const Job& job, const K& k, int num_blocks) {
    static_assert(sizeof(K) <= kArgBytesLarge, "kernel arguments exceed the argument space");
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(job.device));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(job.device).stream();
    block_kernel<K><<<num_blocks, kBlockThreads, 0, stream>>>(k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <class F>
  void run(const Job& job, const typename F::Params& params) {
    static_assert(sizeof(F) <= kFunctorArgBytes, "functor arguments exceed their reserve");
    const F f{params};
#if FUSEDOPT_LARGE_ARGS
    if (job.arg_bytes == kArgBytesLarge)
      return launch<F, TableFor<F::kDepth, kArgBytesLarge>>(job, f);
#endif
#if FUSEDOPT_SMALL_ARGS
    if (job.arg_bytes == kArgBytesSmall)
      return launch<F, TableFor<F::kDepth, kArgBytesSmall>>(job, f);
#endif
    TORCH_CHECK(false, "fusedopt: no kernels compiled for ", job.arg_bytes,
                " bytes of kernel arguments");
  }

  template <class F, class Table>
  static void launch(const Job& job, const F& f) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(job.device));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(job.device).stream();
    Table table;
    for (const PlannedLaunch& l : job.plan.launches) {
      fill_table(table, l, job.plan.chunk_size, job.tensors.data());
      multi_tensor_kernel<F, Table><<<l.num_blocks, kBlockThreads, 0, stream>>>(table, f);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

template <class Op>
void GpuBackend::run(const Job& job, const KernelParams<Op>& params) {
  GpuRunner r;
  OpKernels<Op>::run(r, job, params);
}

// The GPU kernels of op `op` (a struct name of fusedopt::ops), in the .cu file that says so.
#define FUSEDOPT_GPU_KERNELS(op)                                    \
  template void fusedopt::cuda::GpuBackend::run<fusedopt::ops::op>( \
      const fusedopt::cuda::Job&, const fusedopt::cuda::KernelParams<fusedopt::ops::op>&);

}  // namespace fusedopt::cuda
