// The sum of squares (global grad norm) on the GPU, the final reduction of whole-op sums, the
// step-counter increments every optimizer with a `step` launches after its update, and the
// planning configuration of a device: GpuBackend (jobs.h) but for its run<Op>.
#include <array>
#include <atomic>

#include "runner.cuh"

namespace fusedopt::cuda {

__global__ void __launch_bounds__(kBlockThreads)
    sum_partials_kernel(const double* partials, int64_t n, double* out) {
  __shared__ double red[kBlockThreads];
  DeviceThreads ex{static_cast<int>(blockDim.x)};
  sum_partials_block(partials, n, out, ex, red);
}

void GpuBackend::sum_partials(c10::Device device, const double* partials, int64_t n, double* out) {
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  sum_partials_kernel<<<1, kBlockThreads, 0, stream>>>(partials, n, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

namespace {

template <int ARG_BYTES>
void launch_increments(int device, const StepList& steps, const ScalarArg& found_inf) {
  using Table = StepTable<ARG_BYTES>;
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  Table table;
  const size_t n = steps.ptrs.size();
  for (size_t begin = 0; begin < n; begin += Table::kCapacity) {
    const size_t end = std::min(n, begin + Table::kCapacity);
    table.n = static_cast<int32_t>(end - begin);
    for (size_t i = begin; i < end; ++i) {
      table.ptr[i - begin] = steps.ptrs[i];
      table.kind[i - begin] = steps.kinds[i];
    }
    const int threads = table.n < 256 ? 32 * ((table.n + 31) / 32) : 256;
    increment_steps_kernel<ARG_BYTES><<<1, threads, 0, stream>>>(table, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void GpuBackend::increment_steps(c10::Device device, const ExecConfig& cfg, const StepList& steps,
                                 const ScalarArg& found_inf) {
  if (steps.ptrs.empty()) return;
  const int arg_bytes = cfg.arg_bytes;
#if FUSEDOPT_LARGE_ARGS
  if (arg_bytes == kArgBytesLarge)
    return launch_increments<kArgBytesLarge>(device.index(), steps, found_inf);
#endif
#if FUSEDOPT_SMALL_ARGS
  if (arg_bytes == kArgBytesSmall)
    return launch_increments<kArgBytesSmall>(device.index(), steps, found_inf);
#endif
  TORCH_CHECK(false, "fusedopt: no kernels compiled for ", arg_bytes, " bytes of kernel arguments");
}

namespace {

int query_arg_bytes(int device) {
  int driver = 0;
  C10_CUDA_CHECK(cudaDriverGetVersion(&driver));
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const int want = kernel_arg_bytes(driver, major);
#if FUSEDOPT_LARGE_ARGS && FUSEDOPT_SMALL_ARGS
  return want;
#elif FUSEDOPT_LARGE_ARGS
  TORCH_CHECK(want == kArgBytesLarge,
              "fusedopt: built for 32 KB kernel arguments, which this "
              "driver (",
              driver, ") or GPU (sm_", major, "x) does not support");
  return kArgBytesLarge;
#else
  return kArgBytesSmall;
#endif
}

}  // namespace

int GpuBackend::arg_bytes(int device) {
  // Asked once per device: every op call plans with it.
  static std::array<std::atomic<int>, 64> cache{};
  if (device >= 0 && device < static_cast<int>(cache.size())) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known != 0) return known;
    const int found = query_arg_bytes(device);
    cache[device].store(found, std::memory_order_relaxed);
    return found;
  }
  return query_arg_bytes(device);
}

ExecConfig GpuBackend::config(c10::Device device) {
  ExecConfig c;
  // Not a CUDA device: an op with no params (the dispatcher chose CUDA for a scalar
  // argument), which returns after its checks.
  if (device.is_cuda()) c.arg_bytes = arg_bytes(device.index());
  return c;
}

}  // namespace fusedopt::cuda
