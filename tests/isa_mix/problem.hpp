// tests/isa_mix/problem.hpp - what the translation units of the ISA-mixing program share:
// plain C++ types only (no sdpa or Eigen types cross between them, as a careful user would
// also arrange when files are built with different flags).
#pragma once

#include <string>
#include <vector>

struct Problem {
  int n = 64, d = 16;
  std::vector<float> q, k, v;  // n x d each, row-major
};

struct Result {
  std::string isa;          // the ISA whose kernels ran (sdpa::isa())
  std::vector<float> out;   // n x d
};

// One per translation unit, each built with other flags (tests/isa_mix/CMakeLists.txt).
Result attend_avx2_build(const Problem& p);      // -march=x86-64-v3, static
Result attend_dispatch_build(const Problem& p);  // -march=x86-64 -DSDPA_DISPATCH=1
Result attend_baseline_build(const Problem& p);  // -march=x86-64, static
