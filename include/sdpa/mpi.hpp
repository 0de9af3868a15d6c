// sdpa/mpi.hpp - attention over a sequence sharded across MPI ranks: ring attention for
// prefill and training-time forward, and decoding against a KV cache sharded by tokens.
/// \file
/// sdpa::mpi: ring_attention, sharded_attention, and the shard helpers. Optional: sdpa.hpp
/// never includes this header; CMake's sdpa::mpi target links MPI::MPI_CXX (docs/distributed.md).
#pragma once

#include "attention.hpp"
#include "batched.hpp"
#include "kernels/merge.hpp"
#include "storage.hpp"
#include "views.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

SDPA_BEGIN_NAMESPACE
namespace mpi {

/// Global token positions [begin, end) of one sequence.
struct TokenRange {
  Index begin = 0;  ///< the first token's position
  Index end = 0;    ///< one past the last token's position
  /// Tokens in the range.
  Index size() const { return end - begin; }
};

/// Rank `rank`'s share of `tokens` tokens cut into `ranks` contiguous, nearly equal pieces
/// (the first tokens % ranks pieces one token longer).
inline std::vector<TokenRange> contiguous_shard(Index tokens, int ranks, int rank) {
  const Index base = tokens / ranks, extra = tokens % ranks;
  const Index begin = rank * base + std::min<Index>(rank, extra);
  return {{begin, begin + base + (rank < extra ? 1 : 0)}};
}

/// The zig-zag split that balances causal attention (Brandon et al., Striped/zig-zag ring
/// attention): the sequence is cut into 2P nearly equal chunks, and rank r holds chunks r and
/// 2P - 1 - r, in that order, so every rank has one early (cheap) and one late (costly) chunk.
inline std::vector<TokenRange> zigzag_shard(Index tokens, int ranks, int rank) {
  const auto chunk = [&](int c) { return contiguous_shard(tokens, 2 * ranks, c).front(); };
  return {chunk(rank), chunk(2 * ranks - 1 - rank)};
}

/// Where one rank's ring_attention spent its time, for benchmarks and load-balance checks.
struct RingStats {
  double compute_seconds = 0;  ///< in sdpa's kernels and the merges
  double wait_seconds = 0;     ///< blocked in MPI_Waitall for the next K/V shard
  Index pairs_computed = 0;    ///< (query chunk, key chunk, head) blocks computed
  Index pairs_skipped = 0;     ///< blocks wholly above the causal diagonal or padding
};

namespace detail {
using sdpa::detail::fail;

inline int rank_of(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}
inline int size_of(MPI_Comm comm) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  return size;
}

/// Every rank's vector (any lengths), gathered on every rank; `type` is T's MPI datatype.
template <class T>
std::vector<std::vector<T>> allgather(MPI_Comm comm, const std::vector<T>& mine, MPI_Datatype type) {
  const std::size_t ranks = static_cast<std::size_t>(size_of(comm));
  int count = int(mine.size());
  std::vector<int> counts(ranks), offsets(ranks, 0);
  MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm);
  for (std::size_t r = 1; r < ranks; ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  std::vector<T> all(std::size_t(offsets.back() + counts.back()));
  MPI_Allgatherv(mine.data(), count, type, all.data(), counts.data(), offsets.data(), type, comm);
  std::vector<std::vector<T>> out(ranks);
  for (std::size_t r = 0; r < ranks; ++r)
    if (counts[r] > 0) out[r].assign(all.data() + offsets[r], all.data() + offsets[r] + counts[r]);
  return out;
}
inline std::vector<std::vector<long long>> allgather_ints(MPI_Comm comm, const std::vector<long long>& mine) {
  return allgather(comm, mine, MPI_LONG_LONG);
}

/// The collective half of validation: each rank's own checks ran in `local` (which throws
/// std::invalid_argument); their messages are exchanged, so that every rank throws the same
/// error naming the ranks at fault, before any rank enters the ring (where a missing
/// partner would hang). Returns normally on every rank or on none.
template <class Checks>
void check_on_every_rank(MPI_Comm comm, const char* function, Checks&& local) {
  std::string mine;
  try {
    local();
  } catch (const std::invalid_argument& e) {
    mine = e.what();
  }
  const auto all = allgather(comm, std::vector<char>(mine.begin(), mine.end()), MPI_CHAR);
  std::string message;
  for (std::size_t r = 0; r < all.size(); ++r)
    if (!all[r].empty())
      message += (message.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + ": " +
                 std::string(all[r].begin(), all[r].end());
  if (!message.empty()) fail(function, message);
}

/// What every rank must agree on: `fields` (shapes, flags), then the bits of the scale and
/// the soft cap, and the sequence lengths.
inline std::vector<long long> descriptor(std::vector<long long> fields, const Options& options) {
  for (const double value : {options.scale.value_or(0.0), options.softcap.value_or(0.0)}) {
    long long bits = 0;
    std::memcpy(&bits, &value, sizeof value);
    fields.push_back(bits);
  }
  fields.push_back((long long)options.sequence_lengths.size());
  fields.insert(fields.end(), options.sequence_lengths.begin(), options.sequence_lengths.end());
  return fields;
}

/// The same descriptor on every rank, or an error naming the first rank whose descriptor
/// differs from rank 0's, and what differs.
inline void check_same(const char* function, const std::vector<std::vector<long long>>& all,
                       std::vector<const char*> fields) {
  fields.insert(fields.end(), {"options.scale", "options.softcap", "options.sequence_lengths.size()"});
  for (std::size_t r = 1; r < all.size(); ++r) {
    for (std::size_t f = 0; f < fields.size(); ++f)
      if (all[r][f] != all[0][f])
        fail(function, fields[f], " differs: ", all[r][f], " on rank ", r, " but ", all[0][f],
             " on rank 0 (every rank must pass the same shapes and options)");
    if (all[r] != all[0])
      fail(function, "options.sequence_lengths differ between rank ", r, " and rank 0 (every rank must pass the same)");
  }
}

/// Posts the non-blocking transfer of one shard: `send_bytes` from `send` to rank `to`, and
/// `recv_bytes` into `recv` from rank `from`, in messages of at most 1 GiB (MPI counts are int).
inline void post_shard(MPI_Comm comm, const unsigned char* send, std::size_t send_bytes, int to, unsigned char* recv,
                       std::size_t recv_bytes, int from, std::vector<MPI_Request>& requests) {
  constexpr std::size_t kPiece = std::size_t(1) << 30;
  for (std::size_t offset = 0, tag = 0; offset < recv_bytes; offset += kPiece, ++tag) {
    requests.emplace_back();
    MPI_Irecv(recv + offset, int(std::min(kPiece, recv_bytes - offset)), MPI_BYTE, from, int(tag), comm,
              &requests.back());
  }
  for (std::size_t offset = 0, tag = 0; offset < send_bytes; offset += kPiece, ++tag) {
    requests.emplace_back();
    MPI_Isend(send + offset, int(std::min(kPiece, send_bytes - offset)), MPI_BYTE, to, int(tag), comm,
              &requests.back());
  }
}

/// options.sequence_lengths in global terms: one per sequence, each within the `total` tokens.
inline void check_sequence_lengths(const char* function, const Options& options, Index batch, Index total) {
  for (const Index length : options.sequence_lengths)
    if (length < 0 || length > total)
      fail(function, "options.sequence_lengths holds ", length, " but the sequence has ", total, " tokens");
  if (!options.sequence_lengths.empty() && Index(options.sequence_lengths.size()) != batch)
    fail(function, "options.sequence_lengths has ", options.sequence_lengths.size(), " entries for a batch of ", batch);
}

/// Options a sharded call passes to each block: the caller's scale, kernel, tiles and
/// threads; masks are the block's own.
inline Options block_options(const Options& options) {
  Options o;
  o.scale = options.scale;
  o.kernel = options.kernel;
  o.blocks = options.blocks;
  o.softcap = options.softcap;  // elementwise: the same in every block
  o.threads = options.threads;
  o.parallel_for = options.parallel_for;
  return o;
}

/// Masks that would have to travel with the keys: not taken by the sharded calls.
inline void reject_unsharded_masks(const char* function, const Options& options) {
  if (!options.mask.empty() || !options.bias.empty() || !options.key_lengths.empty() || !options.batch_mask.empty() ||
      !options.batch_bias.empty())
    fail(function, "options.mask, bias, key_lengths, batch_mask and batch_bias are not taken by sharded attention "
                   "(they index keys by position in one process); use causal and sequence_lengths, which are global");
  if (!options.window.empty() || !options.alibi_slopes.empty() || !options.sinks.empty())
    fail(function, "options.window, alibi_slopes and sinks are not taken by sharded attention yet (each block would "
                   "need its global positions, and a sink must join the merged denominator once); softcap is");
}

/// Copies every element of `from` into `to` (same shape, any layouts), converting A to B.
template <class A, class B>
void copy_tensor(const TensorView<const A>& from, const TensorView<B>& to) {
  for (Index b = 0; b < from.batch; ++b)
    for (Index h = 0; h < from.heads; ++h)
      for (Index t = 0; t < from.tokens; ++t) {
        const A* src = from.head(b, h).row(t);
        B* dst = to.head(b, h).row(t);
        if constexpr (std::is_same_v<A, B>) {
          std::memcpy(dst, src, std::size_t(from.features) * sizeof(A));
        } else {
          for (Index f = 0; f < from.features; ++f) dst[f] = B(src[f]);
        }
      }
}

/// Running (out, lse) of every query row of a shard in the compute type C, [B, H, tokens].
template <class C>
struct Accumulator {
  Index batch, heads, tokens, features;
  std::vector<C> out, lse;
  Accumulator(Index b, Index h, Index n, Index f)
      : batch(b), heads(h), tokens(n), features(f), out(std::size_t(b * h * n * f), C(0)),
        lse(std::size_t(b * h * n), -std::numeric_limits<C>::infinity()) {}
  MatrixView<C> rows(Index b, Index h, Index first, Index count) {
    return {out.data() + ((b * heads + h) * tokens + first) * features, count, features, features};
  }
  C* lse_of(Index b, Index h, Index first) { return lse.data() + (b * heads + h) * tokens + first; }
  /// Rounds into `to` once ([B, H, tokens, features] in any layout).
  template <class T>
  void write(const TensorView<T>& to) const {
    copy_tensor(TensorView<const C>::bhnd(out.data(), batch, heads, tokens, features), to);
  }
};

/// Q as the compute type C, [B, H, tokens, d] contiguous (a copy only when T is not C).
template <class C, class T>
TensorView<const C> as_compute(const TensorView<const T>& q, std::vector<C>& storage) {
  if constexpr (std::is_same_v<C, T>) {
    return q;
  } else {
    storage.resize(std::size_t(q.batch * q.heads * q.tokens * q.features));
    const auto view = TensorView<C>::bhnd(storage.data(), q.batch, q.heads, q.tokens, q.features);
    copy_tensor(q, view);
    return view;
  }
}

/// Attention of query rows [q_first, q_first + q_count) of head h against keys
/// [k_first, k_first + k_count) of its kv head, folded into the accumulator. `lengths`, when
/// not empty, is each query row's count of visible keys (padding and causality in global
/// terms); `causal` is sdpa's own (aligned bottom-right) for a block on the diagonal.
template <class C, class S>
void fold_block(const char* function, const TensorView<const C>& q, const TensorView<const S>& k,
                const TensorView<const S>& v, Index b, Index h, Index q_first, Index q_count, Index k_first,
                Index k_count, bool causal, const std::vector<Index>& lengths, const Options& options, Accumulator<C>& acc,
                std::vector<C>& partial, std::vector<C>& partial_lse) {
  const Index group = q.heads / k.heads, dv = acc.features;
  Options o = block_options(options);
  o.causal = causal;
  o.key_lengths = lengths;
  partial.resize(std::size_t(q_count * dv));
  partial_lse.resize(std::size_t(q_count));
  const MatrixView<C> part(partial.data(), q_count, dv, dv);
  sdpa::detail::run_attention<C, S>(function, MatrixView<const C>(q.head(b, h)).middle_rows(q_first, q_count),
                                    MatrixView<const S>(k.head(b, h / group)).middle_rows(k_first, k_count),
                                    MatrixView<const S>(v.head(b, h / group)).middle_rows(k_first, k_count), part, o,
                                    partial_lse.data());
  kernels::merge_partial<C, C>(acc.rows(b, h, q_first, q_count), acc.lse_of(b, h, q_first),
                               MatrixView<const C>(part), partial_lse.data());
}

/// Copies K and V of a shard into one contiguous buffer, [B, tokens, H_kv, d_k] then
/// [B, tokens, H_kv, d_v] elements of S: what travels around the ring.
template <class S>
std::vector<unsigned char> pack_shard(const TensorView<const S>& k, const TensorView<const S>& v) {
  const std::size_t k_elems = std::size_t(k.batch * k.tokens * k.heads * k.features);
  const std::size_t v_elems = std::size_t(v.batch * v.tokens * v.heads * v.features);
  std::vector<unsigned char> bytes((k_elems + v_elems) * sizeof(S));
  S* out = reinterpret_cast<S*>(bytes.data());
  copy_tensor(k, TensorView<S>::bnhd(out, k.batch, k.tokens, k.heads, k.features));
  copy_tensor(v, TensorView<S>::bnhd(out + k_elems, v.batch, v.tokens, v.heads, v.features));
  return bytes;
}

/// The K and V views of a packed shard of `tokens` tokens.
template <class S>
std::pair<TensorView<const S>, TensorView<const S>> unpack_views(const unsigned char* bytes, Index batch,
                                                                 Index tokens, Index heads, Index dk, Index dv) {
  const S* k = reinterpret_cast<const S*>(bytes);
  return {TensorView<const S>::bnhd(k, batch, tokens, heads, dk),
          TensorView<const S>::bnhd(k + batch * tokens * heads * dk, batch, tokens, heads, dv)};
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace detail

/// Ring attention (Liu et al., 2023): every rank of `comm` holds the Q, K and V rows of its
/// `shard` (global token ranges of one sequence, in the order its rows hold them; the ranks'
/// shards are disjoint and together cover [0, N)), and ends with the exact attention of its
/// queries over all N keys in `out`. The K/V shards travel around the ring with non-blocking
/// sends and receives while each rank computes against the shard it holds; partial results
/// are merged with the LSE rule (merge_attention), in float for 16-bit data, and rounded once.
///
/// Views as sdpa::attention's ([B, H, tokens, d] in any layout; grouped-query K and V).
/// options.causal is global: key j is visible to query i when j <= i; a key chunk wholly after
/// a query chunk is skipped, so with zigzag_shard every rank does the same work.
/// options.sequence_lengths is global too (keys j < length are real). Other masks are
/// rejected. Errors are collective: every rank throws the same std::invalid_argument, naming
/// the rank at fault, and nothing is written. `stats`, when given, receives this rank's timings.
///
///     auto shard = sdpa::mpi::zigzag_shard(N, ranks, rank);   // which tokens this rank holds
///     sdpa::mpi::ring_attention(MPI_COMM_WORLD, q, k, v, out, shard, options);
template <class T, class S>
void ring_attention(MPI_Comm comm, const TensorView<const T>& q, const TensorView<const S>& k,
                    const TensorView<const S>& v, const TensorView<T>& out, const std::vector<TokenRange>& shard,
                    const Options& options = {}, RingStats* stats = nullptr) {
  using C = compute_type<T>;
  constexpr const char* fn = "mpi::ring_attention";
  sdpa::detail::check_storage<T, S>();
  const int rank = detail::rank_of(comm), ranks = detail::size_of(comm);
  Index shard_tokens = 0;
  detail::check_on_every_rank(comm, fn, [&] {
    sdpa::isa();
    detail::reject_unsharded_masks(fn, options);
    Options local = detail::block_options(options);
    sdpa::detail::validate_batched(q, k, v, out, local);
    if (k.tokens != q.tokens)
      detail::fail(fn, "Q has ", q.tokens, " tokens but K and V have ", k.tokens,
                   ": a rank's Q, K and V rows are the same tokens (its shard)");
    for (const TokenRange& range : shard) {
      if (range.begin < 0 || range.end < range.begin)
        detail::fail(fn, "shard range [", range.begin, ", ", range.end, ") is not a range of token positions");
      shard_tokens += range.size();
    }
    if (shard_tokens != q.tokens)
      detail::fail(fn, "the shard's ranges hold ", shard_tokens, " tokens but Q has ", q.tokens);
  });
  // Every rank's shapes and ranges, on every rank: the same checks everywhere, so all throw or none.
  const auto all = detail::allgather_ints(
      comm, detail::descriptor({q.batch, q.heads, k.heads, q.features, v.features, options.causal}, options));
  std::vector<long long> flat_ranges;
  for (const TokenRange& range : shard) flat_ranges.insert(flat_ranges.end(), {range.begin, range.end});
  const auto all_ranges = detail::allgather_ints(comm, flat_ranges);
  std::vector<Index> tokens_of(std::size_t(ranks), 0);
  Index total = 0;
  // Every rank sees the same gathered data, so every rank reaches the same verdict and throws
  // the same error, with no further exchange.
  detail::check_same(fn, all, {"batch", "heads", "kv heads", "d_k", "d_v", "options.causal"});
  std::vector<std::pair<Index, Index>> ranges_all;
  for (int r = 0; r < ranks; ++r)
    for (std::size_t i = 0; i + 1 < all_ranges[std::size_t(r)].size(); i += 2) {
      ranges_all.emplace_back(all_ranges[std::size_t(r)][i], all_ranges[std::size_t(r)][i + 1]);
      tokens_of[std::size_t(r)] += ranges_all.back().second - ranges_all.back().first;
    }
  for (Index n : tokens_of) total += n;
  {
    std::vector<std::pair<Index, Index>> sorted = ranges_all;
    std::sort(sorted.begin(), sorted.end());
    Index next = 0;
    for (const auto& [begin, end] : sorted) {
      if (begin == end) continue;
      if (begin != next)
        detail::fail(fn, "the ranks' shards ", begin < next ? "overlap" : "leave a gap", " at token ",
                     std::min(begin, next), ": together they must cover [0, ", total, ") once");
      next = end;
    }
    detail::check_sequence_lengths(fn, options, q.batch, total);
  }
  if (q.batch == 0 || q.heads == 0 || total == 0) return;

  std::vector<C> q_storage, partial, partial_lse;
  const TensorView<const C> qc = detail::as_compute<C>(q, q_storage);
  detail::Accumulator<C> acc(q.batch, q.heads, q.tokens, v.features);
  const Index kv_heads = k.heads, dk = k.features, dv = v.features;
  const auto bytes_of = [&](int r) { return std::size_t(q.batch * tokens_of[std::size_t(r)] * kv_heads * (dk + dv)) * sizeof(S); };
  std::vector<unsigned char> current = detail::pack_shard(k, v), next;
  RingStats local_stats;
  const int right = (rank + 1) % ranks, left = (rank + ranks - 1) % ranks;
  for (int step = 0; step < ranks; ++step) {
    const int source = (rank - step + ranks) % ranks;  // whose K and V `current` holds
    std::vector<MPI_Request> requests;
    if (step + 1 < ranks) {
      next.resize(bytes_of((source + ranks - 1) % ranks));
      detail::post_shard(comm, current.data(), current.size(), right, next.data(), next.size(), left, requests);
    }
    // MPI moves a large message only while the program is inside an MPI call (no progress
    // thread by default): testing the requests between blocks keeps the transfer going.
    const auto progress = [&] {
      int done = 0;
      if (!requests.empty()) MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
    };
    const auto start = std::chrono::steady_clock::now();
    const auto [ks, vs] = detail::unpack_views<S>(current.data(), q.batch, tokens_of[std::size_t(source)], kv_heads,
                                                  dk, dv);
    for (Index b = 0; b < q.batch; ++b) {
      const Index length = options.sequence_lengths.empty() ? total : options.sequence_lengths[std::size_t(b)];
      Index q_first = 0;
      for (const TokenRange& qr : shard) {
        Index k_first = 0;
        for (std::size_t i = 0; i + 1 < all_ranges[std::size_t(source)].size(); i += 2) {
          const TokenRange kr{all_ranges[std::size_t(source)][i], all_ranges[std::size_t(source)][i + 1]};
          // Shards are disjoint: a key chunk is this query chunk (the diagonal), before it or after it.
          const bool diagonal = kr.begin == qr.begin, after = kr.begin >= qr.end;
          const Index visible = std::clamp<Index>(length - kr.begin, 0, kr.size());
          if (qr.size() == 0 || visible == 0 || (options.causal && after && !diagonal)) {
            local_stats.pairs_skipped += q.heads;
          } else {
            const std::vector<Index> lengths(visible < kr.size() ? 1 : 0, visible);  // padding inside the chunk
            for (Index h = 0; h < q.heads; ++h) {
              detail::fold_block(fn, qc, ks, vs, b, h, q_first, qr.size(), k_first, kr.size(),
                                 options.causal && diagonal, lengths, options, acc, partial, partial_lse);
              progress();
            }
            local_stats.pairs_computed += q.heads;
          }
          k_first += kr.size();
        }
        q_first += qr.size();
      }
    }
    local_stats.compute_seconds += detail::seconds_since(start);
    const auto wait = std::chrono::steady_clock::now();
    if (!requests.empty()) MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    local_stats.wait_seconds += detail::seconds_since(wait);
    std::swap(current, next);
  }
  acc.write(out);
  if (stats) *stats = local_stats;
}

/// Decoding against a KV cache sharded by tokens: rank r holds tokens [N_0 + ... + N_(r-1),
/// ... + N_r) of every sequence (its K and V views, e.g. a KVCache's). Q is `root`'s and is
/// broadcast into every other rank's `q` (which must have its shape); each rank attends to
/// its shard, and the partial outputs and LSEs are gathered and merged in rank order on every
/// rank, which therefore holds the same, exact result in `out`. (An allgather plus a merge
/// rather than a user-defined MPI_Op: the order, hence every bit, is the same on every rank.)
///
/// options.causal aligns the queries with the last tokens of the whole cache, as in one
/// process; options.sequence_lengths are global lengths. Errors as ring_attention's.
template <class T, class S>
void sharded_attention(MPI_Comm comm, const TensorView<T>& q, const TensorView<const S>& k,
                       const TensorView<const S>& v, const TensorView<T>& out, const Options& options = {},
                       int root = 0) {
  using C = compute_type<T>;
  constexpr const char* fn = "mpi::sharded_attention";
  sdpa::detail::check_storage<T, S>();
  const int ranks = detail::size_of(comm), rank = detail::rank_of(comm);
  detail::check_on_every_rank(comm, fn, [&] {
    sdpa::isa();
    detail::reject_unsharded_masks(fn, options);
    if (root < 0 || root >= ranks) detail::fail(fn, "root is ", root, " but the communicator has ", ranks, " ranks");
    sdpa::detail::validate_batched(TensorView<const T>(q), k, v, out, detail::block_options(options));
  });
  const auto all = detail::allgather_ints(
      comm, detail::descriptor({q.batch, q.heads, q.tokens, k.heads, q.features, v.features, options.causal, root}, options));
  const auto shard_tokens = detail::allgather_ints(comm, {k.tokens});
  Index total = 0, first = 0;
  for (int r = 0; r < ranks; ++r) {
    if (r == rank) first = total;
    total += shard_tokens[std::size_t(r)][0];
  }
  detail::check_same(fn, all, {"batch", "heads", "query tokens", "kv heads", "d_k", "d_v", "options.causal", "root"});
  detail::check_sequence_lengths(fn, options, q.batch, total);
  if (q.batch == 0 || q.heads == 0 || q.tokens == 0) return;

  // Root's queries into every rank's q.
  std::vector<T> packed(std::size_t(q.batch * q.heads * q.tokens * q.features));
  const auto packed_q = TensorView<T>::bhnd(packed.data(), q.batch, q.heads, q.tokens, q.features);
  if (rank == root) detail::copy_tensor(TensorView<const T>(q), packed_q);
  MPI_Bcast(packed.data(), int(packed.size() * sizeof(T)), MPI_BYTE, root, comm);
  if (rank != root) detail::copy_tensor(TensorView<const T>(packed_q), q);

  std::vector<C> q_storage, partial, partial_lse;
  const TensorView<const C> qc = detail::as_compute<C>(TensorView<const T>(packed_q), q_storage);
  detail::Accumulator<C> mine(q.batch, q.heads, q.tokens, v.features);
  for (Index b = 0; b < q.batch && k.tokens > 0; ++b) {
    const Index length = options.sequence_lengths.empty() ? total : options.sequence_lengths[std::size_t(b)];
    // Query i sits at global position total - Nq + i: it sees this shard's keys below
    // min(length, position + 1), counted from the shard's first token.
    std::vector<Index> lengths(std::size_t(q.tokens));
    for (Index i = 0; i < q.tokens; ++i) {
      const Index end = options.causal ? std::min(length, total - q.tokens + i + 1) : length;
      lengths[std::size_t(i)] = std::clamp<Index>(end - first, 0, k.tokens);
    }
    for (Index h = 0; h < q.heads; ++h)
      detail::fold_block(fn, qc, k, v, b, h, 0, q.tokens, 0, k.tokens, false, lengths, options, mine, partial,
                         partial_lse);
  }
  // Everyone's partials on every rank, merged in rank order.
  std::vector<C> outs(mine.out.size() * std::size_t(ranks)), lses(mine.lse.size() * std::size_t(ranks));
  MPI_Allgather(mine.out.data(), int(mine.out.size() * sizeof(C)), MPI_BYTE, outs.data(),
                int(mine.out.size() * sizeof(C)), MPI_BYTE, comm);
  MPI_Allgather(mine.lse.data(), int(mine.lse.size() * sizeof(C)), MPI_BYTE, lses.data(),
                int(mine.lse.size() * sizeof(C)), MPI_BYTE, comm);
  detail::Accumulator<C> merged(q.batch, q.heads, q.tokens, v.features);
  for (int r = 0; r < ranks; ++r) {
    const MatrixView<const C> part(outs.data() + std::size_t(r) * mine.out.size(), q.batch * q.heads * q.tokens,
                                   v.features, v.features);
    kernels::merge_partial<C, C>(merged.rows(0, 0, 0, q.batch * q.heads * q.tokens), merged.lse.data(), part,
                                 lses.data() + std::size_t(r) * mine.lse.size());
  }
  merged.write(out);
}

}  // namespace mpi
SDPA_END_NAMESPACE
