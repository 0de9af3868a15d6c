// benchmarks/context.hpp - what every sdpa benchmark records about the build it measures.
#pragma once

#include <benchmark/benchmark.h>
#include <sdpa/sdpa.hpp>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif

namespace sdpa_bench {

/// The vector type of this build's own flags, for the benchmarks' own loops (the FMA peak,
/// the STREAM-like read).
#if SDPA_BUILD_AVX512
using NativeVec = sdpa::simd::Vec<float, sdpa::simd::avx512>;
#elif SDPA_BUILD_AVX2
using NativeVec = sdpa::simd::Vec<float, sdpa::simd::avx2>;
#elif SDPA_BUILD_NEON
using NativeVec = sdpa::simd::Vec<float, sdpa::simd::neon>;
#else
using NativeVec = sdpa::simd::Vec<float, sdpa::simd::scalar>;
#endif

/// The CPU's model name with its family and model numbers (/proc/cpuinfo on Linux: a VM may
/// report only "Intel(R) Xeon(R) Processor", and the numbers still tell the generation), or
/// "unknown".
inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string name = "unknown", family, model;
  const auto value = [](const std::string& line) { return line.substr(line.find(':') + 2); };
  for (std::string line; std::getline(cpuinfo, line) && line.find(':') != std::string::npos;) {
    if (line.rfind("model name", 0) == 0) name = value(line);
    else if (line.rfind("cpu family", 0) == 0) family = value(line);
    else if (line.rfind("model\t", 0) == 0) model = value(line);
  }
  return family.empty() ? name : name + " (family " + family + ", model " + model + ")";
}

/// The ISAs of this architecture that the CPU supports, widest first.
inline std::string cpu_isas() {
  std::string names;
  for (const sdpa::Isa isa : {sdpa::Isa::avx512, sdpa::Isa::avx2, sdpa::Isa::neon, sdpa::Isa::scalar})
    if (sdpa::cpu_supports(isa)) names += std::string(names.empty() ? "" : ", ") + sdpa::isa_name(isa);
  return names;
}

/// sdpa's version, the CPU and its ISAs, the ISA whose kernels run and its vector width,
/// OpenMP's thread count and Eigen's version, as Google Benchmark context: they land in the
/// JSON beside the results (the development machines differ: a figure needs its machine).
inline void add_build_context() {
  benchmark::AddCustomContext("sdpa_version", std::to_string(SDPA_VERSION_MAJOR) + "." +
                                                  std::to_string(SDPA_VERSION_MINOR) + "." +
                                                  std::to_string(SDPA_VERSION_PATCH));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("cpu_isas", cpu_isas());
  benchmark::AddCustomContext("sdpa_isa", sdpa::isa_name(sdpa::isa()));
  benchmark::AddCustomContext("sdpa_mode", SDPA_DISPATCH ? "dispatch" : "static (the build's -march)");
  benchmark::AddCustomContext("sdpa_vector_floats", std::to_string(sdpa::kernels::microkernels(sdpa::isa()).width));
#if SDPA_HAS_OPENMP
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(omp_get_max_threads()));
#else
  benchmark::AddCustomContext("openmp_max_threads", "none (built without OpenMP)");
#endif
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
}

/// The main of a benchmark binary: its flags, the build's context (plus `context`, name-value
/// pairs), the benchmarks `register_all` registers, run.
inline int run_benchmarks(int argc, char** argv, void (*register_all)(),
                          const std::vector<std::pair<std::string, std::string>>& context = {}) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  add_build_context();
  for (const auto& [name, value] : context) benchmark::AddCustomContext(name, value);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace sdpa_bench
