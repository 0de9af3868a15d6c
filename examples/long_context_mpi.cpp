// examples/long_context_mpi.cpp - one long sequence split across MPI ranks: ring attention.
//
//   mpirun -np 2 build/examples/long_context_mpi [tokens]
//
// Each rank holds the queries, keys and values of two chunks of the sequence (the zig-zag
// split: rank r holds chunks r and 2P - 1 - r of 2P, so causal work is shared evenly), never
// the whole sequence's keys. The K/V chunks travel around the ring of ranks while each rank
// computes its queries against the chunk it holds; partial results merge by their
// log-sum-exps. Each rank prints its share of the work, then checks a sample of its rows
// against one process computing those rows over the whole sequence. Exits 1 if any differs.
#include <sdpa/mpi.hpp>
#include <sdpa/sdpa.hpp>

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

constexpr sdpa::Index kHeads = 4, kDim = 32;

/// Token t's row of head h (Q, K or V): a pseudo-random function of (which, t, h, feature),
/// so that every rank can make any token's row without holding the sequence.
float element(int which, sdpa::Index t, sdpa::Index h, sdpa::Index f) {
  std::uint64_t x = std::uint64_t(which) * 0x9E3779B97F4A7C15ull ^ std::uint64_t(t) * 0xBF58476D1CE4E5B9ull ^
                    std::uint64_t(h * kDim + f) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  x *= 0xD6E8FEB86659FD93ull;
  x ^= x >> 32;
  return float(x % 20001) / 10000.0f - 1.0f;  // in [-1, 1]
}

/// [tokens, heads, d] rows of the given token ranges.
std::vector<float> rows(int which, const std::vector<sdpa::mpi::TokenRange>& ranges) {
  std::vector<float> out;
  for (const auto& range : ranges)
    for (sdpa::Index t = range.begin; t < range.end; ++t)
      for (sdpa::Index h = 0; h < kHeads; ++h)
        for (sdpa::Index f = 0; f < kDim; ++f) out.push_back(element(which, t, h, f));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const sdpa::Index tokens = argc > 1 ? std::atol(argv[1]) : 8192;

  // This rank's share: two chunks of the sequence, and only their rows.
  const std::vector<sdpa::mpi::TokenRange> shard = sdpa::mpi::zigzag_shard(tokens, ranks, rank);
  sdpa::Index local = 0;
  for (const auto& range : shard) local += range.size();
  const std::vector<float> q = rows(0, shard), k = rows(1, shard), v = rows(2, shard);
  std::vector<float> out(q.size());
  const auto view = [&](const std::vector<float>& x) {
    return sdpa::TensorView<const float>::bnhd(x.data(), 1, local, kHeads, kDim);
  };
  sdpa::Options options;
  options.causal = true;
  sdpa::mpi::RingStats stats;
  sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q), view(k), view(v),
                            sdpa::TensorView<float>::bnhd(out.data(), 1, local, kHeads, kDim), shard, options, &stats);
  std::printf("rank %d of %d: tokens [%ld, %ld) and [%ld, %ld): %ld blocks computed, %ld skipped above the "
              "diagonal; %.3f s computing, %.3f s waiting for keys and values\n",
              rank, ranks, long(shard[0].begin), long(shard[0].end), long(shard[1].begin), long(shard[1].end),
              long(stats.pairs_computed), long(stats.pairs_skipped), stats.compute_seconds, stats.wait_seconds);

  // A sample of this rank's rows, computed by one process over every key it may see.
  int wrong = 0;
  double worst = 0;
  std::mt19937 gen(static_cast<unsigned>(rank));
  for (int sample = 0; sample < 4 && local > 0; ++sample) {
    const sdpa::Index row = std::uniform_int_distribution<sdpa::Index>(0, local - 1)(gen);
    sdpa::Index position = row < shard[0].size() ? shard[0].begin + row : shard[1].begin + row - shard[0].size();
    const std::vector<sdpa::mpi::TokenRange> seen{{0, position + 1}};  // causal: keys 0..position
    const std::vector<float> qi = rows(0, {{position, position + 1}}), ks = rows(1, seen), vs = rows(2, seen);
    for (sdpa::Index h = 0; h < kHeads; ++h) {
      const auto head = [&](const std::vector<float>& x, sdpa::Index n) {
        return Eigen::Map<const sdpa::Matrix<float>, 0, Eigen::OuterStride<>>(x.data() + h * kDim, n, kDim,
                                                                             Eigen::OuterStride<>(kHeads * kDim));
      };
      const sdpa::Matrix<float> expected = sdpa::attention(head(qi, 1), head(ks, position + 1), head(vs, position + 1));
      for (sdpa::Index f = 0; f < kDim; ++f) {
        const double error = std::fabs(double(out[std::size_t((row * kHeads + h) * kDim + f)]) - expected(0, f));
        worst = std::max(worst, error);
        wrong += error > 1e-5;
      }
    }
  }
  std::printf("rank %d: 4 sampled rows against one process: largest difference %.2e: %s\n", rank, worst,
              wrong ? "WRONG" : "ok");
  int any_wrong = 0;
  MPI_Allreduce(&wrong, &any_wrong, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_wrong ? 1 : 0;
}
