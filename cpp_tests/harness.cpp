#include "harness.h"

#include <chrono>
#include <cstdio>
#include <cstring>

namespace fusedopt_test {

std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

}  // namespace fusedopt_test

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : "";
  int run = 0;
  int failed = 0;
  for (const auto& t : fusedopt_test::registry()) {
    if (std::strstr(t.name, filter) == nullptr) continue;
    ++run;
    std::printf("[ RUN      ] %s\n", t.name);
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    bool ok = true;
    try {
      t.fn();
    } catch (const std::exception& e) {
      ok = false;
      std::printf("%s\n", e.what());
    } catch (...) {
      ok = false;
      std::printf("unknown exception\n");
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ %s ] %s (%.0f ms)\n", ok ? "      OK" : "  FAILED", t.name, ms);
    std::fflush(stdout);
    failed += ok ? 0 : 1;
  }
  std::printf("%d test(s) run, %d failed\n", run, failed);
  if (run == 0) {
    std::printf("no test matches '%s'\n", filter);
    return 1;
  }
  return failed == 0 ? 0 : 1;
}
