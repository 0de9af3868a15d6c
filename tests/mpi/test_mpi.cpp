// tests/mpi/test_mpi.cpp - ring attention and sharded decoding across MPI ranks, run by CTest
// under mpirun with 1, 2, 3 and 4 ranks (tests/mpi/CMakeLists.txt).
//
// Every rank builds the same whole problem from one seed (rank 0's, broadcast), runs the
// distributed call on its shard, and checks its rows against the long-double reference of
// the whole problem within the single-process tolerance plus the merge's (merge_tolerance).
// Checks never abort a test case (CHECK, not REQUIRE): a rank that left a test early would
// leave the others waiting in a collective. Test cases run in declaration order on every rank
// (tests/mpi/main.cpp, the runner).
#include "../catch.hpp"
#include "../support.hpp"

#include <sdpa/mpi.hpp>

#include <mpi.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace sdpa_test;
using sdpa::mpi::TokenRange;

int world_rank() { return sdpa::mpi::detail::rank_of(MPI_COMM_WORLD); }
int world_size() { return sdpa::mpi::detail::size_of(MPI_COMM_WORLD); }

/// A whole problem, [B, N, H, d] (bnhd), as every rank generates it.
struct Problem {
  Index batch, tokens, heads, kv_heads, dk, dv;
  std::vector<float> q, k, v;
  Problem(Index b, Index n, Index h, Index hkv, Index dk_, Index dv_, std::uint64_t salt)
      : batch(b), tokens(n), heads(h), kv_heads(hkv), dk(dk_), dv(dv_) {
    auto gen = rng(salt);
    const auto fill = [&](std::vector<float>& x, Index count) {
      const Matrix<float> m = random_matrix<float>(1, count, gen, -2.0, 2.0);
      x.assign(m.data(), m.data() + count);
    };
    fill(q, b * n * h * dk);
    fill(k, b * n * hkv * dk);
    fill(v, b * n * hkv * dv);
  }
  /// Head h of sequence b, all N tokens, as a matrix (what the reference takes).
  static Matrix<float> head(const std::vector<float>& x, Index batch_index, Index n, Index heads, Index h, Index d) {
    Matrix<float> m(n, d);
    for (Index t = 0; t < n; ++t)
      for (Index f = 0; f < d; ++f) m(t, f) = x[std::size_t(((batch_index * n + t) * heads + h) * d + f)];
    return m;
  }
};

/// The rows of a [B, N, H, d] tensor that `shard` holds, in its order, as [B, n, H, d] in T.
template <class T>
std::vector<T> rows_of(const std::vector<float>& x, Index batch, Index n, Index heads, Index d,
                       const std::vector<TokenRange>& shard) {
  std::vector<T> out;
  for (Index b = 0; b < batch; ++b)
    for (const TokenRange& range : shard)
      for (Index t = range.begin; t < range.end; ++t)
        for (Index f = 0; f < heads * d; ++f) out.push_back(T(x[std::size_t((b * n + t) * heads * d + f)]));
  return out;
}

/// Rounds every element through T and back (the inputs a 16-bit run computes on).
template <class T>
std::vector<float> rounded(std::vector<float> x) {
  for (float& e : x) e = float(T(e));
  return x;
}

/// The merge's share of the error of a row merged from `pieces` partial results: each
/// partial's LSE is off by about eps (|lse| + 1), which moves its weight e^(lse - m) by as
/// much relative; the merged row is off by twice that times what it blends, plus three
/// roundings per merge. Summed over the merges, doubled.
Wide merge_tolerance(const Expected& e, Index i, Index pieces) {
  const Wide eps = Wide(std::numeric_limits<float>::epsilon());
  const Wide lse = std::isfinite(e.lse[std::size_t(i)]) ? std::fabs(e.lse[std::size_t(i)]) : 0;
  return 2 * Wide(pieces) * (4 * eps * (lse + 1) + 3 * eps) * e.value_magnitude[std::size_t(i)];
}

/// The long-double reference of head h of sequence b: its last `queries` query rows against
/// all N keys, with the global causal mask and padding.
Expected reference_of(const Problem& p, const std::vector<float>& q, const std::vector<float>& k,
                      const std::vector<float>& v, Index b, Index h, Index queries, bool causal,
                      const std::vector<Index>& lengths) {
  MaskSpec mask;
  mask.causal = causal;
  if (!lengths.empty()) mask.lengths = {lengths[std::size_t(b)]};
  const Index g = h / (p.heads / p.kv_heads);
  const Matrix<float> qh = Problem::head(q, b, p.tokens, p.heads, h, p.dk).bottomRows(queries);
  return reference(qh, Problem::head(k, b, p.tokens, p.kv_heads, g, p.dk),
                   Problem::head(v, b, p.tokens, p.kv_heads, g, p.dv), 1.0 / std::sqrt(double(p.dk)), mask);
}

/// Checks this rank's rows of `got` ([B, n, H, dv] in T, the rows of `shard`) against the
/// reference of the whole problem, rounded once to T at the end (stored_tolerance).
template <class T>
void check_rows(const Problem& p, const std::vector<float>& q, const std::vector<float>& k,
                const std::vector<float>& v, const std::vector<T>& got, const std::vector<float>& single,
                const std::vector<TokenRange>& shard, bool causal, const std::vector<Index>& lengths, Index pieces,
                const std::string& what) {
  Wide worst = 0, worst_single = 0;
  bool finite = true;
  const bool rounds_weights = may_round_weights<T, T>(sdpa::Kernel::Auto, p.tokens, p.dk, p.dv);  // (one process does)
  Index n_local = 0;
  for (const TokenRange& r : shard) n_local += r.size();
  for (Index b = 0; b < p.batch; ++b)
    for (Index h = 0; h < p.heads; ++h) {
      const Expected e = reference_of(p, q, k, v, b, h, p.tokens, causal, lengths);
      Index local = 0;
      for (const TokenRange& r : shard)
        for (Index i = r.begin; i < r.end; ++i, ++local)
          for (Index c = 0; c < p.dv; ++c) {
            const double x = double(got[std::size_t(((b * n_local + local) * p.heads + h) * p.dv + c)]);
            finite = finite && std::isfinite(x);
            const Wide tol = stored_tolerance<T>(tolerance<float>(e, i, p.tokens, p.dk) + merge_tolerance(e, i, pieces) +
                                                     rounded_weights_tolerance(e, i, rounds_weights),
                                                 e.out(i, c));
            worst = std::max(worst, std::fabs(Wide(x) - e.out(i, c)) / tol);
            // One process's result (within its own tolerance of the reference): within both.
            const Wide one = single[std::size_t(((b * p.tokens + i) * p.heads + h) * p.dv + c)];
            worst_single = std::max(worst_single, std::fabs(Wide(x) - one) / (2 * tol));
          }
    }
  INFO(what << " on rank " << world_rank() << " of " << world_size() << ": worst error/tolerance "
            << double(worst) << " against the reference, " << double(worst_single) << " against one process");
  CHECK(finite);
  CHECK(worst <= 1);
  CHECK(worst_single <= 1);
}

/// Runs ring attention on this rank's `shard` of `p` and checks it.
template <class T>
void check_ring(const Problem& p, const std::vector<TokenRange>& shard, bool causal, std::vector<Index> lengths,
                const std::string& what) {
  const std::vector<float> q = rounded<T>(p.q), k = rounded<T>(p.k), v = rounded<T>(p.v);
  Index n = 0;
  for (const TokenRange& r : shard) n += r.size();
  std::vector<T> ql = rows_of<T>(q, p.batch, p.tokens, p.heads, p.dk, shard);
  std::vector<T> kl = rows_of<T>(k, p.batch, p.tokens, p.kv_heads, p.dk, shard);
  std::vector<T> vl = rows_of<T>(v, p.batch, p.tokens, p.kv_heads, p.dv, shard);
  std::vector<T> out(std::size_t(p.batch * n * p.heads * p.dv), T(-7.0f));
  sdpa::Options options;
  options.causal = causal;
  options.sequence_lengths = lengths;
  sdpa::mpi::RingStats stats;
  sdpa::mpi::ring_attention<T, T>(
      MPI_COMM_WORLD, sdpa::TensorView<const T>::bnhd(ql.data(), p.batch, n, p.heads, p.dk),
      sdpa::TensorView<const T>::bnhd(kl.data(), p.batch, n, p.kv_heads, p.dk),
      sdpa::TensorView<const T>::bnhd(vl.data(), p.batch, n, p.kv_heads, p.dv),
      sdpa::TensorView<T>::bnhd(out.data(), p.batch, n, p.heads, p.dv), shard, options, &stats);
  // The same call in one process: sdpa::attention over the whole sequence.
  const TokenRange all{0, p.tokens};
  std::vector<T> qa = rows_of<T>(q, p.batch, p.tokens, p.heads, p.dk, {all});
  std::vector<T> ka = rows_of<T>(k, p.batch, p.tokens, p.kv_heads, p.dk, {all});
  std::vector<T> va = rows_of<T>(v, p.batch, p.tokens, p.kv_heads, p.dv, {all});
  std::vector<T> one(std::size_t(p.batch * p.tokens * p.heads * p.dv));
  sdpa::attention<T, T>(sdpa::TensorView<const T>::bnhd(qa.data(), p.batch, p.tokens, p.heads, p.dk),
                        sdpa::TensorView<const T>::bnhd(ka.data(), p.batch, p.tokens, p.kv_heads, p.dk),
                        sdpa::TensorView<const T>::bnhd(va.data(), p.batch, p.tokens, p.kv_heads, p.dv),
                        sdpa::TensorView<T>::bnhd(one.data(), p.batch, p.tokens, p.heads, p.dv), options);
  check_rows(p, q, k, v, out, std::vector<float>(one.begin(), one.end()), shard, causal, lengths, 2 * world_size(),
             what);
}

/// Contiguous shards of the given sizes, in rank order.
std::vector<TokenRange> shard_of_sizes(const std::vector<Index>& sizes) {
  Index begin = 0;
  for (int r = 0; r < world_rank(); ++r) begin += sizes[std::size_t(r)];
  return {{begin, begin + sizes[std::size_t(world_rank())]}};
}

/// Uneven sizes, 2 r + 5 tokens for rank r, except rank 1 of 3 or more, which holds none.
std::vector<Index> uneven_sizes() {
  std::vector<Index> sizes;
  for (int r = 0; r < world_size(); ++r) sizes.push_back(world_size() >= 3 && r == 1 ? 0 : 2 * r + 5);
  return sizes;
}
Index total_of(const std::vector<Index>& sizes) { return std::accumulate(sizes.begin(), sizes.end(), Index(0)); }

}  // namespace

TEST_CASE("ring attention equals one process: contiguous uneven shards, an empty one, grouped heads", "[mpi]") {
  const std::vector<Index> sizes = uneven_sizes();
  const Index n = total_of(sizes);
  const Problem p(2, n, 4, 2, 16, 8, 1);
  check_ring<float>(p, shard_of_sizes(sizes), false, {}, "non-causal");
  check_ring<float>(p, shard_of_sizes(sizes), true, {}, "causal, contiguous shards");
  check_ring<float>(p, shard_of_sizes(sizes), false, {n, n / 2}, "sequence lengths");
}

TEST_CASE("ring attention, causal, zig-zag shards of uneven chunks, with padding", "[mpi]") {
  const Index n = 61;
  const Problem p(2, n, 4, 1, 16, 24, 2);
  const auto shard = sdpa::mpi::zigzag_shard(n, world_size(), world_rank());
  check_ring<float>(p, shard, true, {}, "zig-zag causal");
  check_ring<float>(p, shard, true, {n, 33}, "zig-zag causal, padded");
}

TEST_CASE("ring attention, causal, strided chunks (rank r holds chunks r and r + P)", "[mpi]") {
  const Index n = 50;
  const Problem p(1, n, 2, 2, 8, 8, 3);
  const int P = world_size(), r = world_rank();
  const auto chunk = [&](int c) { return sdpa::mpi::contiguous_shard(n, 2 * P, c).front(); };
  check_ring<float>(p, {chunk(r + P), chunk(r)}, true, {}, "strided chunks, later one first");
}

TEST_CASE("ring attention on bfloat16 and fp16 data: computed in float, rounded once", "[mpi]") {
  const Index n = 45;
  const Problem p(1, n, 4, 2, 32, 16, 4);
  const auto shard = sdpa::mpi::zigzag_shard(n, world_size(), world_rank());
  check_ring<Eigen::bfloat16>(p, shard, true, {}, "bfloat16");
  check_ring<Eigen::half>(p, shard, false, {}, "fp16");
}

namespace {
/// Sharded decoding of `p`'s last `queries` tokens against the cache of all its tokens,
/// split by `sizes`, with K and V stored in S.
template <class S>
void check_decode(const Problem& p, Index queries, const std::vector<Index>& sizes, bool causal,
                  std::vector<Index> lengths, const std::string& what) {
  const std::vector<float> k = rounded<S>(p.k), v = rounded<S>(p.v);
  const auto shard = shard_of_sizes(sizes);
  const TokenRange last{p.tokens - queries, p.tokens};
  std::vector<float> q = rows_of<float>(p.q, p.batch, p.tokens, p.heads, p.dk, {last});
  if (world_rank() != 0) std::fill(q.begin(), q.end(), 99.0f);  // only the root's queries count
  std::vector<S> kl = rows_of<S>(k, p.batch, p.tokens, p.kv_heads, p.dk, shard);
  std::vector<S> vl = rows_of<S>(v, p.batch, p.tokens, p.kv_heads, p.dv, shard);
  const Index n = shard.front().size();
  std::vector<float> out(std::size_t(p.batch * queries * p.heads * p.dv), -7.0f);
  sdpa::Options options;
  options.causal = causal;
  options.sequence_lengths = lengths;
  sdpa::mpi::sharded_attention<float, S>(MPI_COMM_WORLD,
                                         sdpa::TensorView<float>::bnhd(q.data(), p.batch, queries, p.heads, p.dk),
                                         sdpa::TensorView<const S>::bnhd(kl.data(), p.batch, n, p.kv_heads, p.dk),
                                         sdpa::TensorView<const S>::bnhd(vl.data(), p.batch, n, p.kv_heads, p.dv),
                                         sdpa::TensorView<float>::bnhd(out.data(), p.batch, queries, p.heads, p.dv),
                                         options);
  CHECK(q == rows_of<float>(p.q, p.batch, p.tokens, p.heads, p.dk, {last}));  // broadcast from the root
  // The reference: the last `queries` rows of the whole problem's attention.
  Wide worst = 0;
  for (Index b = 0; b < p.batch; ++b)
    for (Index h = 0; h < p.heads; ++h) {
      const Expected e = reference_of(p, p.q, k, v, b, h, queries, causal, lengths);
      for (Index i = 0; i < queries; ++i)
        for (Index c = 0; c < p.dv; ++c) {
          const Wide tol = tolerance<float>(e, i, p.tokens, p.dk) + merge_tolerance(e, i, world_size());
          const Wide got = out[std::size_t(((b * queries + i) * p.heads + h) * p.dv + c)];
          worst = std::max(worst, std::fabs(got - e.out(i, c)) / tol);
        }
    }
  INFO(what << " on rank " << world_rank() << " of " << world_size() << ": worst error/tolerance " << double(worst));
  CHECK(worst <= 1);
}
}  // namespace

TEST_CASE("sharded decoding equals one process on every rank", "[mpi]") {
  const std::vector<Index> sizes = uneven_sizes();
  const Index n = total_of(sizes);
  const Problem p(2, n, 8, 2, 16, 16, 5);
  check_decode<float>(p, 1, sizes, false, {}, "one query");
  check_decode<float>(p, 3, sizes, true, {}, "three causal queries (speculative decoding)");
  check_decode<float>(p, 2, sizes, true, {n, n - 4}, "causal queries, padded sequences");
  check_decode<Eigen::bfloat16>(p, 1, sizes, false, {}, "bfloat16 cache under float queries");
  // Shards shorter than the query chunk: the causal boundary falls inside several ranks' shards.
  std::vector<Index> small(std::size_t(world_size()), 2);
  small.back() = 3;
  const Problem tiny(1, 2 * (world_size() - 1) + 3, 2, 1, 8, 8, 6);
  check_decode<float>(tiny, std::min<Index>(4, tiny.tokens), small, true, {}, "the causal boundary across shards");
}

TEST_CASE("inconsistent arguments give the same error on every rank, before any transfer", "[mpi]") {
  const Index n = 4 * world_size();
  const Problem p(1, n, 2, 2, 8, 8, 7);
  const auto shard = sdpa::mpi::contiguous_shard(n, world_size(), world_rank());
  std::vector<float> q = rows_of<float>(p.q, 1, n, 2, 8, shard), k = rows_of<float>(p.k, 1, n, 2, 8, shard);
  std::vector<float> v = k, out(q.size());
  const Index local = shard.front().size();
  const auto view = [&](std::vector<float>& x, Index heads) {
    return sdpa::TensorView<const float>::bnhd(x.data(), 1, local, heads, 8);
  };
  const auto out_view = sdpa::TensorView<float>::bnhd(out.data(), 1, local, 2, 8);
  const bool last = world_rank() == world_size() - 1;
  if (world_size() > 1) {
    // The last rank alone asks for causal attention: each rank's arguments are valid alone.
    sdpa::Options causal_on_last;
    causal_on_last.causal = last;
    require_invalid([&] {
      sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q, 2), view(k, 2), view(v, 2), out_view, shard, causal_on_last);
    }, {"mpi::ring_attention", "options.causal differs", "every rank must pass the same"});
    // The last rank alone has d_v = 4 (the first halves of its buffers: valid alone).
    const Index dv = last ? 4 : 8;
    require_invalid([&] {
      sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q, 2), view(k, 2),
                                sdpa::TensorView<const float>::bnhd(v.data(), 1, local, 2, dv),
                                sdpa::TensorView<float>::bnhd(out.data(), 1, local, 2, dv), shard);
    }, {"d_v differs", "on rank 0"});
    std::vector<float> decode_out(32);
    require_invalid([&] {  // the last rank decodes two queries, the others one
      sdpa::mpi::sharded_attention(MPI_COMM_WORLD, sdpa::TensorView<float>::bnhd(q.data(), 1, last ? 2 : 1, 2, 8),
                                   view(k, 2), view(v, 2),
                                   sdpa::TensorView<float>::bnhd(decode_out.data(), 1, last ? 2 : 1, 2, 8));
    }, {"mpi::sharded_attention", "query tokens differs"});
    // Every rank but the last shifts its range one token on: a gap at 0 and an overlap.
    std::vector<TokenRange> shifted = shard;
    if (!last) shifted.front() = {shard.front().begin + 1, shard.front().end + 1};
    require_invalid([&] {
      sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q, 2), view(k, 2), view(v, 2), out_view, shifted);
    }, {"shards leave a gap at token 0", "together they must cover"});
  }
  // A rank whose ranges do not match its rows: every rank hears which.
  std::vector<TokenRange> wrong = shard;
  if (last) wrong.front().end += 1;
  const std::string at_fault = "rank " + std::to_string(world_size() - 1) + ": ";
  require_invalid([&] { sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q, 2), view(k, 2), view(v, 2), out_view, wrong); },
                  {at_fault.c_str(), "the shard's ranges hold"});
  sdpa::Options masked;
  masked.key_lengths = {1};
  require_invalid([&] {
    sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q, 2), view(k, 2), view(v, 2), out_view, shard, masked);
  }, {"key_lengths", "sequence_lengths"});
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; }));  // nothing written
}
