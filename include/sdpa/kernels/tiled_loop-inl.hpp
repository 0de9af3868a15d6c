// sdpa/kernels/tiled_loop-inl.hpp - the FlashAttention-2 loop shared by the Blocked and Simd paths.
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
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

/// Micro must provide: `using Vec` (the vector type of the softmax step), `key_multiple`
/// and `row_multiple` (its tile granularity), `packed_size(K, V, blocks)`, a constructor
/// Micro(K, V, blocks, packed) that lays out a packed copy of K and V in `packed`, and
/// `pack_tiles(K)` and `pack(K, V, first, end)` that fill key tiles [first, end) of it (once
/// per call, before any tile is computed; threads may fill different tiles at once),
/// `accumulator_cols()`, `exp2(Vec)`, and
///   scores(q_tile, rows, j0, keys, s, ld):        s[r][c] = q_tile[r] . K[j0 + c]  for c < keys
///   accumulate(p, rows, ld, j0, keys, rescale, acc):
///                                                 acc[r] = rescale[r] acc[r] + sum_c p[r][c] V[j0 + c]
///   fused_softmax(q_tile, rows, j0, keys, p, ld, states, rescale):
///       scores and their online-softmax step in one pass over an unmasked tile, returning
///       false when it cannot take this tile (then scores + absorb run instead).

/// One head's attention, split into query tiles that threads run independently.
template <class Micro, class T>
class TiledHead {
 public:
  using V = typename Micro::Vec;
  static constexpr T kLog2e = T(1.442695040888963407359924681001892137L);

  /// `lse`, when not null, receives each row's natural log-sum-exp of its scaled, biased
  /// scores (-inf for a fully masked row).
  TiledHead(MatrixView<const T> q, MatrixView<T> out, T* lse, double scale, const detail::HeadMasks& masks, Index nk,
            const Micro& micro, const BlockConfig& blocks)
      : q_(q), out_(out), lse_(lse), nk_(nk), micro_(micro), blocks_(blocks), mask_(masks, q.rows, nk, kLog2e),
        query_scale_(T(scale * double(kLog2e))), score_ld_(round_up(blocks.key_rows, Micro::key_multiple)),
        acc_ld_(micro.accumulator_cols()) {}

  Index tiles() const { return (q_.rows + blocks_.query_rows - 1) / blocks_.query_rows; }

  void run_tile(Index tile) const {
    const Index bq = blocks_.query_rows, dk = q_.cols, dv = out_.cols, nq = q_.rows;
    T* q_tile = detail::thread_scratch<T, detail::Slot::QueryTile>(bq * dk);     // (Bq, d_k)
    T* s = detail::thread_scratch<T, detail::Slot::Scores>(bq * score_ld_);       // (Bq, Bk padded)
    T* acc = detail::thread_scratch<T, detail::Slot::Accumulator>(bq * acc_ld_);  // (Bq, d_v padded)
    auto* rows = detail::thread_scratch<OnlineSoftmaxRow<V>, detail::Slot::RowStats>(bq);
    T* rescale = detail::thread_scratch<T, detail::Slot::Rescale>(bq);  // per row, this key tile

    // prologue: this tile's queries, scaled, and a clean softmax state
    const Index i0 = tile * bq, n_rows = std::min(bq, nq - i0);
    Index keys_end = 0, keys_unmasked = nk_;  // some row sees keys < keys_end; every row, keys < keys_unmasked
    for (Index r = 0; r < n_rows; ++r) {
      const T* q_row = q_.row(i0 + r);
      for (Index c = 0; c < dk; ++c) q_tile[r * dk + c] = q_row[c] * query_scale_;
      std::fill(acc + r * acc_ld_, acc + (r + 1) * acc_ld_, T(0));
      rows[r] = {};
      keys_end = std::max(keys_end, mask_.key_end(i0 + r));
      keys_unmasked = std::min(keys_unmasked, mask_.key_end(i0 + r));
    }

    for (Index j0 = 0; j0 < keys_end; j0 += blocks_.key_rows) {
      const Index n_keys = std::min(blocks_.key_rows, nk_ - j0);
      const bool masked = j0 + n_keys > keys_unmasked || mask_.elementwise();
      if (masked || !micro_.fused_softmax(q_tile, n_rows, j0, n_keys, s, score_ld_, rows, rescale)) {
        micro_.scores(q_tile, n_rows, j0, n_keys, s, score_ld_);
        for (Index r = 0; r < n_rows; ++r) {
          T* s_row = s + r * score_ld_;
          std::fill(s_row + n_keys, s_row + score_ld_, -std::numeric_limits<T>::infinity());
          if (masked) mask_.apply(i0 + r, j0, n_keys, s_row);
          rescale[r] = rows[r].absorb(s_row, score_ld_, [&](V x) { return micro_.exp2(x); });
        }
      }
      micro_.accumulate(s, n_rows, score_ld_, j0, n_keys, rescale, acc);
    }

    // epilogue: normalise once
    for (Index r = 0; r < n_rows; ++r) {
      const T normaliser = rows[r].normaliser();
      T* out_row = out_.row(i0 + r);
      if (normaliser == T(0))  // fully masked: exactly 0, even if a value the tile read holds Inf
        std::fill(out_row, out_row + dv, T(0));
      else
        for (Index c = 0; c < dv; ++c) out_row[c] = acc[r * acc_ld_ + c] * normaliser;
      if (lse_) lse_[i0 + r] = rows[r].log2_sum() / kLog2e;
    }
  }

 private:
  MatrixView<const T> q_;
  MatrixView<T> out_;
  T* lse_;
  Index nk_;
  const Micro& micro_;
  BlockConfig blocks_;
  detail::MaskPolicy<T> mask_;
  T query_scale_;
  Index score_ld_, acc_ld_;
};

/// One head: out = softmax(scale Q K^T + masks) V, and each row's LSE when `lse` is not null.
template <class Micro, class T>
void tiled_attention(MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v, MatrixView<T> out, T* lse,
                     double scale, const detail::HeadMasks& masks, const Options& options) {
  const Index nq = q.rows, nk = k.rows, dk = q.cols, dv = v.cols;
  const BlockConfig blocks =
      choose_blocks(options.blocks, nq, nk, dk, dv, Index(sizeof(T)), Micro::key_multiple, Micro::row_multiple);
  const Index query_tiles = (nq + blocks.query_rows - 1) / blocks.query_rows;
  const Index pieces = key_pieces(query_tiles, nk);
  if (pieces == 1) {
    const detail::ScratchLease<T, detail::Slot::Packed> packed(Micro::packed_size(k, v, blocks));
    const Micro micro(k, v, blocks, packed.data());
    detail::parallel_for(micro.pack_tiles(k), options, [&](Index first, Index end) { micro.pack(k, v, first, end); });
    const TiledHead<Micro, T> head(q, out, lse, scale, masks, nk, micro, blocks);
    detail::parallel_for(head.tiles(), options, [&](Index first, Index end) {
      for (Index tile = first; tile < end; ++tile) head.run_tile(tile);
    });
    return;
  }

  // Split keys: piece p covers keys [p L, (p + 1) L), whole key tiles, the last one the rest.
  // Causal and key lengths become per-row lengths within each piece; masks and biases are
  // column slices. Partial outputs and LSEs: (pieces, Nq, d_v) and (pieces, Nq).
  const Index piece_keys = round_up((nk + pieces - 1) / pieces, blocks.key_rows);
  const detail::MaskPolicy<T> full(masks, nq, nk, T(1));
  const detail::ScratchLease<T, detail::Slot::Partials> partials(pieces * nq * (dv + 1));
  const detail::ScratchLease<Index, detail::Slot::Partials> piece_lengths(pieces * nq);
  T* partial_out = partials.data();
  T* partial_lse = partial_out + pieces * nq * dv;
  Index* lengths = piece_lengths.data();  // (pieces, Nq)
  for (Index piece = 0; piece < pieces; ++piece)
    for (Index i = 0; i < nq; ++i)
      lengths[piece * nq + i] =
          std::clamp<Index>(full.key_end(i) - piece * piece_keys, 0, std::max<Index>(0, nk - piece * piece_keys));
  detail::parallel_for(pieces * query_tiles, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) {
      const Index piece = item / query_tiles, tile = item % query_tiles;
      const Index j0 = piece * piece_keys, n = std::max<Index>(0, std::min(piece_keys, nk - j0));
      const detail::HeadMasks piece_masks{false, lengths + piece * nq, nq,
                                          masks.mask.empty() ? masks.mask : masks.mask.middle_cols(j0, n),
                                          masks.bias.empty() ? masks.bias : masks.bias.middle_cols(j0, n)};
      const MatrixView<const T> k_piece = k.middle_rows(j0, n), v_piece = v.middle_rows(j0, n);
      T* packed = detail::thread_scratch<T, detail::Slot::ChunkPacked>(Micro::packed_size(k_piece, v_piece, blocks));
      const Micro micro(k_piece, v_piece, blocks, packed);
      micro.pack(k_piece, v_piece, 0, micro.pack_tiles(k_piece));
      const MatrixView<T> piece_out(partial_out + piece * nq * dv, nq, dv, dv);
      const TiledHead<Micro, T> head(q, piece_out, partial_lse + piece * nq, scale, piece_masks, n, micro, blocks);
      head.run_tile(tile);
    }
  });
  // Merge the pieces in key order (the same order whatever ran them).
  T* lse_out = lse ? lse : partial_lse;  // without a caller's LSE, piece 0's slot collects it
  for (Index i = 0; i < nq; ++i) {
    std::copy(partial_out + i * dv, partial_out + (i + 1) * dv, out.row(i));
    lse_out[i] = partial_lse[i];
  }
  for (Index piece = 1; piece < pieces; ++piece)
    merge_partial(out, lse_out, MatrixView<const T>(partial_out + piece * nq * dv, nq, dv, dv),
                  partial_lse + piece * nq);
}

