#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fusedopt::cpu {
namespace {

Isa probe() {
#if FUSEDOPT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kDefault;
}

Isa from_env(Isa detected) {
  const char* env = std::getenv("FUSEDOPT_CPU_CAPABILITY");
  if (env == nullptr) return detected;
  Isa want = detected;
  if (std::strcmp(env, "default") == 0) want = Isa::kDefault;
  if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  return static_cast<int>(want) < static_cast<int>(detected) ? want : detected;
}

std::atomic<int>& current() {
  static std::atomic<int> level{static_cast<int>(from_env(detected_isa()))};
  return level;
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = probe();
  return isa;
}

Isa current_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

bool set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_isa())) return false;
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

bool avx512_bf16_in_use() {
#if FUSEDOPT_X86
  static const bool has = detected_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  return has && current_isa() == Isa::kAvx512;
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace fusedopt::cpu
