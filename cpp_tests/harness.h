// A minimal test harness for the C++ unit tests (GoogleTest is not available offline).
//
//   FO_TEST(adam_modes) { FO_CHECK(x == y, "x=", x); FO_CHECK_THROWS(op(...)); }
//
// Each test executable runs every registered test (or those whose name contains argv[1]),
// prints one line per test and a summary, and exits non-zero if any failed, which is what ctest
// looks at. A failed check throws, ending that test; the others still run.
#pragma once

#include <exception>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace fusedopt_test {

struct TestCase {
  const char* name;
  void (*fn)();
};

std::vector<TestCase>& registry();

inline bool add_test(const char* name, void (*fn)()) {
  registry().push_back({name, fn});
  return true;
}

struct Failure : std::exception {
  std::string what_;
  explicit Failure(std::string w) : what_(std::move(w)) {}
  const char* what() const noexcept override { return what_.c_str(); }
};

template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  os.precision(10);
  (os << ... << args);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  throw Failure(cat(file, ":", line, ": ", args...));
}

}  // namespace fusedopt_test

#define FO_TEST(name)                                                                             \
  static void name();                                                                             \
  [[maybe_unused]] static const bool name##_registered = ::fusedopt_test::add_test(#name, &name); \
  static void name()

#define FO_CHECK(cond, ...)                                                          \
  do {                                                                               \
    if (!(cond))                                                                     \
      ::fusedopt_test::fail(__FILE__, __LINE__,                                      \
                            "check failed: " #cond ". " __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

#define FO_FAIL(...) ::fusedopt_test::fail(__FILE__, __LINE__, __VA_ARGS__)

// Passes when `stmt` throws c10::Error (or anything derived from std::exception that is not a
// harness failure); returns the message for further checks.
#define FO_CHECK_THROWS(stmt)                                                        \
  [&]() -> std::string {                                                             \
    try {                                                                            \
      stmt;                                                                          \
    } catch (const ::fusedopt_test::Failure&) {                                      \
      throw;                                                                         \
    } catch (const std::exception& e) {                                              \
      return e.what();                                                               \
    }                                                                                \
    ::fusedopt_test::fail(__FILE__, __LINE__, "expected an exception from: " #stmt); \
  }()
