// sdpa/kernels/tiled_loop.hpp - the FlashAttention-2 loop shared by the Blocked and Simd paths.
//
//   for each tile of Bq query rows (one thread each):
//     prologue:  copy the tile's queries, pre-multiplied by scale * log2(e)
//     for each tile of Bk keys that some row of the tile may see:
//       S = Q_tile K_tile^T                  (Micro::scores)
//       mask S, only if the tile straddles a row's last visible key or masks are elementwise
//       fold S into each row's online softmax: S becomes P
//       acc = rescale * acc + P V_tile       (Micro::accumulate)
//     (an unmasked tile may do the first three steps in one pass: Micro::fused_softmax)
//     epilogue:  out = acc / l (0 for a fully masked row)
//
// The two paths differ only in their Micro: how a score tile and a value update are
// computed. Extra memory is a few tiles per thread plus whatever the Micro packs (for Simd,
// one copy of K), never Nq x Nk.
#pragma once

#include "../detail/mask_policy.hpp"
#include "../detail/online_softmax.hpp"
#include "../detail/parallel.hpp"
#include "../detail/scratch.hpp"
#include "block_config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sdpa::kernels {

/// Micro must provide: `using Vec` (the vector type of the softmax step), `key_multiple`
/// and `row_multiple` (its tile granularity), a constructor Micro(K, V, tiling) that may
/// pack K and V once for all threads, `accumulator_cols()`, `exp2(Vec)`, and
///   scores(q_tile, rows, j0, keys, s, ld):        s[r][c] = q_tile[r] . K[j0 + c]  for c < keys
///   accumulate(p, rows, ld, j0, keys, rescale, acc):
///                                                 acc[r] = rescale[r] acc[r] + sum_c p[r][c] V[j0 + c]
///   fused_softmax(q_tile, rows, j0, keys, p, ld, states, rescale):
///       scores and their online-softmax step in one pass over an unmasked tile, returning
///       false when it cannot take this tile (then scores + absorb run instead).
template <class Micro, class T>
void tiled_attention(MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v, MatrixView<T> out,
                     double scale, const Options& options) {
  using V = typename Micro::Vec;
  const Index nq = q.rows, nk = k.rows, dk = q.cols, dv = v.cols;
  constexpr T kLog2e = T(1.442695040888963407359924681001892137L);
  const Tiling tiling =
      choose_tiling(options.blocks, nq, nk, dk, dv, Index(sizeof(T)), Micro::key_multiple, Micro::row_multiple);
  const Micro micro(k, v, tiling);
  const detail::MaskPolicy<T> mask(options, nq, nk, kLog2e);
  const T query_scale = T(scale * double(kLog2e));

  const Index score_ld = round_up(tiling.key_rows, Micro::key_multiple);  // padded columns score -inf
  const Index acc_ld = micro.accumulator_cols();
  const Index tiles = (nq + tiling.query_rows - 1) / tiling.query_rows;

  detail::parallel_for(tiles, options, [&](Index first_tile, Index end_tile) {
    const Index bq = tiling.query_rows;
    T* q_tile = detail::thread_scratch<T, detail::Slot::QueryTile>(bq * dk);    // (Bq, d_k)
    T* s = detail::thread_scratch<T, detail::Slot::Scores>(bq * score_ld);       // (Bq, Bk padded)
    T* acc = detail::thread_scratch<T, detail::Slot::Accumulator>(bq * acc_ld);  // (Bq, d_v padded)
    auto* rows = detail::thread_scratch<detail::OnlineSoftmaxRow<V>, detail::Slot::RowStats>(bq);
    T* rescale = detail::thread_scratch<T, detail::Slot::Rescale>(bq);  // per row, this key tile

    for (Index tile = first_tile; tile < end_tile; ++tile) {
      // prologue: this tile's queries, scaled, and a clean softmax state
      const Index i0 = tile * bq, n_rows = std::min(bq, nq - i0);
      Index keys_end = 0, keys_unmasked = nk;  // some row sees keys < keys_end; every row, keys < keys_unmasked
      for (Index r = 0; r < n_rows; ++r) {
        const T* q_row = q.row(i0 + r);
        for (Index c = 0; c < dk; ++c) q_tile[r * dk + c] = q_row[c] * query_scale;
        std::fill(acc + r * acc_ld, acc + (r + 1) * acc_ld, T(0));
        rows[r] = {};
        keys_end = std::max(keys_end, mask.key_end(i0 + r));
        keys_unmasked = std::min(keys_unmasked, mask.key_end(i0 + r));
      }

      for (Index j0 = 0; j0 < keys_end; j0 += tiling.key_rows) {
        const Index n_keys = std::min(tiling.key_rows, nk - j0);
        const bool masked = j0 + n_keys > keys_unmasked || mask.elementwise();
        if (masked || !micro.fused_softmax(q_tile, n_rows, j0, n_keys, s, score_ld, rows, rescale)) {
          micro.scores(q_tile, n_rows, j0, n_keys, s, score_ld);
          for (Index r = 0; r < n_rows; ++r) {
            T* s_row = s + r * score_ld;
            std::fill(s_row + n_keys, s_row + score_ld, -std::numeric_limits<T>::infinity());
            if (masked) mask.apply(i0 + r, j0, n_keys, s_row);
            rescale[r] = rows[r].absorb(s_row, score_ld, [&](V x) { return micro.exp2(x); });
          }
        }
        micro.accumulate(s, n_rows, score_ld, j0, n_keys, rescale, acc);
      }

      // epilogue: normalise once
      for (Index r = 0; r < n_rows; ++r) {
        const T normaliser = rows[r].normaliser();
        T* out_row = out.row(i0 + r);
        if (normaliser == T(0))  // fully masked: exactly 0, even if a value the tile read holds Inf
          std::fill(out_row, out_row + dv, T(0));
        else
          for (Index c = 0; c < dv; ++c) out_row[c] = acc[r * acc_ld + c] * normaliser;
      }
    }
  });
}

}  // namespace sdpa::kernels
