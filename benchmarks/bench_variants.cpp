// bench_variants.cpp - what each model variant costs over plain attention, measured in pairs.
//
// Each iteration runs plain attention and then the variant on the same inputs, timing both:
// the benchmark's time is the variant's (manual time), and its counter `vs_plain` is the
// variant's total time over plain's across the iterations, so that the ratio the README's
// bars are stated in is measured side by side, interleaved, immune to the machine's drift
// (docs/design.md, "Performance model"). GFLOPS counts the FLOPs of plain attention (4 N^2 d
// H; causal half of it), so a variant that skips work shows a higher rate.
//
//   variants/<variant>/N:2048/d:64/threads:T      softcap, alibi, sinks, or all three, against
//                                                 plain non-causal attention
//   variants/window1024/N:16384/d:64/threads:T    causal with window (1024, 0) against causal
//
// One iteration = 8 heads, [1, N, 8, d] (the projected layout), Kernel::Simd, 1 or 2 threads.
//
//   bench_variants --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <sdpa/sdpa.hpp>

#include "context.hpp"

#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <random>
#include <string>
#include <utility>

namespace {

using sdpa::Index;
constexpr Index kHeads = 8;

/// Q, K, V and the output of one shape, [N, H d] row-major, random in [-1, 1].
struct Workspace {
  sdpa::Matrix<float> q, k, v, out;

  static Workspace& get(Index n, Index d) {
    static std::map<std::pair<Index, Index>, Workspace> cache;
    auto it = cache.find({n, d});
    if (it != cache.end()) return it->second;
    Workspace& w = cache[{n, d}];
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> dist(-1, 1);
    for (auto* m : {&w.q, &w.k, &w.v, &w.out}) {
      m->resize(n, kHeads * d);
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = dist(gen);
    }
    return w;
  }
  void run(Index d, const sdpa::Options& options) {
    const Index n = q.rows();
    sdpa::attention<float>(sdpa::TensorView<const float>::bnhd(q.data(), 1, n, kHeads, d),
                           sdpa::TensorView<const float>::bnhd(k.data(), 1, n, kHeads, d),
                           sdpa::TensorView<const float>::bnhd(v.data(), 1, n, kHeads, d),
                           sdpa::TensorView<float>::bnhd(out.data(), 1, n, kHeads, d), options);
  }
};

sdpa::Options variant(const std::string& name, bool causal, int threads) {
  sdpa::Options o;
  o.kernel = sdpa::Kernel::Simd;
  o.causal = causal;
  o.threads = threads;
  if (name == "softcap" || name == "all") o.softcap = 30.0;  // Gemma 2's attention cap is 50; scores here are O(1)
  if (name == "alibi" || name == "all") o.alibi_slopes = sdpa::alibi_slopes(kHeads);
  if (name == "sinks" || name == "all") o.sinks = std::vector<double>(kHeads, 0.5);
  if (name == "window1024") o.window = {1024, 0};
  return o;
}

void BM_variant(benchmark::State& state, std::string name, Index n, Index d, bool causal, int threads) {
  Workspace& w = Workspace::get(n, d);
  sdpa::Options plain = variant("plain", causal, threads), options = variant(name, causal, threads);
  w.run(d, plain);  // warm-up: scratch grown, pages touched
  w.run(d, options);
  using Clock = std::chrono::steady_clock;
  double plain_seconds = 0, variant_seconds = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    w.run(d, plain);
    const auto t1 = Clock::now();
    w.run(d, options);
    const auto t2 = Clock::now();
    benchmark::ClobberMemory();
    plain_seconds += std::chrono::duration<double>(t1 - t0).count();
    const double seconds = std::chrono::duration<double>(t2 - t1).count();
    variant_seconds += seconds;
    state.SetIterationTime(seconds);
  }
  state.counters["vs_plain"] = variant_seconds / plain_seconds;
  const double pairs = causal ? double(n) * double(n + 1) / 2 : double(n) * double(n);
  state.counters["GFLOPS"] = benchmark::Counter(4.0 * pairs * double(d) * double(kHeads),
                                                benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void register_all() {
  for (const int threads : {1, 2}) {
    for (const char* name : {"softcap", "alibi", "sinks", "all"})
      benchmark::RegisterBenchmark(("variants/" + std::string(name) + "/N:2048/d:64/threads:" + std::to_string(threads)).c_str(),
                                   BM_variant, name, 2048, 64, false, threads)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("variants/window1024/N:16384/d:64/threads:" + std::to_string(threads)).c_str(),
                                 BM_variant, "window1024", 16384, 64, true, threads)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  sdpa_bench::add_build_context();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
