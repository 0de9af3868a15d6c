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

/// What Micro's score products take as the query tile: rows of scaled queries, or what its
/// prepare_queries returns.
template <class Micro, class = void>
struct QueriesOf {
  using type = const typename Micro::Vec::value_type*;
};
template <class Micro>
struct QueriesOf<Micro, std::enable_if_t<prepares_queries<Micro>>> {
  using T = typename Micro::Vec::value_type;
  using type = decltype(std::declval<const Micro&>().prepare_queries(std::declval<const T*>(), Index(0), T(0)));
};

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

  /// One query tile, start to finish, in this thread's scratch.
  void run_tile(Index tile) const {
    TileState state = scratch_state();
    begin(tile, state);
    for (Index j0 = first_key_tile(state); j0 < state.keys_end; j0 += blocks_.key_rows) visit(state, j0);
    end(state);
  }

  /// A row's softmax state in scalars: its max (base 2) and the sum of 2^(s - max).
  struct RowTotal {
    T max;
    T sum;
  };

  /// The query tile as the Micro's products take it (prepared_queries).
  using Queries = typename QueriesOf<Micro>::type;

  /// A query tile between its key tiles: where its queries, scores, accumulators and softmax
  /// state live, and which keys its rows see. run_tile keeps one; a thread that runs the
  /// tiles of several heads in step (multi_head_attention) keeps one per head.
  struct TileState {
    T* q_tile;                     // (Bq, d_k): the queries, scaled
    T* s;                          // (Bq, Bk padded): scores, then weights
    T* acc;                        // (Bq, d_v padded)
    OnlineSoftmaxRow<V>* rows;     // Bq
    T* rescale;                    // per row, this key tile
    T* alibi;                      // per row: -slope, then i' - j at key 0
    T* total_acc;                  // (Bq, d_v padded): the chunks so far (fold_chunk)
    RowTotal* totals;              // Bq
    T* ones;                       // Bq ones: the rescale of every run of a key tile after its first
    Queries queries{};             // q_tile, as the Micro's products take it
    bool totals_used = false;
    Index i0 = 0, n_rows = 0;
    Index keys_begin = 0, keys_end = 0;  // some row sees keys in [keys_begin, keys_end)
    Index band_begin = 0, band_end = 0;  // every row sees keys in [band_begin, band_end)
    Index chunk_end = 0;                 // where the current chunk of keys ends
  };

  /// A TileState in this thread's scratch: state `lane` of `lanes` side by side (every lane
  /// asks for all of them, so that no later call moves the buffers of an earlier one).
  TileState scratch_state(Index lane = 0, Index lanes = 1) const {
    const Index bq = blocks_.query_rows, dk = q_.cols;
    TileState state;
    state.q_tile = detail::thread_scratch<T, detail::Slot::QueryTile>(lanes * bq * dk) + lane * bq * dk;
    state.s = detail::thread_scratch<T, detail::Slot::Scores>(lanes * bq * score_ld_) + lane * bq * score_ld_;
    state.acc = detail::thread_scratch<T, detail::Slot::Accumulator>(lanes * bq * acc_ld_) + lane * bq * acc_ld_;
    state.rows = detail::thread_scratch<OnlineSoftmaxRow<V>, detail::Slot::RowStats>(lanes * bq) + lane * bq;
    state.rescale = detail::thread_scratch<T, detail::Slot::Rescale>(lanes * bq) + lane * bq;
    state.alibi = detail::thread_scratch<T, detail::Slot::RowAlibi>(lanes * 2 * bq) + lane * 2 * bq;
    state.total_acc =
        detail::thread_scratch<T, detail::Slot::TotalAccumulator>(lanes * bq * acc_ld_) + lane * bq * acc_ld_;
    state.totals = detail::thread_scratch<RowTotal, detail::Slot::RowTotals>(lanes * bq) + lane * bq;
    state.ones = detail::thread_scratch<T, detail::Slot::UnitRescale>(bq);
    std::fill(state.ones, state.ones + bq, T(1));
    return state;
  }

  /// Prologue: the tile's queries, scaled, a clean softmax state, and the keys its rows see.
  void begin(Index tile, TileState& st) const {
    const Index bq = blocks_.query_rows, dk = q_.cols, nq = q_.rows;
    st.i0 = tile * bq;
    st.n_rows = std::min(bq, nq - st.i0);
    st.keys_begin = nk_, st.keys_end = 0, st.band_begin = 0, st.band_end = nk_;
    st.totals_used = false;
    const T query_factor = prepares_queries<Micro> ? T(1) : query_scale_;  // prepare_queries scales itself
    for (Index r = 0; r < st.n_rows; ++r) {
      const Index i = st.i0 + r;
      q_.read_row(i, query_factor, st.q_tile + r * dk);
      std::fill(st.acc + r * acc_ld_, st.acc + (r + 1) * acc_ld_, T(0));
      st.rows[r] = {};
      st.keys_begin = std::min(st.keys_begin, mask_.key_begin(i));
      st.keys_end = std::max(st.keys_end, mask_.key_end(i));
      st.band_begin = std::max(st.band_begin, mask_.key_begin(i));
      st.band_end = std::min(st.band_end, mask_.key_end(i));
      st.alibi[r] = mask_.alibi_step(i);
      st.alibi[bq + r] = T(mask_.alibi_origin(i));
    }
    st.chunk_end = first_key_tile(st) + chunk_keys_;
    st.queries = prepared_queries(st.q_tile, st.n_rows);
    // the next tile's queries (likely this thread's next) and this tile's outputs, which
    // arrive while the tile computes
    for (Index i = st.i0 + bq; i < std::min(nq, st.i0 + 2 * bq); ++i) q_.prefetch_row(i);
    for (Index r = 0; r < st.n_rows; ++r) out_.prefetch_row(st.i0 + r);
  }

  /// The first key tile some row of the tile sees (key tiles stay aligned to multiples of Bk).
  Index first_key_tile(const TileState& st) const { return st.keys_begin / blocks_.key_rows * blocks_.key_rows; }

  /// Whether the tile visits the key tile at j0 (a multiple of Bk).
  bool visits(const TileState& st, Index j0) const { return j0 >= first_key_tile(st) && j0 < st.keys_end; }

  /// Folds the key tile at j0 (from first_key_tile on, in order, while visits) into the tile.
  void visit(TileState& st, Index j0) const {
    const bool masked = start_key_tile(st, j0);
    const Index n_keys = tile_keys(j0);
    if (masked || !fused_softmax(j0, n_keys, st.queries, st.n_rows, st.s, st.rows, st.rescale, st.alibi,
                                 st.alibi + blocks_.query_rows)) {
      tile_scores(st, j0, 0, n_keys);
      tile_softmax(st, j0, masked);
    }
    micro_.accumulate(st.s, st.n_rows, score_ld_, j0, n_keys, st.rescale, st.acc);
  }

  // visit() in steps, for a driver that runs several heads' tiles in step and splits a key
  // tile into runs of keys that lie together in memory (multi_head_attention):
  //   start_key_tile; tile_scores over runs covering the tile, in any order; tile_softmax;
  //   tile_accumulate over the runs, in key order
  // computes what visit() computes, bit for bit, for a Micro that fuses no softmax.

  /// Keys in the key tile at j0.
  Index tile_keys(Index j0) const { return std::min(blocks_.key_rows, nk_ - j0); }

  /// Starts the key tile at j0: closes a chunk that ends there, and says whether any of the
  /// tile's scores is masked (or elementwise masks change them).
  bool start_key_tile(TileState& st, Index j0) const {
    if (j0 == st.chunk_end) {  // a running bound, not j0 % chunk_keys_: no division per key tile
      fold_chunk(st);
      st.chunk_end += chunk_keys_;
    }
    return j0 < st.band_begin || j0 + tile_keys(j0) > st.band_end || mask_.elementwise();
  }

  /// The scores of keys [j0 + c0, j0 + c0 + count) of the tile at j0.
  void tile_scores(const TileState& st, Index j0, Index c0, Index count) const {
    micro_.scores(st.queries, st.n_rows, j0 + c0, count, st.s + c0, score_ld_);
  }

  /// Masks and changes the tile's scores, then folds them into each row's online softmax: the
  /// scores become weights, and st.rescale the factor for what the rows hold so far.
  void tile_softmax(TileState& st, Index j0, bool masked) const {
    const Index n_keys = tile_keys(j0);
    for (Index r = 0; r < st.n_rows; ++r) {
      T* s_row = st.s + r * score_ld_;
      if (masked || changes_) change_scores(st.i0 + r, j0, n_keys, s_row);
      std::fill(s_row + n_keys, s_row + score_ld_, -std::numeric_limits<T>::infinity());
      st.rescale[r] = st.rows[r].absorb(s_row, score_ld_, [&](V x) { return micro_.exp2(x); });
    }
  }

  /// acc += the weights of keys [j0 + c0, j0 + c0 + count) times their values; the first run
  /// (c0 = 0) first rescales acc.
  void tile_accumulate(const TileState& st, Index j0, Index c0, Index count) const {
    micro_.accumulate(st.s + c0, st.n_rows, score_ld_, j0 + c0, count, c0 == 0 ? st.rescale : st.ones, st.acc);
  }

  /// Epilogue: normalise once, and write the rows (and their LSEs).
  void end(TileState& st) const {
    if (st.totals_used) fold_chunk(st);
    for (Index r = 0; r < st.n_rows; ++r) {
      const RowTotal total =
          st.totals_used ? st.totals[r] : RowTotal{st.rows[r].running_max, reduce_add(st.rows[r].running_sum)};
      finish_row(st.i0 + r, total, (st.totals_used ? st.total_acc : st.acc) + r * acc_ld_);
    }
  }

 private:

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

  /// Adds the chunk just finished (st.acc, st.rows) into the totals with the log-sum-exp rule,
  /// then starts the next chunk afresh.
  void fold_chunk(TileState& st) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    for (Index r = 0; r < st.n_rows; ++r) {
      RowTotal& total = st.totals[r];
      T* total_acc = st.total_acc + r * acc_ld_;
      T* chunk_acc = st.acc + r * acc_ld_;
      if (!st.totals_used) total = {kMinusInf, T(0)}, std::fill(total_acc, total_acc + acc_ld_, T(0));
      const T chunk_max = st.rows[r].running_max, chunk_sum = reduce_add(st.rows[r].running_sum);
      const T max = std::max(total.max, chunk_max);
      if (max != kMinusInf) {  // NaN or a visible key: fold (NaN stays NaN and is redone below)
        const T a = std::exp2(total.max - max), b = std::exp2(chunk_max - max);
        for (Index c = 0; c < acc_ld_; ++c) total_acc[c] = a * total_acc[c] + b * chunk_acc[c];
        total = {max, a * total.sum + b * chunk_sum};
      }
      st.rows[r] = {};
      std::fill(chunk_acc, chunk_acc + acc_ld_, T(0));
    }
    st.totals_used = true;
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

/// How a split call cuts its keys (key_pieces): piece p covers keys [p L, (p + 1) L), whole
/// key tiles, the last one the rest (or none).
struct KeyPieces {
  KeyPieces(Index pieces, Index nk, Index key_rows)
      : nk_(nk), piece_keys_(round_up((nk + pieces - 1) / pieces, key_rows)) {}
  Index first(Index piece) const { return piece * piece_keys_; }
  Index keys(Index piece) const { return std::max<Index>(0, std::min(piece_keys_, nk_ - first(piece))); }

  /// The masks of one piece. It sees its keys where they sit in the call (key_offset), so that
  /// causal alignment, windows, ALiBi and key lengths need no translation; masks and biases
  /// are column slices. A sink joins the denominator once, after the merge, not once per piece.
  detail::HeadMasks masks(const detail::HeadMasks& call, Index piece) const {
    const Index j0 = first(piece), n = keys(piece);
    detail::HeadMasks masks = call;
    if (!call.mask.empty()) masks.mask = call.mask.middle_cols(j0, n);
    if (!call.bias.empty()) masks.bias = call.bias.middle_cols(j0, n);
    masks.key_offset = call.key_offset + j0;
    masks.total_keys = call.total_keys >= 0 ? call.total_keys : nk_;
    masks.sinks = nullptr;
    return masks;
  }

 private:
  Index nk_, piece_keys_;
};

/// Merges the pieces' partial results (pieces, Nq, d_v) and LSEs (pieces, Nq) in key order
/// (the same order whatever ran them), into piece 0's slots, adds the sink, and stores each
/// row, rounded once to out's type. As in TiledHead::finish_row, a row that came out
/// non-finite is redone by the reference over all its keys at once (a piece cannot tell that
/// a NaN value it saw has weight 0 in the whole row).
template <class T, class KV>
void merge_pieces(QueryRows<T> q, const KV& k, const KV& v, OutputRows<T> out, T* lse, double scale,
                  const detail::HeadMasks& masks, Index pieces, T* partial_out, T* partial_lse) {
  const Index nq = q.rows, dv = out.cols;
  const detail::MaskPolicy<T> full(masks, nq, k.rows, T(1));
  const MatrixView<T> merged(partial_out, nq, dv, dv);
  for (Index piece = 1; piece < pieces; ++piece)
    merge_partial(merged, partial_lse, MatrixView<const T>(partial_out + piece * nq * dv, nq, dv, dv),
                  partial_lse + piece * nq);
  for (Index i = 0; i < nq; ++i) {
    T* row = merged.row(i);
    if (full.has_sinks()) add_sink(row, dv, partial_lse[i], full.sink(i));
    if (!std::all_of(row, row + dv, [](T x) { return std::isfinite(x); }))
      reference_redo_row(q, k, v, i, scale, full, row, partial_lse + i);
    out.write_row(i, row);
    if (lse) lse[i] = partial_lse[i];
  }
}

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
  // Partial outputs and LSEs: (pieces, Nq, d_v) and (pieces, Nq).
  const KeyPieces split(pieces, nk, blocks.key_rows);
  const detail::ScratchLease<T, detail::Slot::Partials> partials(pieces * nq * (dv + 1));
  T* partial_out = partials.data();
  T* partial_lse = partial_out + pieces * nq * dv;
  detail::parallel_for(pieces * query_tiles, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) {
      const Index piece = item / query_tiles, tile = item % query_tiles;
      const Index j0 = split.first(piece), n = split.keys(piece);
      const auto k_piece = k.middle_rows(j0, n), v_piece = v.middle_rows(j0, n);
      T* packed = detail::thread_scratch<T, detail::Slot::ChunkPacked>(Micro::packed_size(k_piece, v_piece, blocks));
      const Micro micro(k_piece, v_piece, blocks, packed);
      micro.pack(k_piece, v_piece, 0, micro.pack_tiles(k_piece));
      const MatrixView<T> piece_out(partial_out + piece * nq * dv, nq, dv, dv);
      const TiledHead<Micro> head(q, k_piece, v_piece, piece_out, partial_lse + piece * nq, scale,
                                  split.masks(masks, piece), micro, blocks);
      head.run_tile(tile);
    }
  });
  merge_pieces(q, k, v, out, lse, scale, masks, pieces, partial_out, partial_lse);
}

/// Several heads of one decoding step whose keys lie at the same positions of a memory laid
/// out page by page, every head of a page together (a paged cache: PagedKVCache):
/// out_h = softmax(scale Q_h K_h^T + masks_h) V_h for each head h, bit for bit what
/// tiled_attention computes for each head alone. Each thread takes a piece of the keys for
/// every head and walks it a key tile at a time; within a tile it computes every head's scores
/// a page at a time, then every head's softmax, then every head's values a page at a time, so
/// that memory is read a page of every head at a time rather than a head's share of it:
/// scattered pages stream from DRAM far faster in whole (README, "Paged KV cache").
template <class Micro>
struct HeadCall {
  using T = typename Micro::Vec::value_type;
  QueryRows<T> q;
  typename Micro::KeyView k, v;
  OutputRows<T> out;
  detail::HeadMasks masks;
};

/// Keys from row i of a view on that lie together in memory, at most `most`: the rest of i's
/// page in a paged view.
template <class S>
Index contiguous_keys(const MatrixView<const S>&, Index, Index most) {
  return most;
}
template <class S>
Index contiguous_keys(const PagedView<const S>& view, Index i, Index most) {
  return std::min(most, view.run(i));
}

template <class Micro>
void multi_head_attention(const std::vector<HeadCall<Micro>>& heads, double scale, const Options& options) {
  static_assert(!prepares_queries<Micro>, "its prepared queries live in one scratch buffer per thread");
  using T = typename Micro::Vec::value_type;
  using Head = TiledHead<Micro>;
  if (heads.empty()) return;
  const Index nh = Index(heads.size()), nq = heads[0].q.rows, nk = heads[0].k.rows, dk = heads[0].q.cols,
              dv = heads[0].out.cols;
  const BlockConfig blocks =
      choose_blocks(options.blocks, nq, nk, dk, dv, Index(sizeof(T)), Micro::key_multiple, Micro::row_multiple);
  const Index query_tiles = (nq + blocks.query_rows - 1) / blocks.query_rows;
  const Index pieces = key_pieces(query_tiles, nk);
  if (pieces == 1) {  // short keys: each head alone, as tiled_attention runs it, heads shared among threads
    detail::parallel_for(nh * query_tiles, options, [&](Index first, Index end) {
      for (Index item = first; item < end; ++item) {
        const HeadCall<Micro>& head = heads[std::size_t(item / query_tiles)];
        const Micro micro(head.k, head.v, blocks, nullptr);  // reads K and V in place
        Head(head.q, head.k, head.v, head.out, nullptr, scale, head.masks, micro, blocks).run_tile(item % query_tiles);
      }
    });
    return;
  }
  const KeyPieces split(pieces, nk, blocks.key_rows);
  const detail::ScratchLease<T, detail::Slot::Partials> partials(nh * pieces * nq * (dv + 1));
  T* partial_out = partials.data();
  T* partial_lse = partial_out + nh * pieces * nq * dv;
  const auto part = [&](Index h, Index piece) { return (h * pieces + piece) * nq; };  // its first row
  detail::parallel_for(pieces * query_tiles, options, [&](Index first, Index end) {
    std::vector<Micro> micros;  // each TiledHead keeps a reference to its Micro: no reallocation
    std::vector<Head> tiled;
    std::vector<typename Head::TileState> states;
    std::vector<char> visiting, masked;
    micros.reserve(std::size_t(nh)), tiled.reserve(std::size_t(nh));
    for (Index item = first; item < end; ++item) {
      const Index piece = item / query_tiles, tile = item % query_tiles;
      const Index j0 = split.first(piece), n = split.keys(piece);
      micros.clear(), tiled.clear(), states.clear();
      for (const HeadCall<Micro>& head : heads)
        micros.emplace_back(head.k.middle_rows(j0, n), head.v.middle_rows(j0, n), blocks, nullptr);
      for (Index h = 0; h < nh; ++h) {
        const HeadCall<Micro>& head = heads[std::size_t(h)];
        const Index at = part(h, piece);
        tiled.emplace_back(head.q, head.k.middle_rows(j0, n), head.v.middle_rows(j0, n),
                           MatrixView<T>(partial_out + at * dv, nq, dv, dv), partial_lse + at, scale,
                           split.masks(head.masks, piece), micros[std::size_t(h)], blocks);
        states.push_back(tiled.back().scratch_state(h, nh));
        tiled.back().begin(tile, states.back());
      }
      visiting.assign(std::size_t(nh), 0), masked.assign(std::size_t(nh), 0);
      const auto k_piece = heads[0].k.middle_rows(j0, n);  // every head's pages are alike
      for (Index key = 0; key < n; key += blocks.key_rows) {
        const Index keys = tiled[0].tile_keys(key);
        const auto each_run = [&](auto&& step) {  // runs of the tile's keys within a page, in order
          for (Index c = 0, run; c < keys; c += run) {
            run = contiguous_keys(k_piece, key + c, keys - c);
            for (std::size_t h = 0; h < tiled.size(); ++h)
              if (visiting[h]) step(h, c, run);
          }
        };
        for (std::size_t h = 0; h < tiled.size(); ++h)
          if ((visiting[h] = tiled[h].visits(states[h], key))) masked[h] = tiled[h].start_key_tile(states[h], key);
        // The next key tile, this piece's or the next piece's first (when this thread runs it),
        // goes into L2 while this one computes: its pages are scattered, so the hardware
        // prefetcher cannot run ahead into them.
        const Index next = j0 + key + blocks.key_rows;
        const bool prefetch = next < j0 + n || item + 1 < end;
        const Index next_keys = prefetch ? std::max<Index>(0, std::min(blocks.key_rows, nk - next)) : 0;
        each_run([&](std::size_t h, Index c, Index run) {
          tiled[h].tile_scores(states[h], key, c, run);
          if (c < next_keys) Micro::prefetch_keys(heads[h].k, heads[h].v, next + c, std::min(run, next_keys - c));
        });
        for (std::size_t h = 0; h < tiled.size(); ++h)
          if (visiting[h]) tiled[h].tile_softmax(states[h], key, masked[h]);
        each_run([&](std::size_t h, Index c, Index run) { tiled[h].tile_accumulate(states[h], key, c, run); });
      }
      for (std::size_t h = 0; h < tiled.size(); ++h) tiled[h].end(states[h]);
    }
  });
  for (Index h = 0; h < nh; ++h) {
    const HeadCall<Micro>& head = heads[std::size_t(h)];
    merge_pieces(head.q, head.k, head.v, head.out, static_cast<T*>(nullptr), scale, head.masks, pieces,
                 partial_out + part(h, 0) * dv, partial_lse + part(h, 0));
  }
}
