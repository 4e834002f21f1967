// Build facts about the CUDA part (the kernels themselves arrive with the CUDA backend).
#include <string>

namespace fusedopt::cuda {

// The architectures nvcc compiled device code for, as nvcc lists them (e.g. "800,900").
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)
  return FUSEDOPT_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace fusedopt::cuda
