// sdpa/kernels/simd-inl.hpp - Kernel::Simd: the tiled loop with register-blocked vector microkernels.
//
// Two products dominate: S = Q_tile K_tile^T and acc += P V_tile. Both are computed by
// microkernels that keep an R x C block of vector accumulators in registers, vectorised
// across keys (for S) and across value features (for P V), and broadcast the other operand
// one scalar at a time (the GEMM microkernel of Eigen, BLIS and ruy).
//
// For S to be vectorised across keys, K is packed once per call into K^T panels, one per key
// tile: panel b holds keys [b Bk, b Bk + Bk) as (d_k, Bk padded) with zeros past Nk. V is read
// in place, row by row; only when d_v is not a multiple of the vector width is it packed
// with zero padding, so that no load reads past a row. Exp is the polynomial of simd/exp-inl.hpp.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only, where
// `Arch` names the target's ISA tag.

/// Register blocking per ISA: R rows x C vectors of accumulators, plus C loads and one
/// broadcast in flight, must fit the register file (32 zmm / 16 ymm / 32 q registers).
/// 6 x 4 zmm = 24 accumulators: with two FMA pipes of 4-cycle latency, 8 independent FMAs
/// hide the latency and 24 leave the loads (4 + 6 per step) well under the FMA count.
/// (RegisterBlock: the accumulators in registers; BlockConfig: the tile sizes in memory.)
template <class Arch> struct RegisterBlock { static constexpr int rows = 6, vectors = 4; };
template <> struct RegisterBlock<simd::avx2> { static constexpr int rows = 6, vectors = 2; };  // 12 of 16 ymm
template <> struct RegisterBlock<simd::scalar> { static constexpr int rows = 4, vectors = 4; };

namespace microkernels {

/// C consecutive vectors of a row from `row` on, widened to float as the vector type loads
/// them (float, 16-bit). (Here, not in simd/arch.hpp: code inlining a target's vectors must be
/// compiled inside that target.)
template <class V, int C, class P>
SDPA_ALWAYS_INLINE void load_vectors(const P* row, V (&loaded)[C]) {
  SDPA_UNROLL
  for (int c = 0; c < C; ++c) loaded[c] = V::load(row + c * V::width);
}
/// The same for an int8 row (detail::QuantizedFeatures): each block's integers widened and
/// times its scale, converted once for all the block's vectors (the products are exact in
/// float: a 7-bit integer times an fp16 scale). The C vectors start at a multiple of C W
/// features (value_block's column groups, or a single vector), so a block holds either all of
/// them or whole runs of 32 / W.
template <class V, int C>
SDPA_ALWAYS_INLINE void load_vectors(detail::QuantizedFeatures f, V (&loaded)[C]) {
  constexpr int kBlock = BlockQ8_0::size, per_block = std::min(C, kBlock / V::width);
  static_assert(kBlock % V::width == 0 && ((C * V::width) % kBlock == 0 || kBlock % (C * V::width) == 0),
                "a group of vectors spans whole blocks or lies within one");
  SDPA_UNROLL
  for (int c0 = 0; c0 < C; c0 += per_block) {
    const long feature = f.feature + c0 * V::width;
    const BlockQ8_0& block = f.blocks[feature / kBlock];
    const V scale = V::broadcast_scale(block);
    SDPA_UNROLL
    for (int c = 0; c < per_block; ++c) loaded[c0 + c] = V::load(block.q + feature % kBlock + c * V::width) * scale;
  }
}

/// Calls f(std::integral_constant<int, n>) for the runtime n in [1, R]: the remainder rows of
/// a tile get a microkernel of their own exact height.
template <int R, class F>
SDPA_ALWAYS_INLINE void with_rows(Index n, F&& f) {
  if constexpr (R > 1) {
    if (n < R) return with_rows<R - 1>(n, f);
  }
  f(std::integral_constant<int, R>{});
}

// The step both products are made of (the GEMM microkernel's inner step): acc[r][c] +=
// column[r * stride] * row[c W .. c W + W), C loads and R broadcasts for R C FMAs. `row` may
// address 16-bit values or int8 blocks (detail::features_of), widened as they are loaded.
template <class V, int R, int C, class Row>
SDPA_ALWAYS_INLINE void rank1_update(const float* column, Index stride, Row row, V (&acc)[R][C]) {
  V loaded[C];
  load_vectors(row, loaded);
  SDPA_UNROLL
  for (int r = 0; r < R; ++r) {
    const V scalar = V::broadcast(column[r * stride]);
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c] = fma(scalar, loaded[c], acc[r][c]);
  }
}

// out (R, C W) = rescale * acc (row r scaled by rescale[r]): where a value block starts.
template <class V, int R, int C>
SDPA_ALWAYS_INLINE void load_rescaled(const float* acc, Index acc_ld, const float* rescale, V (&out)[R][C]) {
  SDPA_UNROLL
  for (int r = 0; r < R; ++r) {
    const V factor = V::broadcast(rescale[r]);
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) out[r][c] = V::load(acc + r * acc_ld + c * V::width) * factor;
  }
}

// to (R, C W) = block, rows at stride ld.
template <class V, int R, int C>
SDPA_ALWAYS_INLINE void store_block(const V (&block)[R][C], float* to, Index ld) {
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) block[r][c].store(to + r * ld + c * V::width);
}

// s (R, C W) = q (R, d_k) kt (d_k, C W), in registers: kt is a K^T panel, row stride kt_ld.
template <class V, int R, int C>
SDPA_ALWAYS_INLINE void score_registers(const float* q, Index dk, const float* kt, Index kt_ld, V (&s)[R][C]) {
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) s[r][c] = V::zero();
  for (Index e = 0; e < dk; ++e) rank1_update<V, R, C>(q + e, dk, kt + e * kt_ld, s);
}

// s (R, C W) = q (R, d_k) kt (d_k, C W), stored.
template <class V, int R, int C>
SDPA_ALWAYS_INLINE void score_block(const float* q, Index dk, const float* kt, Index kt_ld, float* s, Index s_ld) {
  V acc[R][C];
  score_registers<V, R, C>(q, dk, kt, kt_ld, acc);
  store_block(acc, s, s_ld);
}

// Scores of R rows against a whole key tile (C W keys), in registers, changed by the per-score
// variants (change(r, c, s) for vector c of row r: the soft cap, ALiBi) and folded into the
// rows' online softmax: stores p = 2^(s - max) and each row's rescale factor. Same operations
// in the same order as OnlineSoftmaxRow::absorb, so the same results. (The second half of
// score_softmax_block, and of the bf16 microkernel's, bf16_tiles-inl.hpp.)
template <class V, int R, int C, class Change>
SDPA_ALWAYS_INLINE void softmax_registers(V (&s)[R][C], float* p, Index p_ld, OnlineSoftmaxRow<V>* states,
                                          float* rescale, const Change& change) {
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) s[r][c] = change(r, c, s[r][c]);
  const auto exp2 = [](V x) { return exp2_no_overflow(x); };
  SDPA_UNROLL
  for (int r = 0; r < R; ++r) {
    V tile_max = V::broadcast(-std::numeric_limits<float>::infinity());
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) tile_max = max(s[r][c], tile_max);
    V row_rescale;
    const V shift = states[r].raise_max(reduce_max(tile_max), exp2, row_rescale);
    V tile_sum = V::zero();
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) {
      const V weight = exp2(s[r][c] - shift);
      weight.store(p + r * p_ld + c * V::width);
      tile_sum = tile_sum + weight;
    }
    states[r].add(tile_sum, row_rescale);
    rescale[r] = states[r].first_lane(row_rescale);
  }
}

// The scores of R rows against a whole key tile, folded into the rows' online softmax while
// still in registers (softmax_registers).
template <class V, int R, int C, class Change>
SDPA_ALWAYS_INLINE void score_softmax_block(const float* q, Index dk, const float* kt, Index kt_ld, float* p,
                                            Index p_ld, OnlineSoftmaxRow<V>* states, float* rescale,
                                            const Change& change) {
  V s[R][C];
  score_registers<V, R, C>(q, dk, kt, kt_ld, s);
  softmax_registers<V, R, C>(s, p, p_ld, states, rescale, change);
}

// acc (R, C W) = rescale * acc + p (R, keys) v (keys, features [col, col + C W)): v rows at
// stride v_ld (in elements of S).
template <class V, int R, int C, class S>
SDPA_ALWAYS_INLINE void value_block(const float* p, Index p_ld, Index keys, const S* v, Index v_ld, Index col,
                                    const float* rescale, float* acc, Index acc_ld) {
  V out[R][C];
  load_rescaled(acc, acc_ld, rescale, out);
  for (Index j = 0; j < keys; ++j) rank1_update<V, R, C>(p + j, p_ld, detail::features_of(v + j * v_ld) + col, out);
  store_block(out, acc, acc_ld);
}

// acc (rows, vectors W) = rescale * acc + p (rows, keys) v (keys, vectors W), v rows at stride
// v_ld, in register blocks of R rows x C vectors (remainders get blocks of their own size).
template <class V, int R, int C, class S>
void accumulate_tile(const float* p, Index rows, Index p_ld, Index keys, const S* v, Index v_ld, Index vectors,
                     const float* rescale, float* acc, Index acc_ld) {
  const auto columns = [&](Index col, auto width) {
    for (Index r0 = 0; r0 < rows; r0 += R)
      with_rows<R>(rows - r0, [&](auto height) {
        value_block<V, height, decltype(width)::value>(p + r0 * p_ld, p_ld, keys, v, v_ld, col, rescale + r0,
                                                       acc + r0 * acc_ld + col, acc_ld);
      });
  };
  Index vec = 0;
  for (; vec + C <= vectors; vec += C) columns(vec * V::width, std::integral_constant<int, C>{});
  for (; vec < vectors; ++vec) columns(vec * V::width, std::integral_constant<int, 1>{});
}

}  // namespace microkernels

/// `S`: the element type of K and V (float, Eigen::half, Eigen::bfloat16 or BlockQ8_0),
/// converted to float as they are packed (for prefill, which packs K whatever its type).
template <class Arch, class S = float>
class SimdTiles {
 public:
  using Vec = simd::Vec<float, Arch>;
  using Storage = S;
  using KeyView = MatrixView<const S>;  // a paged cache is gathered first (Paths::paged_head)
  static constexpr int W = Vec::width;
  static constexpr int R = RegisterBlock<Arch>::rows;
  static constexpr int C = RegisterBlock<Arch>::vectors;
  static constexpr Index key_multiple = C * W;  // one score microkernel spans a whole padded key tile row
  static constexpr Index row_multiple = R;

  /// V is read in place only when its rows are contiguous and whole vectors. Otherwise it is
  /// copied, zero-padded, into (Nk, d_v rounded up to W): no load then reads past a row, and a
  /// key tile of V is one contiguous block. Rows strided by the other heads of a
  /// [tokens, heads d] buffer (2-4 KiB apart) all land in the same few L1 sets and evict each
  /// other within a tile; the copy, one pass over V, measured 15-18% faster on AVX-512 and 5%
  /// on AVX2 at N = 2048, 8 heads side by side (docs/design.md, "Kernel structure").
  /// A 16-bit V is always copied, converted to float once rather than at every use.
  static bool copies_v(const MatrixView<const S>& v) {
    return !std::is_same_v<S, float> || round_up(v.cols, W) != v.cols || v.row_stride != v.cols;
  }
  /// pack() asks for the row this many keys ahead while it copies one: K and V arrive from L3
  /// or DRAM (rows of a [tokens, heads d] buffer are 2-4 KiB apart), and the copy's scalar
  /// stores leave the out-of-order window room for only a row or two of misses.
  static constexpr Index kPackAhead = 8;
  static Index features(Index elements) { return detail::features<S>(elements); }
  static Index padded_features(const MatrixView<const S>& v) { return round_up(features(v.cols), W); }

  /// Floats of packing buffer the constructor needs: K^T panels (tiles, d_k, padded Bk), and
  /// the copy of V when copies_v.
  static Index packed_size(MatrixView<const S> k, MatrixView<const S> v, const BlockConfig& blocks) {
    const Index tiles = (k.rows + blocks.key_rows - 1) / blocks.key_rows;
    return tiles * features(k.cols) * round_up(blocks.key_rows, key_multiple) +
           (copies_v(v) ? v.rows * padded_features(v) : 0);
  }

  /// Lays out K^T panels (and a padded V when needed) in `packed` (packed_size floats, which
  /// must outlive this); pack() fills them.
  SimdTiles(MatrixView<const S> k, MatrixView<const S> v, const BlockConfig& blocks, float* packed)
      : dk_(features(k.cols)), key_rows_(blocks.key_rows), panel_ld_(round_up(blocks.key_rows, key_multiple)),
        acc_ld_(padded_features(v)), packed_k_(packed) {
    if (copies_v(v)) {  // V is read from a zero-padded copy (Nk, acc_ld) after the panels
      const Index tiles = (k.rows + key_rows_ - 1) / key_rows_;
      v_ = MatrixView<const float>(packed + tiles * dk_ * panel_ld_, v.rows, acc_ld_, acc_ld_);
    } else if constexpr (std::is_same_v<S, float>) {
      v_ = v;
    }
  }

  /// Key tiles that pack() lays out (threads may pack different ones at once).
  Index pack_tiles(MatrixView<const S> k) const { return (k.rows + key_rows_ - 1) / key_rows_; }

  /// Copies key tiles [first, end) of K (and their rows of V when copies_v) into the packed
  /// layout: once per call, before any tile is computed.
  void pack(MatrixView<const S> k, MatrixView<const S> v, Index first, Index end) const {
    const Index nk = k.rows;
    const auto ask_ahead = [](const MatrixView<const S>& rows, Index i) {
      if (i < rows.rows) prefetch_bytes(reinterpret_cast<const char*>(rows.row(i)), rows.cols * Index(sizeof(S)));
    };
    for (Index t = first; t < end; ++t) {
      // K^T panel t, zero-padded: (d_k, panel_ld)
      float* panel = packed_k_ + t * dk_ * panel_ld_;
      const Index j0 = t * key_rows_, keys = std::min(key_rows_, nk - j0);
      for (Index e = 0; e < dk_; ++e) std::fill(panel + e * panel_ld_ + keys, panel + (e + 1) * panel_ld_, 0.0f);
      for (Index c = 0; c < keys; ++c) {
        const S* k_row = k.row(j0 + c);
        ask_ahead(k, j0 + c + kPackAhead);
        for (Index e = 0; e < dk_; ++e) panel[e * panel_ld_ + c] = detail::feature(k_row, e);
      }
      if (!copies_v(v)) continue;
      float* values = const_cast<float*>(v_.data);
      for (Index j = j0; j < j0 + keys; ++j) {
        ask_ahead(v, j + kPackAhead);
        const Index dv = features(v.cols);
        for (Index e = 0; e < dv; ++e) values[j * acc_ld_ + e] = detail::feature(v.row(j), e);
        std::fill(values + j * acc_ld_ + dv, values + (j + 1) * acc_ld_, 0.0f);
      }
    }
  }

  Index accumulator_cols() const { return acc_ld_; }
  Vec exp2(Vec x) const { return exp2_no_overflow(x); }  // x = s - max <= 0

  void scores(const float* q_tile, Index rows, Index j0, Index keys, float* s, Index ld) const {
    const float* panel = packed_k_ + (j0 / key_rows_) * dk_ * panel_ld_;
    for (Index col = 0; col < keys; col += key_multiple)
      for (Index r0 = 0; r0 < rows; r0 += R)
        microkernels::with_rows<R>(rows - r0, [&](auto height) {
          microkernels::score_block<Vec, height, C>(q_tile + r0 * dk_, dk_, panel + col, panel_ld_, s + r0 * ld + col, ld);
        });
  }

  /// Takes a tile of exactly one microkernel's width (AVX-512's default: 64 keys when d_k + d_v >= 128;
  /// on AVX2 a 16-key tile costs more than fusing saves, measured, so 64-key tiles run unfused): S goes
  /// from the FMAs through the variants' change(row, key, s) (row in the tile, key offset in
  /// it), max, exp and sum to P without a round trip through memory.
  template <class Change>
  bool fused_softmax(const float* q_tile, Index rows, Index j0, Index keys, float* p, Index ld,
                     OnlineSoftmaxRow<Vec>* states, float* rescale, const Change& change) const {
    if (keys != key_multiple || ld != key_multiple) return false;
    const float* panel = packed_k_ + (j0 / key_rows_) * dk_ * panel_ld_;
    for (Index r0 = 0; r0 < rows; r0 += R)
      microkernels::with_rows<R>(rows - r0, [&](auto height) {
        microkernels::score_softmax_block<Vec, height, C>(
            q_tile + r0 * dk_, dk_, panel, panel_ld_, p + r0 * ld, ld, states + r0, rescale + r0,
            [&](int r, int c, Vec s) { return change(r0 + r, Index(c) * W, s); });
      });
    return true;
  }

  void accumulate(const float* p, Index rows, Index ld, Index j0, Index keys, const float* rescale,
                  float* acc) const {
    microkernels::accumulate_tile<Vec, R, C>(p, rows, ld, keys, v_.row(j0), v_.row_stride, acc_ld_ / W, rescale, acc,
                                             acc_ld_);
  }

 private:
  Index dk_, key_rows_, panel_ld_, acc_ld_;
  MatrixView<const float> v_;
  float* packed_k_;
};

/// The microkernels for a handful of query rows (decoding): K and V are read in place, row by
/// row, with no packing. Packing K^T costs a pass over K per call, as much as the whole of one
/// query's attention; here each key row is loaded once and dotted with every query row
/// (vectorised along d, then summed across lanes), which leaves decoding bound by memory.
/// Needs d_k and d_v to be multiples of the vector width. K and V of type `S` (float,
/// Eigen::half or Eigen::bfloat16) are widened to float in registers as they are loaded: a
/// 16-bit cache is read in its own bytes, half those of a float one, and never converted into
/// a buffer.
template <class Arch, class S = float, class View = MatrixView<const S>>
class RowTiles {
 public:
  using Vec = simd::Vec<float, Arch>;
  using Storage = S;
  using KeyView = View;  // MatrixView, or PagedView for a paged cache
  static constexpr int W = Vec::width;
  static constexpr Index key_multiple = W;  // score rows padded to whole vectors
  static constexpr Index max_rows = kDecodeRows;
  static constexpr Index row_multiple = max_rows;  // all the query rows in one tile: K is read once

  /// When this beats packing (measured: see README, decoding).
  static bool fits(Index nq, Index dk, Index dv) { return nq <= max_rows && fits_widths(dk, dv); }  // features
  /// Whether the head dims allow these microkernels at all (whole vectors).
  static bool fits_widths(Index dk, Index dv) { return dk % W == 0 && dv % W == 0; }
  static Index packed_size(View, View, const BlockConfig&) { return 0; }

  RowTiles(View k, View v, const BlockConfig&, float*) : k_(k), v_(v) {}
  Index pack_tiles(View) const { return 0; }  // reads K and V in place
  void pack(View, View, Index, Index) const {}

  Index accumulator_cols() const { return detail::features<S>(v_.cols); }
  Vec exp2(Vec x) const { return exp2_no_overflow(x); }
  template <class Change>
  bool fused_softmax(const float*, Index, Index, Index, float*, Index, OnlineSoftmaxRow<Vec>*, float*,
                     const Change&) const {
    return false;
  }

  /// Keys go W at a time: their W dot products are summed across lanes together
  /// (reduce_add_each), a vector of scores per group instead of a horizontal reduction per key.
  ///
  /// Also asks for rows that are read soon: this tile's V rows (read next, by accumulate) and
  /// the next tile's K rows. Decoding streams K and V from DRAM in alternating tiles, and
  /// without this each tile's first rows of a stream wait for the hardware prefetcher to pick
  /// it up again. A contiguous cache's rows follow each other, and the prefetcher streams the
  /// rest once it has the first: only the first kStreamRows rows of each are asked for (asking
  /// for every row was a quarter of a float decode's instructions, and ran no faster:
  /// docs/design.md, "Decoding"). A paged cache's pages lie anywhere: every row is asked for.
  void scores(const float* q_tile, Index rows, Index j0, Index keys, float* s, Index ld) const {
    const Index dk = detail::features<S>(k_.cols), next_keys = std::min(keys, k_.rows - j0 - keys);
    // each group of up to W keys: its key rows found by find(c0, n, group), then scored
    const auto in_groups = [&](auto&& find) {
      const S* group[W];
      for (Index c0 = 0; c0 < keys; c0 += W) {
        const Index n = std::min<Index>(W, keys - c0);
        find(c0, n, group);
        group_scores(q_tile, rows, dk, group, n, s + c0, ld);
      }
    };
    if constexpr (std::is_same_v<View, MatrixView<const S>>) {
      for (Index c = 0; c < std::min(keys, kStreamRows); ++c) prefetch_row(v_.row(j0 + c), v_.cols);
      for (Index c = 0; c < std::min(next_keys, kStreamRows); ++c) prefetch_row(k_.row(j0 + keys + c), k_.cols);
      in_groups([&](Index c0, Index n, const S* (&group)[W]) {
        for (Index t = 0; t < n; ++t) group[t] = k_.row(j0 + c0 + t);
      });
    } else {
      RowCursor k_rows(k_, j0), v_rows(v_, j0), next_k_rows(k_, j0 + keys, next_keys);
      in_groups([&](Index c0, Index n, const S* (&group)[W]) {
        for (Index t = 0; t < n; ++t, k_rows.next(), v_rows.next()) {
          group[t] = k_rows.row();
          prefetch_row(v_rows.row(), v_.cols);
          if (c0 + t < next_keys) prefetch_row(next_k_rows.row(), k_.cols), next_k_rows.next();
        }
      });
    }
  }

  /// Asks for the K and V rows of keys [j0, j0 + keys) into L2, ahead of their tile (for a
  /// driver whose next tile lies far in memory: multi_head_attention).
  static void prefetch_keys(const View& k, const View& v, Index j0, Index keys) {
    RowCursor k_rows(k, j0, keys), v_rows(v, j0, keys);
    for (Index c = 0; c < keys; ++c, k_rows.next(), v_rows.next())
      prefetch_row(k_rows.row(), k.cols), prefetch_row(v_rows.row(), v.cols);
  }

  /// A tile of a paged V goes page by page: each page's rows are contiguous, and every page
  /// after the first adds to the accumulator as it stands (rescale 1), so the sums are the
  /// contiguous cache's, in the same order, bit for bit.
  void accumulate(const float* p, Index rows, Index ld, Index j0, Index keys, const float* rescale,
                  float* acc) const {
    if constexpr (std::is_same_v<View, MatrixView<const S>>) {
      accumulate_rows(p, rows, ld, keys, v_.row(j0), rescale, acc);
    } else {
      float* ones = detail::thread_scratch<float, detail::Slot::Ones>(rows);
      std::fill(ones, ones + rows, 1.0f);
      for (Index c = 0; c < keys;) {
        const Index n = std::min(keys - c, v_.run(j0 + c));
        accumulate_rows(p + c, rows, ld, n, v_.row(j0 + c), c == 0 ? rescale : ones, acc);
        c += n;
      }
    }
  }

 private:
  /// acc (rows, d_v) = rescale acc + p (rows, keys) v (keys rows from `v` on, at V's stride).
  /// One query row takes twice the vectors per pass (its accumulators and loads fit the
  /// registers), so that V is walked half as many times; the sums are the same either way.
  void accumulate_rows(const float* p, Index rows, Index ld, Index keys, const S* v, const float* rescale,
                       float* acc) const {
    const Index dv = accumulator_cols(), vectors = dv / W;
    constexpr int C = RegisterBlock<Arch>::vectors;
    if (rows == 1 && vectors % (2 * C) == 0)
      microkernels::accumulate_tile<Vec, 1, 2 * C>(p, rows, ld, keys, v, v_.row_stride, vectors, rescale, acc, dv);
    else
      microkernels::accumulate_tile<Vec, max_rows, C>(p, rows, ld, keys, v, v_.row_stride, vectors, rescale, acc, dv);
  }

  /// Rows of a contiguous cache asked for at the start of each stream (see scores).
  static constexpr Index kStreamRows = 4;

  /// s (rows, n) = q_tile (rows, dk) against the n <= W key rows of `group`, summed across
  /// lanes W keys at once. The common head dims are compile-time constants here, so that
  /// dot_lanes' loops unroll completely (their counters and branches had been two fifths of
  /// a float decode's instructions: callgrind, AVX2, d = 64).
  static void group_scores(const float* q_tile, Index rows, Index dk, const S* const (&group)[W], Index n, float* s,
                           Index ld) {
    if (dk == 64) return group_scores(q_tile, rows, std::integral_constant<Index, 64>{}, group, n, s, ld);
    if (dk == 128) return group_scores(q_tile, rows, std::integral_constant<Index, 128>{}, group, n, s, ld);
    group_scores(q_tile, rows, Dim{dk}, group, n, s, ld);
  }

  /// A head dim known only at run time, as group_scores' overloads take it.
  struct Dim {
    Index value;
    constexpr operator Index() const { return value; }
  };

  template <class Features>
  static void group_scores(const float* q_tile, Index rows, Features dk, const S* const (&group)[W], Index n,
                           float* s, Index ld) {
    for (Index r = 0; r < rows; ++r) {
      Vec dots[W];
      SDPA_UNROLL
      for (int t = 0; t < W; ++t) dots[t] = t < n ? dot_lanes(q_tile + r * dk, group[t], dk) : Vec::zero();
      const Vec sums = reduce_add_each(dots);
      if (n == W) {
        sums.store(s + r * ld);
      } else {  // the last, partial group: only its keys' scores (the row may end here)
        float lanes[W];
        sums.store(lanes);
        std::copy(lanes, lanes + n, s + r * ld);
      }
    }
  }

  /// q . k over dk features, k of type S, vectorised along d and not yet summed across lanes
  /// (the lanes' sum is the dot product). An int8 row is taken a block at a time, its scale
  /// applied once per block.
  template <class Features>
  static Vec dot_lanes(const float* q, const S* k, Features dk) {
    Vec sum = Vec::zero();
    if constexpr (is_quantized<S>) {
      constexpr int kBlock = BlockQ8_0::size;
      for (Index b = 0; b < dk / kBlock; ++b, q += kBlock) {
        Vec block = Vec::zero();
        SDPA_UNROLL
        for (int e = 0; e < kBlock; e += W) block = fma(Vec::load(q + e), Vec::load(k[b].q + e), block);
        sum = fma(block, Vec::broadcast_scale(k[b]), sum);
      }
    } else {
      for (Index e = 0; e < dk; e += W) sum = fma(Vec::load(q + e), Vec::load(k + e), sum);
    }
    return sum;
  }

  static void prefetch_row(const S* at, Index cols) {
    prefetch_bytes_l2(reinterpret_cast<const char*>(at), cols * Index(sizeof(S)));
  }

  /// Rows first, first + 1, ... of a view (`count` of them), each found without a division:
  /// a paged view's rows are contiguous within a page, and its page table is read once per
  /// page rather than once per row (a division per key cost a paged decode 25-40%).
  struct RowCursor {
    RowCursor(const View& view, Index first, Index count = -1)
        : view_(view), i_(first), end_(count < 0 ? view.rows : first + count) {
      if (i_ < end_) at_ = view.row(i_), left_ = run(i_);
    }
    const S* row() const { return at_; }
    void next() {
      if (++i_ >= end_) return;
      if (--left_ > 0) {
        at_ += view_.row_stride;
      } else {
        at_ = view_.row(i_);
        left_ = run(i_);
      }
    }

   private:
    Index run(Index i) const {
      if constexpr (std::is_same_v<View, MatrixView<const S>>)
        return end_ - i;
      else
        return view_.run(i);
    }
    const View& view_;
    Index i_, end_, left_ = 0;
    const S* at_ = nullptr;
  };

  View k_, v_;
};
