// The counting check of the persistent kernels' plain C++ tests
// (persistent_emulation_test.cpp, persistent_tier_test.cpp): a failed check
// prints FAIL and its description, main() reports the counts.
#pragma once

#include <cstdio>
#include <string>

namespace persistent_checks {

inline int failures = 0, checks = 0;

inline void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Prints the counts; the exit status of main().
inline int report() {
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace persistent_checks
