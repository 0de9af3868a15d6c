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
/// A Micro may also provide prepare_queries(q_tile, rows, scale), which takes the tile's
/// queries unscaled and returns what its scores and fused_softmax take in place of q_tile
/// (Bf16Tiles: the queries as bf16 pairs, and the scale for the float scores).

/// Whether Micro has prepare_queries.
template <class Micro, class = void>
inline constexpr bool prepares_queries = false;
template <class Micro>
inline constexpr bool prepares_queries<Micro, std::void_t<decltype(&Micro::prepare_queries)>> = true;

/// Row i of a head computed again by the reference path: its output into `out` (d_v values of
/// T) and its natural LSE. The fallback for rows that did not come out finite
/// (TiledHead::finish_row, and the merge of split keys); the query row is read exactly.
template <class T, class KV>
void reference_redo_row(const QueryRows<T>& q, const KV& k, const KV& v, Index i, double scale,
                        const detail::MaskPolicy<T>& mask, T* out, T* lse) {
  T* p = detail::thread_scratch<T, detail::Slot::ReferenceRow>(k.rows + q.cols);  // weights, then the query
  q.read_row(i, T(1), p + k.rows);
  reference_row_weights(static_cast<const T*>(p + k.rows), k, i, scale, mask, p, lse);
  reference_blend(p, v, out);
}

/// Row i's scores for keys [j0, j0 + n), as MaskPolicy::apply changes them, with the cap
/// and ALiBi computed a vector at a time over the whole padded row of `padded` scores (padding
/// is overwritten with -inf afterwards). `lanes`: 0, 1, ..., W - 1.
template <class V, class Exp2>
void change_score_row(const detail::MaskPolicy<typename V::value_type>& mask, Index i, Index j0, Index n,
                      typename V::value_type* s, Index padded, const typename V::value_type* lanes, Exp2 exp2) {
  using T = typename V::value_type;
  const T cap = mask.cap();
  if (cap > T(0)) {
    const V c = V::broadcast(cap), inverse = V::broadcast(T(1) / cap);
    for (Index col = 0; col < padded; col += V::width) (c * vector_tanh(V::load(s + col) * inverse, exp2)).store(s + col);
  }
  mask.limit(i, j0, n, s);
  mask.apply_elementwise(i, j0, n, s);
  const T step = mask.alibi_step(i);
  if (step != T(0)) {  // s += -slope |i' - j|, exact distances (below 2^24 in float)
    const V slope = V::broadcast(step), lane = V::load(lanes);
    const Index origin = mask.alibi_origin(i) - j0;  // i' - j at this tile's first key
    for (Index col = 0; col < padded; col += V::width) {
      const V distance = V::broadcast(T(origin - col)) - lane;
      fma(slope, max(distance, V::zero() - distance), V::load(s + col)).store(s + col);
    }
  }
}

/// One head's attention, split into query tiles that threads run independently. K and V hold
/// elements of Micro::Storage; everything is computed in T, the Micro's vector element type
/// (float for every 16-bit storage type), and Q and the output are read and written as rows
/// of T, whatever their own types (kernels/compute_rows.hpp: one TiledHead per Micro).
template <class Micro>
class TiledHead {
 public:
  using V = typename Micro::Vec;
  using T = typename V::value_type;
  using S = typename Micro::Storage;
  using KV = typename Micro::KeyView;  // MatrixView<const S>, or PagedView<const S>
  static constexpr T kLog2e = T(1.442695040888963407359924681001892137L);
  /// Keys folded into one partial sum before it joins the row's total (rounded to whole key
  /// tiles): a float sum of 2^24 ones stops growing, so without this a row of 2^25 equal keys
  /// came out at half its value. A chunk's sums take at most ~4096 terms, the totals one per
  /// chunk: a total stops absorbing a chunk of equal keys only past 2^36 keys.
  static constexpr Index kChunkKeys = 4096;

  /// `lse`, when not null, receives each row's natural log-sum-exp of its scaled, biased
  /// scores (-inf for a fully masked row).
  TiledHead(QueryRows<T> q, const KV& k, const KV& v, OutputRows<T> out, T* lse, double scale,
            const detail::HeadMasks& masks, const Micro& micro, const BlockConfig& blocks)
      : q_(q), k_(k), v_(v), out_(out), lse_(lse), nk_(k.rows), scale_(scale), micro_(micro), blocks_(blocks),
        mask_(masks, q.rows, k.rows, kLog2e), natural_mask_(masks, q.rows, k.rows, T(1)),
        query_scale_(T(scale * double(kLog2e))), score_ld_(round_up(blocks.key_rows, Micro::key_multiple)),
        acc_ld_(micro.accumulator_cols()), changes_(mask_.changes_scores()),
        chunk_keys_(std::max<Index>(1, kChunkKeys / blocks.key_rows) * blocks.key_rows) {
    for (int lane = 0; lane < V::width; ++lane) lanes_[lane] = T(lane);
  }

  Index tiles() const { return (q_.rows + blocks_.query_rows - 1) / blocks_.query_rows; }

  void run_tile(Index tile) const {
    const Index bq = blocks_.query_rows, dk = q_.cols, nq = q_.rows;
    T* q_tile = detail::thread_scratch<T, detail::Slot::QueryTile>(bq * dk);     // (Bq, d_k)
    T* s = detail::thread_scratch<T, detail::Slot::Scores>(bq * score_ld_);       // (Bq, Bk padded)
    T* acc = detail::thread_scratch<T, detail::Slot::Accumulator>(bq * acc_ld_);  // (Bq, d_v padded)
    auto* rows = detail::thread_scratch<OnlineSoftmaxRow<V>, detail::Slot::RowStats>(bq);
    T* rescale = detail::thread_scratch<T, detail::Slot::Rescale>(bq);  // per row, this key tile
    Totals totals{detail::thread_scratch<T, detail::Slot::TotalAccumulator>(bq * acc_ld_),
                  detail::thread_scratch<RowTotal, detail::Slot::RowTotals>(bq), false};
    T* alibi = detail::thread_scratch<T, detail::Slot::RowAlibi>(2 * bq);  // per row: -slope, then i' - j at key 0

    // prologue: this tile's queries, scaled, and a clean softmax state
    const Index i0 = tile * bq, n_rows = std::min(bq, nq - i0);
    Index keys_begin = nk_, keys_end = 0;  // some row sees keys in [keys_begin, keys_end)
    Index band_begin = 0, band_end = nk_;  // every row sees keys in [band_begin, band_end)
    const T query_factor = prepares_queries<Micro> ? T(1) : query_scale_;  // prepare_queries scales itself
    for (Index r = 0; r < n_rows; ++r) {
      q_.read_row(i0 + r, query_factor, q_tile + r * dk);
      std::fill(acc + r * acc_ld_, acc + (r + 1) * acc_ld_, T(0));
      rows[r] = {};
      keys_begin = std::min(keys_begin, mask_.key_begin(i0 + r));
      keys_end = std::max(keys_end, mask_.key_end(i0 + r));
      band_begin = std::max(band_begin, mask_.key_begin(i0 + r));
      band_end = std::min(band_end, mask_.key_end(i0 + r));
      alibi[r] = mask_.alibi_step(i0 + r);
      alibi[bq + r] = T(mask_.alibi_origin(i0 + r));
    }

    // the next tile's queries (likely this thread's next) and this tile's outputs, which
    // arrive while the tile computes
    for (Index i = i0 + bq; i < std::min(nq, i0 + 2 * bq); ++i) q_.prefetch_row(i);
    for (Index r = 0; r < n_rows; ++r) out_.prefetch_row(i0 + r);
    const auto queries = prepared_queries(q_tile, n_rows);

    // key tiles from the first one some row sees (tiles stay aligned to multiples of Bk)
    const Index first = keys_begin / blocks_.key_rows * blocks_.key_rows;
    for (Index j0 = first, chunk_end = first + chunk_keys_; j0 < keys_end; j0 += blocks_.key_rows) {
      if (j0 == chunk_end) {  // a running bound, not j0 % chunk_keys_: no division per key tile
        fold_chunk(n_rows, acc, rows, totals);
        chunk_end += chunk_keys_;
      }
      const Index n_keys = std::min(blocks_.key_rows, nk_ - j0);
      const bool masked = j0 < band_begin || j0 + n_keys > band_end || mask_.elementwise();
      if (masked || !fused_softmax(j0, n_keys, queries, n_rows, s, rows, rescale, alibi, alibi + bq)) {
        micro_.scores(queries, n_rows, j0, n_keys, s, score_ld_);
        for (Index r = 0; r < n_rows; ++r) {
          T* s_row = s + r * score_ld_;
          if (masked || changes_) change_scores(i0 + r, j0, n_keys, s_row);
          std::fill(s_row + n_keys, s_row + score_ld_, -std::numeric_limits<T>::infinity());
          rescale[r] = rows[r].absorb(s_row, score_ld_, [&](V x) { return micro_.exp2(x); });
        }
      }
      micro_.accumulate(s, n_rows, score_ld_, j0, n_keys, rescale, acc);
    }
    if (totals.used) fold_chunk(n_rows, acc, rows, totals);

    // epilogue: normalise once
    for (Index r = 0; r < n_rows; ++r) {
      const RowTotal total = totals.used ? totals.rows[r] : RowTotal{rows[r].running_max, reduce_add(rows[r].running_sum)};
      finish_row(i0 + r, total, (totals.used ? totals.acc : acc) + r * acc_ld_);
    }
  }

 private:
  /// A row's softmax state in scalars: its max (base 2) and the sum of 2^(s - max).
  struct RowTotal {
    T max;
    T sum;
  };
  /// What the chunks of a query tile have added up to so far.
  struct Totals {
    T* acc;          // (Bq, acc_ld)
    RowTotal* rows;  // Bq
    bool used;
  };

  /// The query tile as the Micro's products take it: rows of scaled queries, or what
  /// Micro::prepare_queries makes of the unscaled ones.
  auto prepared_queries(const T* q_tile, Index n_rows) const {
    if constexpr (prepares_queries<Micro>)
      return micro_.prepare_queries(q_tile, n_rows, query_scale_);
    else
      return q_tile;
  }

  /// The Micro's fused score-softmax step over an unmasked tile, with the soft cap and ALiBi
  /// applied to each vector of scores in registers when there are any. `steps` and `origins`:
  /// each row's ALiBi step (-slope, 0 = none) and i' - j at key 0.
  template <class Queries>
  bool fused_softmax(Index j0, Index n_keys, const Queries& q_tile, Index n_rows, T* s, OnlineSoftmaxRow<V>* rows,
                     T* rescale, const T* steps, const T* origins) const {
    if (!changes_)
      return micro_.fused_softmax(q_tile, n_rows, j0, n_keys, s, score_ld_, rows, rescale,
                                  [](Index, Index, V x) { return x; });
    const T cap = mask_.cap(), inverse_cap = cap > T(0) ? T(1) / cap : T(0);
    const auto exp2 = [&](V x) { return micro_.exp2(x); };
    const V lanes = V::load(lanes_);
    const auto capped = [&](V x) {
      return cap > T(0) ? V::broadcast(cap) * vector_tanh(x * V::broadcast(inverse_cap), exp2) : x;
    };
    // One functor for both (each microkernel it is compiled into costs build time); a row
    // without ALiBi has step 0 and skips its few instructions.
    return micro_.fused_softmax(q_tile, n_rows, j0, n_keys, s, score_ld_, rows, rescale, [&](Index r, Index col, V x) {
      x = capped(x);
      if (steps[r] == T(0)) return x;
      const V distance = V::broadcast(origins[r] - T(j0 + col)) - lanes;  // i' - j, exact below 2^24
      return fma(V::broadcast(steps[r]), max(distance, V::zero() - distance), x);
    });
  }

  void change_scores(Index i, Index j0, Index n, T* s) const {
    change_score_row<V>(mask_, i, j0, n, s, score_ld_, lanes_, [&](V x) { return micro_.exp2(x); });
  }

  /// Adds the chunk just finished (acc, rows) into the totals with the log-sum-exp rule, then
  /// starts the next chunk afresh.
  void fold_chunk(Index n_rows, T* acc, OnlineSoftmaxRow<V>* rows, Totals& totals) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    for (Index r = 0; r < n_rows; ++r) {
      RowTotal& total = totals.rows[r];
      T* total_acc = totals.acc + r * acc_ld_;
      T* chunk_acc = acc + r * acc_ld_;
      if (!totals.used) total = {kMinusInf, T(0)}, std::fill(total_acc, total_acc + acc_ld_, T(0));
      const T chunk_max = rows[r].running_max, chunk_sum = reduce_add(rows[r].running_sum);
      const T max = std::max(total.max, chunk_max);
      if (max != kMinusInf) {  // NaN or a visible key: fold (NaN stays NaN and is redone below)
        const T a = std::exp2(total.max - max), b = std::exp2(chunk_max - max);
        for (Index c = 0; c < acc_ld_; ++c) total_acc[c] = a * total_acc[c] + b * chunk_acc[c];
        total = {max, a * total.sum + b * chunk_sum};
      }
      rows[r] = {};
      std::fill(chunk_acc, chunk_acc + acc_ld_, T(0));
    }
    totals.used = true;
  }

  /// out_i = acc / sum (normalised in place in row_acc), and the LSE. A row whose result is not
  /// a finite, positive-sum one (no visible key, a NaN or Inf score, a value that overflowed
  /// the accumulator) is computed again by the reference path, whose rules for those cases
  /// every path follows (README, "NaN, Inf and out-of-range input"): this costs nothing on
  /// ordinary rows. (A 16-bit output is rounded here, once.)
  void finish_row(Index i, RowTotal total, T* row_acc) const {
    T keys_weight = T(1);  // what the keys' share of the denominator scales the output by
    if (mask_.has_sinks()) {  // the sink joins the denominator: max and sum gain one term
      const T sink = mask_.sink(i) * kLog2e, max = std::max(total.max, sink);
      keys_weight = total.max == -std::numeric_limits<T>::infinity() ? T(0) : std::exp2(total.max - max);
      total = {max, keys_weight * total.sum + std::exp2(sink - max)};
    }
    const T normaliser = keys_weight / total.sum;
    bool finite = total.sum > T(0) && std::isfinite(normaliser);
    for (Index c = 0; c < out_.cols && finite; ++c) {
      row_acc[c] *= normaliser;
      finite = std::isfinite(row_acc[c]);
    }
    if (finite) {
      out_.write_row(i, row_acc);
      if (lse_) lse_[i] = (total.max + std::log2(total.sum)) / kLog2e;
      return;
    }
    T lse;
    reference_redo_row(q_, k_, v_, i, scale_, natural_mask_, row_acc, &lse);  // row_acc holds >= d_v
    out_.write_row(i, row_acc);
    if (lse_) lse_[i] = lse;
  }

  QueryRows<T> q_;
  KV k_, v_;
  OutputRows<T> out_;
  T* lse_;
  Index nk_;
  double scale_;
  const Micro& micro_;
  BlockConfig blocks_;
  detail::MaskPolicy<T> mask_, natural_mask_;
  T query_scale_;
  Index score_ld_, acc_ld_;
  bool changes_;  // the soft cap or ALiBi changes every score
  Index chunk_keys_;
  T lanes_[V::width];  // 0, 1, ..., W - 1: key offsets within a vector, for ALiBi
};

/// One head: out = softmax(scale Q K^T + masks) V, and each row's LSE when `lse` is not null.
/// Q and out: MatrixViews of any storage type, read and written as rows of T.
template <class Micro>
void tiled_attention(QueryRows<typename Micro::Vec::value_type> q, const typename Micro::KeyView& k,
                     const typename Micro::KeyView& v, OutputRows<typename Micro::Vec::value_type> out,
                     typename Micro::Vec::value_type* lse, double scale, const detail::HeadMasks& masks,
                     const Options& options) {
  using T = typename Micro::Vec::value_type;
  const Index nq = q.rows, nk = k.rows, dk = q.cols, dv = out.cols;  // features (v.cols may count int8 blocks)
  const BlockConfig blocks =
      choose_blocks(options.blocks, nq, nk, dk, dv, Index(sizeof(T)), Micro::key_multiple, Micro::row_multiple);
  const Index query_tiles = (nq + blocks.query_rows - 1) / blocks.query_rows;
  const Index pieces = key_pieces(query_tiles, nk);
  if (pieces == 1) {
    const detail::ScratchLease<T, detail::Slot::Packed> packed(Micro::packed_size(k, v, blocks));
    const Micro micro(k, v, blocks, packed.data());
    detail::parallel_for(micro.pack_tiles(k), options, [&](Index first, Index end) { micro.pack(k, v, first, end); });
    const TiledHead<Micro> head(q, k, v, out, lse, scale, masks, micro, blocks);
    detail::parallel_for(head.tiles(), options, [&](Index first, Index end) {
      for (Index tile = first; tile < end; ++tile) head.run_tile(tile);
    });
    return;
  }

  // Split keys: piece p covers keys [p L, (p + 1) L), whole key tiles, the last one the rest.
  // Each piece sees its keys where they sit in the call (key_offset), so that causal
  // alignment, windows, ALiBi and key lengths need no translation; masks and biases are
  // column slices. A sink joins the denominator once, after the merge, not once per piece.
  // Partial outputs and LSEs: (pieces, Nq, d_v) and (pieces, Nq).
  const Index piece_keys = round_up((nk + pieces - 1) / pieces, blocks.key_rows);
  const detail::MaskPolicy<T> full(masks, nq, nk, T(1));
  const detail::ScratchLease<T, detail::Slot::Partials> partials(pieces * nq * (dv + 1));
  T* partial_out = partials.data();
  T* partial_lse = partial_out + pieces * nq * dv;
  detail::parallel_for(pieces * query_tiles, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) {
      const Index piece = item / query_tiles, tile = item % query_tiles;
      const Index j0 = piece * piece_keys, n = std::max<Index>(0, std::min(piece_keys, nk - j0));
      detail::HeadMasks piece_masks = masks;
      if (!masks.mask.empty()) piece_masks.mask = masks.mask.middle_cols(j0, n);
      if (!masks.bias.empty()) piece_masks.bias = masks.bias.middle_cols(j0, n);
      piece_masks.key_offset = masks.key_offset + j0;
      piece_masks.total_keys = masks.total_keys >= 0 ? masks.total_keys : nk;
      piece_masks.sinks = nullptr;
      const auto k_piece = k.middle_rows(j0, n), v_piece = v.middle_rows(j0, n);
      T* packed = detail::thread_scratch<T, detail::Slot::ChunkPacked>(Micro::packed_size(k_piece, v_piece, blocks));
      const Micro micro(k_piece, v_piece, blocks, packed);
      micro.pack(k_piece, v_piece, 0, micro.pack_tiles(k_piece));
      const MatrixView<T> piece_out(partial_out + piece * nq * dv, nq, dv, dv);
      const TiledHead<Micro> head(q, k_piece, v_piece, piece_out, partial_lse + piece * nq, scale, piece_masks,
                                        micro, blocks);
      head.run_tile(tile);
    }
  });
  // Merge the pieces in key order (the same order whatever ran them), into piece 0's slots.
  const MatrixView<T> merged(partial_out, nq, dv, dv);
  for (Index piece = 1; piece < pieces; ++piece)
    merge_partial(merged, partial_lse, MatrixView<const T>(partial_out + piece * nq * dv, nq, dv, dv),
                  partial_lse + piece * nq);
  // As in TiledHead::finish_row: a row that came out non-finite is redone by the reference,
  // over all its keys at once (a piece cannot tell that a NaN value it saw has weight 0 in
  // the whole row). Then each row is stored, rounded once to out's type.
  for (Index i = 0; i < nq; ++i) {
    T* row = merged.row(i);
    if (full.has_sinks()) add_sink(row, dv, partial_lse[i], full.sink(i));
    if (!std::all_of(row, row + dv, [](T x) { return std::isfinite(x); }))
      reference_redo_row(q, k, v, i, scale, full, row, partial_lse + i);
    out.write_row(i, row);
    if (lse) lse[i] = partial_lse[i];
  }
}

