// bench_variants.cpp - what each model variant costs over plain attention, measured in pairs.
//
// Each iteration runs the variant and then plain attention on the same inputs, timing both:
// the benchmark's time is the variant's (manual time), and its counter `vs_plain` is the
// variant's total time over plain's across the iterations, so that the ratio the README's
// bars are stated in is measured side by side, interleaved, immune to the machine's drift
// (docs/design.md, "Performance model"). GFLOPS counts the FLOPs of plain attention (4 N^2 d
// H; causal half of it), so a variant that skips work shows a higher rate.
//
//   variants/<variant>/N:2048/d:64/threads:T      softcap, alibi, sinks, or all three, against
//                                                 plain non-causal attention
//   variants/window1024/N:16384/d:64/threads:T    causal with window (1024, 0) against causal
//                                                 (`vs_plain`) and against full, non-causal
//                                                 attention (`vs_full`)
//   varlen/lengths:2048,1400,512,128/d:64/threads:T
//                                                 packed causal sequences (attention_varlen),
//                                                 against the four sequences in separate calls
//                                                 (`vs_separate`) and the batch padded to 2048
//                                                 with sequence_lengths (`vs_padded`)
//   paged/decode/N:8192/d:64/threads:T            one query per head against a PagedKVCache of
//                                                 16-token pages in shuffled order, every head in
//                                                 one call (page by page), against the heads one
//                                                 by one on a KVCache (`vs_contiguous`: time
//                                                 ratio; tokens_per_s), against every head of
//                                                 the KVCache in one batched call
//                                                 (`vs_contiguous_batched`), and the paged heads
//                                                 one by one against the KVCache's
//                                                 (`by_head_vs_contiguous`)
//
// One iteration = 8 heads, [1, N, 8, d] (the projected layout), Kernel::Simd, 1 or 2 threads.
//
//   bench_variants --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <sdpa/sdpa.hpp>

#include "context.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

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

/// Runs every call of `calls` in turn in each iteration, timing each: the benchmark's time is
/// the first call's (manual time); returns each call's total time over the iterations.
template <class... Calls>
std::array<double, sizeof...(Calls)> time_interleaved(benchmark::State& state, const Calls&... calls) {
  using Clock = std::chrono::steady_clock;
  std::array<double, sizeof...(Calls)> totals{};
  for (auto _ : state) {
    std::size_t i = 0;
    double first = 0;
    const auto time = [&](const auto& call) {
      const auto start = Clock::now();
      call();
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (i == 0) first = seconds;
      totals[i++] += seconds;
    };
    (time(calls), ...);
    benchmark::ClobberMemory();
    state.SetIterationTime(first);
  }
  return totals;
}

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
  if (options.window.left != sdpa::Window::unbounded) {  // also against every query seeing every key
    const sdpa::Options full = variant("plain", false, threads);
    const auto seconds =
        time_interleaved(state, [&] { w.run(d, options); }, [&] { w.run(d, plain); }, [&] { w.run(d, full); });
    state.counters["vs_plain"] = seconds[0] / seconds[1];
    state.counters["vs_full"] = seconds[0] / seconds[2];
  } else {
    const auto seconds = time_interleaved(state, [&] { w.run(d, options); }, [&] { w.run(d, plain); });
    state.counters["vs_plain"] = seconds[0] / seconds[1];
  }
  const double pairs = causal ? double(n) * double(n + 1) / 2 : double(n) * double(n);
  state.counters["GFLOPS"] = benchmark::Counter(4.0 * pairs * double(d) * double(kHeads),
                                                benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

/// Packed sequences against separate calls and against padding, interleaved in each iteration.
void BM_varlen(benchmark::State& state, std::vector<Index> lengths, Index d, int threads) {
  const Index total = std::accumulate(lengths.begin(), lengths.end(), Index(0));
  const Index longest = *std::max_element(lengths.begin(), lengths.end()), batch = Index(lengths.size());
  Workspace& packed = Workspace::get(total, d);
  Workspace& padded = Workspace::get(batch * longest, d);  // [B, longest, H, d]
  std::vector<Index> offsets{0};
  for (const Index n : lengths) offsets.push_back(offsets.back() + n);
  sdpa::Options options = variant("plain", true, threads);
  const auto view = [&](auto& m, Index b, Index n, Index first) {
    using T = std::remove_reference_t<decltype(m(0, 0))>;
    return sdpa::TensorView<T>::bnhd(m.data() + first * kHeads * d, b, n, kHeads, d);
  };
  const auto run_packed = [&] {
    sdpa::attention_varlen<float>(view(packed.q, 1, total, 0), view(packed.k, 1, total, 0), view(packed.v, 1, total, 0),
                                  view(packed.out, 1, total, 0), offsets, offsets, options);
  };
  const auto run_separate = [&] {
    for (std::size_t b = 0; b < lengths.size(); ++b)
      sdpa::attention<float>(view(packed.q, 1, lengths[b], offsets[b]), view(packed.k, 1, lengths[b], offsets[b]),
                             view(packed.v, 1, lengths[b], offsets[b]), view(packed.out, 1, lengths[b], offsets[b]),
                             options);
  };
  sdpa::Options padding = options;
  padding.sequence_lengths = lengths;
  const auto run_padded = [&] {
    sdpa::attention<float>(view(padded.q, batch, longest, 0), view(padded.k, batch, longest, 0),
                           view(padded.v, batch, longest, 0), view(padded.out, batch, longest, 0), padding);
  };
  run_packed(), run_separate(), run_padded();  // warm-up
  const auto seconds = time_interleaved(state, run_packed, run_separate, run_padded);
  state.counters["vs_separate"] = seconds[0] / seconds[1];
  state.counters["vs_padded"] = seconds[0] / seconds[2];
  double pairs = 0;
  for (const Index n : lengths) pairs += double(n) * double(n + 1) / 2;
  state.counters["GFLOPS"] = benchmark::Counter(4.0 * pairs * double(d) * double(kHeads),
                                                benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

/// Decoding from a paged cache whose pages lie in shuffled order, against a contiguous one.
void BM_paged_decode(benchmark::State& state, Index n, Index d, int threads) {
  constexpr Index kPage = 16;
  sdpa::PagedKVCache<float> paged(kHeads, d, d, kPage, n / kPage + 1);
  sdpa::KVCache<float> flat(1, kHeads, d, d, n);
  const Workspace& w = Workspace::get(n, d);
  const Index filled = paged.add_sequence();
  paged.append(filled, w.k, w.v);
  flat.append(0, w.k, w.v);
  std::vector<Index> table = paged.page_table(filled);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  const Index scattered = paged.adopt(table, n);  // the same pages, visited in shuffled order
  const sdpa::Matrix<float> q = w.q.topRows(1);
  sdpa::Matrix<float> out(1, d), all_heads(1, kHeads * d);
  const sdpa::Options options = variant("plain", false, threads);
  const auto run_paged = [&] { sdpa::attention_into(q, paged, scattered, all_heads, options); };
  const auto run_paged_by_head = [&] {
    for (Index h = 0; h < kHeads; ++h)
      out = sdpa::attention(q.middleCols(h * d, d), paged.keys(scattered, h), paged.values(scattered, h), options);
  };
  const auto run_flat = [&] {
    for (Index h = 0; h < kHeads; ++h) {
      const sdpa::MatrixView<const float> k = flat.keys(0, h), v = flat.values(0, h);
      sdpa::attention_into(q.middleCols(h * d, d), Eigen::Map<const sdpa::Matrix<float>>(k.data, n, d),
                           Eigen::Map<const sdpa::Matrix<float>>(v.data, n, d), out, options);
    }
  };
  sdpa::Matrix<float> flat_heads(1, kHeads * d);
  const auto run_flat_batched = [&] {  // every head in one batched call: [1, 1, H, d] against [1, H, N, d]
    using In = sdpa::TensorView<const float>;
    sdpa::attention(In::bnhd(q.data(), 1, 1, kHeads, d), In::bhnd(flat.keys(0, 0).data, 1, kHeads, n, d),
                    In::bhnd(flat.values(0, 0).data, 1, kHeads, n, d),
                    sdpa::TensorView<float>::bnhd(flat_heads.data(), 1, 1, kHeads, d), options);
  };
  run_paged(), run_paged_by_head(), run_flat(), run_flat_batched();  // warm-up
  const auto seconds = time_interleaved(state, run_paged, run_flat, run_paged_by_head, run_flat_batched);
  state.counters["vs_contiguous"] = seconds[0] / seconds[1];
  state.counters["by_head_vs_contiguous"] = seconds[2] / seconds[1];
  state.counters["vs_contiguous_batched"] = seconds[0] / seconds[3];
  state.counters["tokens_per_s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
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
    benchmark::RegisterBenchmark(("paged/decode/N:8192/d:64/threads:" + std::to_string(threads)).c_str(),
                                 BM_paged_decode, 8192, 64, threads)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("varlen/lengths:2048,1400,512,128/d:64/threads:" + std::to_string(threads)).c_str(),
                                 BM_varlen, std::vector<Index>{2048, 1400, 512, 128}, 64, threads)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) { return sdpa_bench::run_benchmarks(argc, argv, register_all); }

