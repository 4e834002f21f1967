// Build facts about the CUDA part, and whether a GPU can run the kernels.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <string>
#include <tuple>

// Variadic: __CUDA_ARCH_LIST__ contains commas.
#define FUSEDOPT_STR2(...) #__VA_ARGS__
#define FUSEDOPT_STR(...) FUSEDOPT_STR2(__VA_ARGS__)

// The architectures nvcc compiled device code for, as nvcc lists them (e.g. "800,900").
#ifdef __CUDA_ARCH_LIST__
#define FUSEDOPT_ARCHS FUSEDOPT_STR(__CUDA_ARCH_LIST__)
#else
#define FUSEDOPT_ARCHS ""
#endif
// The images embedded in the library, as setup.py recorded them from the -gencode flags:
// "sm75_sm80_sm90_ptx90" (native code for sm_75, sm_80, sm_90; PTX of compute_90), or
// "unknown" (built some other way). fusedopt/_dispatch.py decides from it which GPUs can run.
#ifndef FUSEDOPT_CUDA_IMAGES
#define FUSEDOPT_CUDA_IMAGES unknown
#endif

namespace fusedopt::cuda {

std::string compiled_archs() { return FUSEDOPT_ARCHS; }
std::string compiled_images() { return FUSEDOPT_STR(FUSEDOPT_CUDA_IMAGES); }

namespace {
__global__ void probe_kernel() {}
}  // namespace

// What the CUDA runtime itself says about running this library's kernels on `device` (every
// .cu file is compiled with the same -gencode flags, so one kernel answers for all): "" and the
// image's binary and PTX versions (e.g. 90, 90; a PTX JIT-compiled for a newer GPU shows its
// binary version above the PTX one), or the runtime's error, e.g. "no kernel image is available
// for execution on the device". The error is cleared, so a later launch check does not see it.
std::tuple<std::string, int, int> kernel_image(int device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attr{};
  const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return {cudaGetErrorString(err), 0, 0};
  }
  return {"", attr.binaryVersion, attr.ptxVersion};
}

}  // namespace fusedopt::cuda
