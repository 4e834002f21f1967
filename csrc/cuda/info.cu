// Build facts about the CUDA part (the kernels themselves arrive with the CUDA backend).
#include <string>

namespace fusedopt::cuda {

// The architectures nvcc compiled device code for, as nvcc lists them (e.g. "800,900").
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
// Variadic: the list itself contains commas.
#define FUSEDOPT_STR2(...) #__VA_ARGS__
#define FUSEDOPT_STR(...) FUSEDOPT_STR2(__VA_ARGS__)
  return FUSEDOPT_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace fusedopt::cuda
