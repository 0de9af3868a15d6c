// benchmarks/context.hpp - what every sdpa benchmark records about the build it measures.
#pragma once

#include <benchmark/benchmark.h>
#include <sdpa/sdpa.hpp>

#include <string>

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif

namespace sdpa_bench {

/// sdpa's version, the ISA and vector width it was built for, OpenMP's thread count and
/// Eigen's version, as Google Benchmark context: they land in the JSON beside the results.
inline void add_build_context() {
  benchmark::AddCustomContext("sdpa_version", std::to_string(SDPA_VERSION_MAJOR) + "." +
                                                  std::to_string(SDPA_VERSION_MINOR) + "." +
                                                  std::to_string(SDPA_VERSION_PATCH));
  benchmark::AddCustomContext("sdpa_isa", sdpa::simd::native_name);
  benchmark::AddCustomContext("sdpa_vector_floats",
                              std::to_string(sdpa::simd::Vec<float, sdpa::simd::native>::width));
#if SDPA_HAS_OPENMP
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(omp_get_max_threads()));
#else
  benchmark::AddCustomContext("openmp_max_threads", "none (built without OpenMP)");
#endif
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
}

}  // namespace sdpa_bench
