// benchmarks/ring_model.cpp - plays ring attention's schedule with modelled costs and checks
// the closed-form estimate of docs/distributed.md against it.
//
//   ring_model [node GFLOP/s] [link Gb/s]      (defaults: 1000 GFLOP/s, 100 Gb/s)
//
// The schedule is ring_attention's (include/sdpa/mpi.hpp): at step s rank r holds the K/V
// shard of rank (r - s) mod P, computes every (query chunk, key chunk) block of it that
// causality leaves (a block on the diagonal costs half), and meanwhile passes the shard on;
// step s + 1 starts when both the compute and the transfer of step s are done. Costs: a
// block of a x b tokens costs 4 a b d H flops at the node's rate, a shard of n tokens
// 2 n H_kv d bytes per element over the link. The closed form (per rank, zig-zag, causal):
//     T = P * max(2 (N/P)^2 d H / F, 2 (N/P) H_kv d b / B)
// Exits 1 when the simulated time differs from it by more than 1%, for any case printed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

struct Range {
  double begin, end;
};

// The chunk helpers of sdpa::mpi (contiguous_shard, zigzag_shard), on token counts.
std::vector<Range> contiguous(double tokens, int ranks, int rank) {
  const long long n = (long long)tokens, base = n / ranks, extra = n % ranks;
  const long long begin = rank * base + std::min<long long>(rank, extra);
  return {{double(begin), double(begin + base + (rank < extra ? 1 : 0))}};
}
std::vector<Range> zigzag(double tokens, int ranks, int rank) {
  return {contiguous(tokens, 2 * ranks, rank)[0], contiguous(tokens, 2 * ranks, 2 * ranks - 1 - rank)[0]};
}

struct Model {
  double tokens, heads, kv_heads, dim, bytes, flops_per_second, bytes_per_second;
};

/// Flops of rank `rank`'s queries against `keys`, causal, as ring_attention computes them.
double block_flops(const Model& m, const std::vector<Range>& queries, const std::vector<Range>& keys) {
  double flops = 0;
  for (const Range& q : queries)
    for (const Range& k : keys) {
      const double a = q.end - q.begin, b = k.end - k.begin;
      if (k.begin == q.begin) flops += 4 * a * (a + 1) / 2 * m.dim * m.heads;  // the diagonal: half
      else if (k.end <= q.begin) flops += 4 * a * b * m.dim * m.heads;         // before: all of it
    }
  return flops;
}

/// The schedule, played: the time the last rank finishes.
double simulate(const Model& m, int ranks, bool use_zigzag) {
  std::vector<std::vector<Range>> shards;
  for (int r = 0; r < ranks; ++r) shards.push_back(use_zigzag ? zigzag(m.tokens, ranks, r) : contiguous(m.tokens, ranks, r));
  std::vector<double> clock(std::size_t(ranks), 0.0);
  for (int step = 0; step < ranks; ++step) {
    std::vector<double> next(clock);
    for (int r = 0; r < ranks; ++r) {
      const int source = (r - step + ranks) % ranks;
      double shard_tokens = 0;
      for (const Range& range : shards[std::size_t(source)]) shard_tokens += range.end - range.begin;
      const double compute = block_flops(m, shards[std::size_t(r)], shards[std::size_t(source)]) / m.flops_per_second;
      const double transfer = step + 1 < ranks ? 2 * shard_tokens * m.kv_heads * m.dim * m.bytes / m.bytes_per_second : 0;
      // The receive of step s + 1 needs the left neighbour's send, which starts with its step s.
      const int left = (r - 1 + ranks) % ranks;
      next[std::size_t(r)] = std::max(clock[std::size_t(r)] + compute, std::max(clock[std::size_t(r)], clock[std::size_t(left)]) + transfer);
    }
    clock = next;
  }
  return *std::max_element(clock.begin(), clock.end());
}

double closed_form(const Model& m, int ranks) {
  const double n = m.tokens / ranks;
  const double compute = 2 * n * n * m.dim * m.heads / m.flops_per_second;
  const double transfer = 2 * n * m.kv_heads * m.dim * m.bytes / m.bytes_per_second;
  return ranks * std::max(compute, transfer) - (transfer > compute ? transfer - compute : 0);
}

}  // namespace

int main(int argc, char** argv) {
  const double gflops = argc > 1 ? std::atof(argv[1]) : 1000.0, gbits = argc > 2 ? std::atof(argv[2]) : 100.0;
  bool ok = true;
  std::printf("node %.0f GFLOP/s, link %.0f Gb/s; causal, d = 128, 32 query heads, 8 kv heads, bf16\n", gflops, gbits);
  std::printf("%8s %6s %12s %12s %12s %10s %14s\n", "tokens", "ranks", "zig-zag s", "estimate s", "contiguous s",
              "speedup", "hidden above");
  for (const double tokens : {1048576.0, 131072.0})
    for (const int ranks : {1, 2, 8, 64, 512}) {
      const Model m{tokens, 32, 8, 128, 2, gflops * 1e9, gbits * 1e9 / 8};
      const double simulated = simulate(m, ranks, true), estimate = closed_form(m, ranks);
      const double single = simulate(m, 1, true);
      // The shard length above which a step's compute hides its transfer: n >= H_kv b F / (H B).
      const double hidden = m.kv_heads * m.bytes * m.flops_per_second / (m.heads * m.bytes_per_second);
      std::printf("%8.0f %6d %12.3f %12.3f %12.3f %9.1fx %8.0f tokens\n", tokens, ranks, simulated, estimate,
                  simulate(m, ranks, false), single / simulated, hidden);
      // The diagonal blocks' +1 terms and uneven chunks make the simulation a little off the formula.
      if (std::fabs(simulated - estimate) > 0.01 * estimate) ok = false;
    }
  std::printf("%s\n", ok ? "simulation within 1% of the estimate" : "simulation and estimate DISAGREE");
  return ok ? 0 : 1;
}
