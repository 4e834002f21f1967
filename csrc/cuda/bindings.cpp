// fusedopt._C.planner and fusedopt._C.sim: the CUDA backend's host parts, for the CPU tests
// (tests/test_cuda_planner.py). Built with or without CUDA.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "jobs.h"
#include "kernel_table.h"
#include "launch_plan.h"
#include "sim.h"

namespace py = pybind11;

namespace fusedopt::cuda {
namespace {

Capacity checked_capacity(int max_slots, int max_blocks) {
  if (max_slots < 1 || max_blocks < 1) throw py::value_error("capacities must be positive");
  return {max_slots, max_blocks};
}

py::list plan_to_python(const LaunchPlan& plan) {
  py::list launches;
  for (const PlannedLaunch& l : plan.launches) {
    py::list slots;
    for (const PlannedSlot& s : l.slots) {
      slots.append(py::make_tuple(s.tensor, s.first_chunk, s.block_start, s.num_blocks));
    }
    py::dict d;
    d["first_block"] = l.first_block;
    d["num_blocks"] = l.num_blocks;
    d["slots"] = slots;
    launches.append(d);
  }
  return launches;
}

// Every block of a plan as the kernel sees it: the launch table filled by fill_table() and read
// by locate(), exactly as on the GPU, with fake (never dereferenced) data pointers.
py::list resolve_blocks(const std::vector<int64_t>& numels, int64_t chunk_size, int max_slots,
                        int max_blocks) {
  using Table = TableFor<1, kArgBytesLarge>;
  if (max_slots > Table::kSlots) {
    throw py::value_error("more slots than the largest table's " + std::to_string(Table::kSlots));
  }
  const LaunchPlan plan =
      plan_launches(numels, chunk_size, checked_capacity(max_slots, max_blocks));
  std::vector<TensorRef> refs(numels.size());
  for (size_t i = 0; i < numels.size(); ++i) {
    refs[i] = TensorRef{};
    refs[i].ptr[0] = reinterpret_cast<void*>(uintptr_t{16} * (i + 1));
    refs[i].numel = numels[i];
    refs[i].index = static_cast<int32_t>(i);
  }
  std::vector<Table> tables(1);
  Table& t = tables[0];
  py::list out;
  for (size_t li = 0; li < plan.launches.size(); ++li) {
    fill_table(t, plan.launches[li], plan.chunk_size, refs.data());
    for (int b = 0; b < t.num_blocks; ++b) {
      const BlockWork w = locate(t, b);
      out.append(py::make_tuple(li, t.first_block + b, t.index[w.slot], w.chunk, w.offset, w.n));
    }
  }
  return out;
}

template <int D>
int table_bytes_for(int arg_bytes) {
  return static_cast<int>(arg_bytes == kArgBytesSmall ? sizeof(TableFor<D, kArgBytesSmall>)
                                                      : sizeof(TableFor<D, kArgBytesLarge>));
}

int table_bytes(int depth, int arg_bytes) {
  if (arg_bytes != kArgBytesSmall && arg_bytes != kArgBytesLarge) {
    throw py::value_error("arg_bytes must be 4096 or 32764");
  }
  switch (depth) {
    case 1: return table_bytes_for<1>(arg_bytes);
    case 2: return table_bytes_for<2>(arg_bytes);
    case 3: return table_bytes_for<3>(arg_bytes);
    case 4: return table_bytes_for<4>(arg_bytes);
    case 5: return table_bytes_for<5>(arg_bytes);
    case 6: return table_bytes_for<6>(arg_bytes);
    case 7: return table_bytes_for<7>(arg_bytes);
    default: throw py::value_error("depth must be 1 to 7");
  }
}

}  // namespace

void bind_host(py::module_& m) {
  py::module_ p = m.def_submodule(
      "planner", "The CUDA backend's multi-tensor launch planner (csrc/cuda/launch_plan.h)");
  p.attr("CHUNK_SIZE") = kChunkSize;
  p.attr("BLOCK_THREADS") = kBlockThreads;
  p.attr("ARG_BYTES_SMALL") = kArgBytesSmall;
  p.attr("ARG_BYTES_LARGE") = kArgBytesLarge;
  p.attr("FUNCTOR_ARG_BYTES") = kFunctorArgBytes;
  p.attr("MAX_GRID_BLOCKS") = kMaxGridBlocks;
  p.attr("MAX_DEPTH") = kMaxDepth;
  p.def(
      "plan_launches",
      [](const std::vector<int64_t>& numels, int64_t chunk_size, int max_slots, int max_blocks,
         int64_t first_block) {
        return plan_to_python(plan_launches(numels, chunk_size,
                                            checked_capacity(max_slots, max_blocks), first_block));
      },
      py::arg("numels"), py::arg("chunk_size"), py::arg("max_slots"), py::arg("max_blocks"),
      py::arg("first_block") = 0,
      "The launches for tensors of these sizes: [{first_block, num_blocks, slots: [(tensor, "
      "first_chunk, block_start, num_blocks)]}].");
  p.def("resolve_blocks", &resolve_blocks, py::arg("numels"), py::arg("chunk_size"),
        py::arg("max_slots"), py::arg("max_blocks"),
        "Every planned block as the kernel resolves it from its launch table: "
        "[(launch, global block, tensor, chunk, element offset, elements)].");
  p.def(
      "table_capacity",
      [](int depth, int arg_bytes) {
        const Capacity c = table_capacity(depth, arg_bytes);
        return py::make_tuple(c.slots, c.blocks);
      },
      py::arg("depth"), py::arg("arg_bytes"), "(slots, blocks) of a launch table.");
  p.def("table_bytes", &table_bytes, py::arg("depth"), py::arg("arg_bytes"),
        "sizeof the launch table of `depth` arrays for that argument space.");
  p.def("kernel_arg_bytes", &kernel_arg_bytes, py::arg("driver_version"), py::arg("cc_major"),
        "The kernel-argument space to plan for on that driver and GPU.");
  p.def(
      "vector_aligned",
      [](const std::vector<uintptr_t>& addresses) {
        std::vector<const void*> ptrs;
        for (uintptr_t a : addresses) ptrs.push_back(reinterpret_cast<const void*>(a));
        return vector_aligned(ptrs.data(), static_cast<int>(ptrs.size()));
      },
      py::arg("addresses"), "Whether a parameter with these array addresses takes vector loads.");
#ifdef FUSEDOPT_WITH_CUDA
  p.def("device_arg_bytes", &GpuBackend::arg_bytes, py::arg("device"),
        "The kernel-argument space the CUDA kernels use on that GPU (asks the driver).");
#endif

  py::module_ s =
      m.def_submodule("sim",
                      "Configuration and counters of the CUDA backend's host simulation "
                      "(torch.ops.fusedopt_sim.*, csrc/cuda/sim.h)");
  s.def(
      "configure",
      [](int64_t chunk_size, int threads, int arg_bytes, int max_slots, int max_blocks,
         bool scalars_by_pointer) {
        if (chunk_size <= 0 || chunk_size % 16 != 0) {
          throw py::value_error("chunk_size must be a positive multiple of 16");
        }
        if (threads < 1 || threads > 1024 || (threads & (threads - 1)) != 0) {
          throw py::value_error("threads must be a power of two up to 1024");
        }
        if (arg_bytes != kArgBytesSmall && arg_bytes != kArgBytesLarge) {
          throw py::value_error("arg_bytes must be 4096 or 32764");
        }
        if (max_slots < 0 || max_blocks < 0) throw py::value_error("negative capacity");
        sim::config() = {chunk_size, threads, arg_bytes, max_slots, max_blocks, scalars_by_pointer};
      },
      py::arg("chunk_size") = kChunkSize, py::arg("threads") = kBlockThreads,
      py::arg("arg_bytes") = kArgBytesLarge, py::arg("max_slots") = 0, py::arg("max_blocks") = 0,
      py::arg("scalars_by_pointer") = false,
      "Set how the simulated ops plan and run (defaults: as on the GPU).");
#define FUSEDOPT_SIM_FIELD(field) d[#field] = v.field;
  s.def("config", [] {
    const sim::Config& v = sim::config();
    py::dict d;
    FUSEDOPT_SIM_CONFIG_FIELDS(FUSEDOPT_SIM_FIELD)
    return d;
  });
  s.def("stats", [] {
    const sim::Stats& v = sim::stats();
    py::dict d;
    FUSEDOPT_SIM_STATS_FIELDS(FUSEDOPT_SIM_FIELD)
    return d;
  });
#undef FUSEDOPT_SIM_FIELD
  s.def("reset", &sim::reset, "Default configuration, counters zeroed.");
}

}  // namespace fusedopt::cuda
