// A minimal test harness for the C++ unit tests: CHECK and CHECK_NEAR record
// failures with their location, and main returns their count.
#pragma once

#include <cmath>
#include <cstdio>

namespace advprune::testing {

inline int& failures() {
  static int count = 0;
  return count;
}

inline void check(bool ok, const char* what, const char* file, int line) {
  if (!ok) {
    std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what);
    ++failures();
  }
}

inline void check_near(double a, double b, double rel, const char* what, const char* file, int line) {
  const double tol = rel * (std::fabs(b) + 1e-30);
  if (!(std::fabs(a - b) <= tol)) {
    std::fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s: %.17g vs %.17g (rel %.3g)\n", file, line, what, a, b, rel);
    ++failures();
  }
}

}  // namespace advprune::testing

#define CHECK(cond) ::advprune::testing::check((cond), #cond, __FILE__, __LINE__)
#define CHECK_NEAR(a, b, rel) ::advprune::testing::check_near((a), (b), (rel), #a " ~ " #b, __FILE__, __LINE__)
