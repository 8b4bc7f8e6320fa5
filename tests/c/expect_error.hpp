// What the C++ test programs under tests/c share: a check that a call throws the expected unireward::Error.
#ifndef UNIREWARD_TESTS_EXPECT_ERROR_HPP
#define UNIREWARD_TESTS_EXPECT_ERROR_HPP

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "unireward.hpp"

// Runs `call`, which must throw `unireward::Error` with `status` and a message holding `needle`; exits non-zero if
// it throws another error or none.
template <typename F>
void expect_error(F call, ur_status status, const char* needle) {
  try {
    call();
  } catch (const unireward::Error& e) {
    if (e.status() == status && std::strstr(e.what(), needle) != nullptr) return;
    std::fprintf(stderr, "wrong error: %s (expected %s)\n", e.what(), needle);
    std::exit(1);
  }
  std::fprintf(stderr, "no error (expected %s)\n", needle);
  std::exit(1);
}

#endif
