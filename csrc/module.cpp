// fusedopt._C: importing it loads the op registrations (TORCH_LIBRARY in this library) and
// exposes host utilities for tests and `fusedopt.backends()`.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>

#include "cpu/isa.h"

namespace py = pybind11;
using fusedopt::cpu::Isa;

namespace {

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "default") return Isa::kDefault;
  throw py::value_error("unknown CPU capability '" + name +
                        "' (expected 'default', 'avx2' or 'avx512')");
}

}  // namespace

#ifdef FUSEDOPT_WITH_CUDA
namespace fusedopt::cuda {
std::string compiled_archs();  // csrc/cuda/info.cu
std::string compiled_images();
std::tuple<std::string, int, int> kernel_image(int device);
}  // namespace fusedopt::cuda
#endif
namespace fusedopt::cuda {
void bind_host(py::module_& m);  // csrc/cuda/bindings.cpp: _C.planner, _C.sim
}
namespace fusedopt {
void bind_plan(py::module_& m);  // csrc/plan.cpp: _C.StepPlan
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedopt compiled kernels (ops are under torch.ops.fusedopt)";
  fusedopt::cuda::bind_host(m);
  fusedopt::bind_plan(m);
  m.def(
      "cpu_capability", [] { return std::string(isa_name(fusedopt::cpu::current_isa())); },
      "The SIMD level the CPU kernels use now.");
  m.def(
      "cpu_capability_detected",
      [] { return std::string(isa_name(fusedopt::cpu::detected_isa())); },
      "The highest SIMD level this CPU supports.");
  m.def(
      "set_cpu_capability",
      [](const std::string& name) {
        if (!fusedopt::cpu::set_isa(parse_isa(name))) {
          throw py::value_error("this CPU does not support '" + name + "'");
        }
      },
      "Lower (or restore) the SIMD level, e.g. to test the AVX2 path on an AVX-512 machine.");
#ifdef FUSEDOPT_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_archs", [] { return fusedopt::cuda::compiled_archs(); });
  m.def(
      "cuda_images", [] { return fusedopt::cuda::compiled_images(); },
      "The embedded images as setup.py recorded them, e.g. 'sm80_sm90_ptx90', or 'unknown'.");
  m.def("cuda_kernel_image", &fusedopt::cuda::kernel_image, py::arg("device"),
        "(error, binary version, PTX version) of the kernels on that GPU, from the CUDA runtime; "
        "error is '' when they can run.");
  m.attr("cuda_skip_code") = 0;
#else
  m.attr("with_cuda") = false;
  // Why the CUDA part was left out (setup.py): 1 FUSEDOPT_BUILD_CUDA=0, 2 CPU-only torch,
  // 3 no CUDA toolkit found.
  m.attr("cuda_skip_code") = FUSEDOPT_CUDA_SKIP_CODE;
  m.def("cuda_archs", [] { return std::string(); });
  m.def("cuda_images", [] { return std::string(); });
#endif
}
