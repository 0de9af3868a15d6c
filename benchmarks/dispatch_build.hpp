// benchmarks/dispatch_build.hpp - sdpa as a program built for baseline x86-64 with
// SDPA_DISPATCH sees it, inside a benchmark built with -march=native: dispatch_build.cpp is
// compiled with those flags (CMakeLists.txt), so the two builds run side by side in one run.
// Only plain types cross between the two translation units.
#pragma once

/// The element type the call runs on: the float inputs themselves, or copies rounded to
/// Eigen::bfloat16 / Eigen::half (made once per buffer by dispatch_build.cpp, outside the timing).
enum class DispatchStorage { f32, bf16, f16 };

struct DispatchHeads {
  const float *q, *k, *v;  // (n, width) row-major: head h is columns [h d, (h + 1) d)
  float* out;
  long n, d, heads, width;  // width: the matrices' columns (every head, also when heads is 1)
  bool causal;
  int threads;
  DispatchStorage storage;
};

/// Runs sdpa::attention_into (Kernel::Simd) on every head with the dispatch build's kernels
/// of `isa` ("avx512", "avx2", "scalar"), or of the ISA it picks itself for nullptr.
/// Returns the name of the ISA that ran.
const char* dispatch_build_attention(const DispatchHeads& call, const char* isa);
