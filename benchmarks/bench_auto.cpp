// bench_auto.cpp - the measurements behind Kernel::Auto's choices (attention.hpp, resolve_kernel).
//
// Each explicit path on one head, one thread, for float and double, from tiny to medium
// shapes: where the reference's lack of setup beats the tiled paths (tiny inputs), and how
// the reference compares with Blocked for double (which has no SIMD microkernels).
//
//   bench_auto --benchmark_min_time=0.05        (about a minute)
//
// Names: auto/<type>/<path>/N:n/d:d; GFLOPS = 4 N^2 d per call.
#include <sdpa/sdpa.hpp>

#include "context.hpp"

#include <benchmark/benchmark.h>

#include <string>

namespace {

using sdpa::Index;

template <class T>
void BM_path(benchmark::State& state, sdpa::Kernel kernel, Index n, Index d) {
  const sdpa::Matrix<T> Q = sdpa::Matrix<T>::Random(n, d), K = sdpa::Matrix<T>::Random(n, d),
                        V = sdpa::Matrix<T>::Random(n, d);
  sdpa::Matrix<T> out(n, d);
  sdpa::Options options;
  options.kernel = kernel;
  options.threads = 1;
  sdpa::attention_into(Q, K, V, out, options);  // warm the per-thread scratch
  for (auto _ : state) {
    sdpa::attention_into(Q, K, V, out, options);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(4.0 * double(n) * double(n) * double(d), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

void register_all() {
  const std::pair<const char*, sdpa::Kernel> paths[] = {
      {"reference", sdpa::Kernel::Reference}, {"blocked", sdpa::Kernel::Blocked}, {"simd", sdpa::Kernel::Simd}};
  for (const Index n : {4, 8, 11, 16, 64, 256, 1024})
    for (const Index d : {16, 64, 128}) {
      const std::string shape = "/N:" + std::to_string(n) + "/d:" + std::to_string(d);
      for (const auto& [name, kernel] : paths) {
        benchmark::RegisterBenchmark(("auto/float/" + std::string(name) + shape).c_str(), BM_path<float>, kernel, n, d);
        if (kernel != sdpa::Kernel::Simd)  // Simd runs Blocked for double
          benchmark::RegisterBenchmark(("auto/double/" + std::string(name) + shape).c_str(), BM_path<double>, kernel,
                                       n, d);
      }
    }
}

}  // namespace

int main(int argc, char** argv) { return sdpa_bench::run_benchmarks(argc, argv, register_all); }

