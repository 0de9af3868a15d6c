// sdpa/kernels/backward-inl.hpp - the backward pass of the Blocked and Simd paths: FlashAttention-2's
// loop, tiled, with no atomics and no dependence on the thread count.
//
//   D_i = dO_i . O_i;  then for each (query slab, key chunk), one thread each:
//     pack the chunk's K and V (Micro::pack)
//     for each query tile of the slab, for each key tile of the chunk that a row may see:
//       S = Q_tile K_tile^T, masked and changed as the forward did     (Micro::scores)
//       P = 2^(S - lse)                     the forward's weights, recomputed from its LSE
//       dP = dO_tile V_tile^T                                          (Micro::value_scores)
//       dS = P (dP - D)                     the score gradient (and the bias's)
//       dU = dS f'(u)                       through the soft cap, if any
//       dV_tile += P^T dO_tile,  dK_tile += dU^T Q_tile               (Micro::add_transposed)
//       dQ_part[chunk] += dU K_tile                                    (Micro::add_keys)
//   after each slab: dQ_i = scale sum over chunks of dQ_part[chunk]_i, in chunk order
//
// A key chunk's dK and dV belong to the one thread that runs it: slabs run one after the other,
// so each chunk's sums take the query tiles in order. dQ sums over key chunks, which run on
// different threads: each writes its own partial, and the partials are added in chunk order.
// The slabs exist to bound those partials' memory (detail::backward_partial_bytes), whatever Nq. Chunks, slabs
// and tiles depend on the shapes and block sizes only, never on the threads: the gradients are
// bit-identical for any `threads`. A row of dQ, dK or dV that does not come out finite is
// computed again by the reference (reference_backward.hpp), as the forward redoes its rows:
// a key of weight 0 must add nothing, even where K or V holds NaN.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

namespace backward_detail {
/// Keys per chunk: a thread's unit of work, and the number of dQ partials a query row has
/// (Nk / kChunkKeys). 256 keys of K and V are 64-128 KiB at d = 64-128: they stay in L2 while
/// every query tile of the slab streams past.
inline constexpr Index kChunkKeys = 256;
}  // namespace backward_detail

namespace microkernels {
// out (R, C W) = [out +] x (R, inner) y (inner, C W), with x(r, e) at x[r x_row + e x_inner]
// (x_inner = 1: rows of x; x_row = 1: x transposed) and y rows at stride y_ld. The one block
// the backward's five products are made of.
template <class V, int R, int C, bool kAdd>
SDPA_ALWAYS_INLINE void product_block(const float* x, Index x_row, Index x_inner, Index inner, const float* y,
                                      Index y_ld, float* out, Index out_ld) {
  V acc[R][C];
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c] = kAdd ? V::load(out + r * out_ld + c * V::width) : V::zero();
  for (Index e = 0; e < inner; ++e) rank1_update<V, R, C>(x + e * x_inner, x_row, y + e * y_ld, acc);
  store_block(acc, out, out_ld);
}

// out (m, vectors W) = [out +] x (m, inner) y (inner, vectors W) in register blocks (remainders
// get blocks of their own size), x and y as product_block takes them.
template <class V, int R, int C, bool kAdd>
void product_tile(const float* x, Index x_row, Index x_inner, Index m, Index inner, const float* y, Index y_ld,
                  Index vectors, float* out, Index out_ld) {
  const auto columns = [&](Index col, auto width) {
    for (Index r0 = 0; r0 < m; r0 += R)
      with_rows<R>(m - r0, [&](auto height) {
        product_block<V, height, decltype(width)::value, kAdd>(x + r0 * x_row, x_row, x_inner, inner, y + col, y_ld,
                                                               out + r0 * out_ld + col, out_ld);
      });
  };
  Index vec = 0;
  for (; vec + C <= vectors; vec += C) columns(vec * V::width, std::integral_constant<int, C>{});
  for (; vec < vectors; ++vec) columns(vec * V::width, std::integral_constant<int, 1>{});
}
}  // namespace microkernels

/// The Blocked path's backward products: the textbook loops, in any arithmetic type T, on K
/// and V in place (a chunk's rows).
template <class T>
class BlockedBackwardTiles {
 public:
  using Vec = simd::Vec<T, simd::scalar>;
  static constexpr Index key_multiple = 1;
  static constexpr Index row_multiple = 1;

  static Index packed_size(MatrixView<const T>, MatrixView<const T>, const BlockConfig&) { return 0; }
  BlockedBackwardTiles(MatrixView<const T> k, MatrixView<const T> v, const BlockConfig&, T*) : k_(k), v_(v) {}
  void pack() const {}

  /// Row width of the tiles of `features` columns (Q, dO, the gradients' accumulators).
  static Index padded_cols(Index features) { return features; }
  static Vec exp2(Vec x) { return {std::exp2(x.v)}; }

  // s (rows, keys) = q (rows, d_k) K[j0 : j0 + keys]^T, q rows at stride padded_cols(d_k)
  void scores(const T* q, Index rows, Index j0, Index keys, T* s, Index ld) const { dots(q, k_, rows, j0, keys, s, ld); }
  // dp (rows, keys) = d_out (rows, d_v) V[j0 : j0 + keys]^T
  void value_scores(const T* d_out, Index rows, Index j0, Index keys, T* dp, Index ld) const {
    dots(d_out, v_, rows, j0, keys, dp, ld);
  }
  // acc (rows, d_k) += x (rows, keys) K[j0 : j0 + keys], acc rows at stride acc_ld
  void add_keys(const T* x, Index rows, Index ld, Index j0, Index keys, T* acc, Index acc_ld) const {
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < keys; ++c) {
        const T weight = x[r * ld + c];
        const T* k_row = k_.row(j0 + c);
        for (Index e = 0; e < k_.cols; ++e) acc[r * acc_ld + e] += weight * k_row[e];
      }
  }
  // acc (keys, cols) += x^T y: x (rows, keys) at stride ld, y (rows, cols) at stride y_ld
  static void add_transposed(const T* x, Index keys, Index ld, Index rows, const T* y, Index y_ld, Index cols, T* acc,
                             Index acc_ld) {
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < keys; ++c) {
        const T weight = x[r * ld + c];
        for (Index e = 0; e < cols; ++e) acc[c * acc_ld + e] += weight * y[r * y_ld + e];
      }
  }

 private:
  static void dots(const T* a, const MatrixView<const T>& b, Index rows, Index j0, Index keys, T* s, Index ld) {
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < keys; ++c) {
        T dot = T(0);
        for (Index e = 0; e < b.cols; ++e) dot += a[r * b.cols + e] * b(j0 + c, e);
        s[r * ld + c] = dot;
      }
  }
  MatrixView<const T> k_, v_;
};

/// The Simd path's backward products, all on microkernels::product_tile. A chunk's K and V are
/// packed into K^T and V^T panels (one per key tile, padded to whole microkernels with zeros),
/// and K also as contiguous rows padded to whole vectors: a head of a [tokens, heads d] buffer
/// has rows 2-4 KiB apart, which fall into a few L1 sets and evict each other.
template <class Arch>
class SimdBackwardTiles {
 public:
  using Vec = simd::Vec<float, Arch>;
  static constexpr int W = Vec::width;
  static constexpr int R = RegisterBlock<Arch>::rows;
  static constexpr int C = RegisterBlock<Arch>::vectors;
  static constexpr Index key_multiple = C * W;
  static constexpr Index row_multiple = R;

  static Index packed_size(MatrixView<const float> k, MatrixView<const float> v, const BlockConfig& blocks) {
    const Index tiles = (k.rows + blocks.key_rows - 1) / blocks.key_rows;
    return tiles * (k.cols + v.cols) * round_up(blocks.key_rows, key_multiple) + k.rows * round_up(k.cols, W);
  }
  SimdBackwardTiles(MatrixView<const float> k, MatrixView<const float> v, const BlockConfig& blocks, float* packed)
      : k_(k), v_(v), key_rows_(blocks.key_rows), panel_ld_(round_up(blocks.key_rows, key_multiple)),
        key_cols_(round_up(k.cols, W)), value_cols_(round_up(v.cols, W)) {
    const Index tiles = (k.rows + key_rows_ - 1) / key_rows_;
    key_panels_ = packed;
    value_panels_ = packed + tiles * k.cols * panel_ld_;
    key_rows_at_ = value_panels_ + tiles * v.cols * panel_ld_;
  }

  /// Fills the panels and the padded key rows from K and V.
  void pack() const {
    const Index tiles = (k_.rows + key_rows_ - 1) / key_rows_;
    for (Index t = 0; t < tiles; ++t) {
      transpose_into(k_, t, key_panels_ + t * k_.cols * panel_ld_);
      transpose_into(v_, t, value_panels_ + t * v_.cols * panel_ld_);
    }
    for (Index j = 0; j < k_.rows; ++j) {
      float* row = key_rows_at_ + j * key_cols_;
      std::copy(k_.row(j), k_.row(j) + k_.cols, row);
      std::fill(row + k_.cols, row + key_cols_, 0.0f);
    }
  }

  /// Row width of the tiles of `features` columns: whole vectors, zero-padded.
  static Index padded_cols(Index features) { return round_up(features, W); }
  static Vec exp2(Vec x) { return exp2_no_overflow(x); }

  void scores(const float* q, Index rows, Index j0, Index keys, float* s, Index ld) const {
    panel_product(q, key_cols_, k_.cols, key_panels_, rows, j0, keys, s, ld);
  }
  void value_scores(const float* d_out, Index rows, Index j0, Index keys, float* dp, Index ld) const {
    panel_product(d_out, value_cols_, v_.cols, value_panels_, rows, j0, keys, dp, ld);
  }
  void add_keys(const float* x, Index rows, Index ld, Index j0, Index keys, float* acc, Index acc_ld) const {
    microkernels::product_tile<Vec, R, C, true>(x, ld, 1, rows, keys, key_rows_at_ + j0 * key_cols_, key_cols_,
                                                key_cols_ / W, acc, acc_ld);
  }
  static void add_transposed(const float* x, Index keys, Index ld, Index rows, const float* y, Index y_ld, Index cols,
                             float* acc, Index acc_ld) {
    microkernels::product_tile<Vec, R, C, true>(x, 1, ld, keys, rows, y, y_ld, cols / W, acc, acc_ld);
  }

 private:
  /// panel t of `view` (keys [t Bk, t Bk + Bk)) as (features, panel_ld), zeros past the keys
  void transpose_into(const MatrixView<const float>& view, Index t, float* panel) const {
    const Index j0 = t * key_rows_, keys = std::min(key_rows_, view.rows - j0);
    for (Index e = 0; e < view.cols; ++e) {
      float* to = panel + e * panel_ld_;
      for (Index c = 0; c < keys; ++c) to[c] = view(j0 + c, e);
      std::fill(to + keys, to + panel_ld_, 0.0f);
    }
  }
  /// s (rows, whole microkernels of keys) = a (rows, inner) panel^T of the tile at j0
  void panel_product(const float* a, Index a_ld, Index inner, const float* panels, Index rows, Index j0, Index keys,
                     float* s, Index ld) const {
    const float* panel = panels + (j0 / key_rows_) * inner * panel_ld_;
    microkernels::product_tile<Vec, R, C, false>(a, a_ld, 1, rows, inner, panel, panel_ld_,
                                                 round_up(keys, key_multiple) / W, s, ld);
  }

  MatrixView<const float> k_, v_;
  Index key_rows_, panel_ld_, key_cols_, value_cols_;
  float* key_panels_ = nullptr;
  float* value_panels_ = nullptr;
  float* key_rows_at_ = nullptr;  // (keys, key_cols_)
};

/// One head's backward pass on a Micro (BlockedBackwardTiles or SimdBackwardTiles).
template <class Micro>
class TiledBackward {
 public:
  using V = typename Micro::Vec;
  using T = typename V::value_type;
  static constexpr T kLog2e = T(1.442695040888963407359924681001892137L);

  TiledBackward(const BackwardInputs<T>& in, const GradientViews<T>& out, const BlockConfig& blocks)
      : in_(in), out_(out), blocks_(blocks), mask_(in.masks, in.q.rows, in.k.rows, kLog2e),
        query_scale_(T(in.scale * double(kLog2e))), cap_(mask_.cap()),
        score_ld_(round_up(blocks.key_rows, Micro::key_multiple)),
        chunk_keys_(std::max<Index>(1, backward_detail::kChunkKeys / blocks.key_rows) * blocks.key_rows),
        chunks_((in.k.rows + chunk_keys_ - 1) / chunk_keys_), dk_ld_(Micro::padded_cols(in.q.cols)),
        dv_ld_(Micro::padded_cols(in.v.cols)) {
    const Index fitting = detail::backward_partial_bytes().load() / std::max<Index>(1, chunks_ * dk_ld_ * Index(sizeof(T)));
    slab_rows_ = std::min(std::max<Index>(1, fitting / blocks.query_rows), (in.q.rows + blocks.query_rows - 1) / blocks.query_rows) *
                 blocks.query_rows;
    for (int lane = 0; lane < V::width; ++lane) lanes_[lane] = T(lane);
  }

  void run(const Options& options) const {
    const Index nq = in_.q.rows, nk = in_.k.rows, dk = in_.q.cols, dv = in_.v.cols;
    const Index tiles_per_slab = slab_rows_ / blocks_.query_rows;
    const detail::ScratchLease<T, detail::Slot::BackwardRows> row_scratch(2 * nq);
    const detail::ScratchLease<T, detail::Slot::Partials> partials(chunks_ * slab_rows_ * dk_ld_);
    const detail::ScratchLease<char, detail::Slot::BackwardTouched> touched(chunks_ * tiles_per_slab);
    T* lse2 = row_scratch.data();  // the LSEs in base 2
    T* d = lse2 + nq;              // D_i = dO_i . O_i
    T* dq_partials = partials.data();

    for (Index i = 0; i < nq; ++i) {
      lse2[i] = in_.lse[i] * kLog2e;
      d[i] = ReferenceBackward<T>::row_dot(in_, i);
    }
    for (Index j = 0; j < nk; ++j) {  // the running sums of dK (times log2 e) and dV, between slabs
      std::fill(out_.dk.row(j), out_.dk.row(j) + dk, T(0));
      std::fill(out_.dv.row(j), out_.dv.row(j) + dv, T(0));
    }
    for (Index i = 0; i < out_.dbias.rows; ++i) std::fill(out_.dbias.row(i), out_.dbias.row(i) + out_.dbias.cols, T(0));

    const State state{lse2, d, dq_partials, touched.data()};
    for (Index slab = 0; slab * slab_rows_ < nq; ++slab) {
      std::fill(touched.data(), touched.data() + chunks_ * tiles_per_slab, char(0));
      detail::parallel_for(chunks_, options, [&](Index first, Index end) {
        for (Index chunk = first; chunk < end; ++chunk) run_chunk(state, slab, chunk);
      });
      const Index first_row = slab * slab_rows_, rows = std::min(slab_rows_, nq - first_row);
      detail::parallel_for((rows + blocks_.query_rows - 1) / blocks_.query_rows, options, [&](Index first, Index end) {
        for (Index tile = first; tile < end; ++tile) finish_query_tile(state, first_row, tile);
      });
    }
    detail::parallel_for((nk + chunk_keys_ - 1) / chunk_keys_, options, [&](Index first, Index end) {
      for (Index j = first * chunk_keys_; j < std::min(nk, end * chunk_keys_); ++j) finish_key_row(state, j);
    });
    if (out_.dsink) *out_.dsink = ReferenceBackward<T>(in_, d).sink_gradient();
  }

 private:
  /// The call's shared working memory.
  struct State {
    const T* lse2;
    const T* d;
    T* dq_partials;  // (chunks, slab rows, dk_ld)
    char* touched;   // (chunks, tiles per slab): whether a chunk wrote its partial of a query tile
  };

  /// One key chunk against one slab of queries.
  void run_chunk(const State& state, Index slab, Index chunk) const {
    const Index nq = in_.q.rows, bq = blocks_.query_rows, bk = blocks_.key_rows;
    const Index j_begin = chunk * chunk_keys_, j_end = std::min(in_.k.rows, j_begin + chunk_keys_);
    const Index first_row = slab * slab_rows_, last_row = std::min(nq, first_row + slab_rows_);
    const Index tiles_per_slab = slab_rows_ / bq;

    // the chunk's K and V, packed on first use (a chunk no row of the slab sees is never packed)
    const MatrixView<const T> k = in_.k.middle_rows(j_begin, j_end - j_begin);
    const MatrixView<const T> v = in_.v.middle_rows(j_begin, j_end - j_begin);
    T* packed = detail::thread_scratch<T, detail::Slot::ChunkPacked>(Micro::packed_size(k, v, blocks_));
    const Micro micro(k, v, blocks_, packed);
    bool packed_yet = false;

    T* q_tile = detail::thread_scratch<T, detail::Slot::QueryTile>(bq * dk_ld_);   // scale log2(e) Q, padded
    T* do_tile = detail::thread_scratch<T, detail::Slot::BackwardTile>(bq * dv_ld_);  // dO, padded
    T* tiles = detail::thread_scratch<T, detail::Slot::Scores>(3 * bq * score_ld_);
    T* p = tiles;                      // S, then P   (Bq, Bk padded)
    T* ds = tiles + bq * score_ld_;    // dP, then dS, then dU
    T* raw = ds + bq * score_ld_;      // the uncapped scores (soft cap only)
    // The chunk's dK and dV sums, contiguous and padded: loaded from the outputs (which hold
    // them between slabs) on first use, stored back at the end.
    T* dk_acc = detail::thread_scratch<T, detail::Slot::Accumulator>(chunk_keys_ * (dk_ld_ + dv_ld_));
    T* dv_acc = dk_acc + chunk_keys_ * dk_ld_;

    for (Index i0 = first_row; i0 < last_row; i0 += bq) {
      const Index n_rows = std::min(bq, last_row - i0);
      Index keys_begin = in_.k.rows, keys_end = 0, band_begin = 0, band_end = in_.k.rows;
      for (Index i = i0; i < i0 + n_rows; ++i) {
        keys_begin = std::min(keys_begin, mask_.key_begin(i));
        keys_end = std::max(keys_end, mask_.key_end(i));
        band_begin = std::max(band_begin, mask_.key_begin(i));
        band_end = std::min(band_end, mask_.key_end(i));
      }
      const Index tile_begin = std::max(j_begin, keys_begin / bk * bk), tile_end = std::min(j_end, keys_end);
      if (tile_begin >= tile_end) continue;
      if (!packed_yet) {
        micro.pack();
        move_sums(j_begin, j_end, dk_acc, dv_acc, true);
        packed_yet = true;
      }

      for (Index r = 0; r < n_rows; ++r) {
        const T* q_row = in_.q.row(i0 + r);
        const T* do_row = in_.d_out.row(i0 + r);
        for (Index e = 0; e < dk_ld_; ++e) q_tile[r * dk_ld_ + e] = e < in_.q.cols ? q_row[e] * query_scale_ : T(0);
        for (Index e = 0; e < dv_ld_; ++e) do_tile[r * dv_ld_ + e] = e < in_.v.cols ? do_row[e] : T(0);
      }
      const Index tile_in_slab = (i0 - first_row) / bq;
      T* dq = state.dq_partials + (chunk * slab_rows_ + (i0 - first_row)) * dk_ld_;
      std::fill(dq, dq + n_rows * dk_ld_, T(0));
      state.touched[chunk * tiles_per_slab + tile_in_slab] = 1;

      for (Index j0 = tile_begin; j0 < tile_end; j0 += bk) {
        const Index local = j0 - j_begin, n_keys = std::min(bk, j_end - j0);
        const bool masked = j0 < band_begin || j0 + n_keys > band_end || mask_.elementwise();
        micro.scores(q_tile, n_rows, local, n_keys, p, score_ld_);
        for (Index r = 0; r < n_rows; ++r) weights_row(state, i0 + r, j0, n_keys, masked, p + r * score_ld_, raw + r * score_ld_);
        micro.value_scores(do_tile, n_rows, local, n_keys, ds, score_ld_);
        for (Index r = 0; r < n_rows; ++r)
          score_gradient_row(state, i0 + r, j0, n_keys, p + r * score_ld_, ds + r * score_ld_, raw + r * score_ld_);
        micro.add_transposed(p, n_keys, score_ld_, n_rows, do_tile, dv_ld_, dv_ld_, dv_acc + local * dv_ld_, dv_ld_);
        micro.add_transposed(ds, n_keys, score_ld_, n_rows, q_tile, dk_ld_, dk_ld_, dk_acc + local * dk_ld_, dk_ld_);
        micro.add_keys(ds, n_rows, score_ld_, local, n_keys, dq, dk_ld_);
      }
    }
    if (packed_yet) move_sums(j_begin, j_end, dk_acc, dv_acc, false);
  }

  /// Keys [j_begin, j_end)'s dK and dV sums between the outputs and the padded accumulators:
  /// into them (`load`, padding zeroed) or back out.
  void move_sums(Index j_begin, Index j_end, T* dk_acc, T* dv_acc, bool load) const {
    const Index dk = in_.q.cols, dv = in_.v.cols;
    for (Index j = j_begin; j < j_end; ++j) {
      T* k_sum = dk_acc + (j - j_begin) * dk_ld_;
      T* v_sum = dv_acc + (j - j_begin) * dv_ld_;
      if (load) {
        std::copy(out_.dk.row(j), out_.dk.row(j) + dk, k_sum);
        std::fill(k_sum + dk, k_sum + dk_ld_, T(0));
        std::copy(out_.dv.row(j), out_.dv.row(j) + dv, v_sum);
        std::fill(v_sum + dv, v_sum + dv_ld_, T(0));
      } else {
        std::copy(k_sum, k_sum + dk, out_.dk.row(j));
        std::copy(v_sum, v_sum + dv, out_.dv.row(j));
      }
    }
  }

  /// Row i's weights over keys [j0, j0 + n): its scores s (base 2) changed and masked as the
  /// forward did, then p = 2^(s - lse); 0 past the keys. `raw` keeps the uncapped scores.
  void weights_row(const State& state, Index i, Index j0, Index n, bool masked, T* s, T* raw) const {
    if (cap_ > T(0)) std::copy(s, s + score_ld_, raw);
    if (masked || mask_.changes_scores())
      change_score_row<V>(mask_, i, j0, n, s, score_ld_, lanes_, [&](V x) { return exp2(x); });
    const T lse = state.lse2[i];
    if (lse == -std::numeric_limits<T>::infinity()) {  // the row sees no key: no weights
      std::fill(s, s + score_ld_, T(0));
      return;
    }
    const V shift = V::broadcast(lse);
    for (Index c = 0; c < score_ld_; c += V::width) exp2(V::load(s + c) - shift).store(s + c);
    std::fill(s + n, s + score_ld_, T(0));
  }

  /// dS = P (dP - D_i) in place of dP (0 where P is 0, whatever dP: a masked key's V may be
  /// anything), the bias's gradient from it, then dU = dS f'(u) through the soft cap.
  void score_gradient_row(const State& state, Index i, Index j0, Index n, const T* p, T* ds, const T* raw) const {
    const V d = V::broadcast(state.d[i]), zero = V::zero();
    for (Index c = 0; c < score_ld_; c += V::width) {
      const V weight = V::load(p + c);
      select_nonzero(weight, weight * (V::load(ds + c) - d), zero).store(ds + c);
    }
    if (!out_.dbias.empty()) {
      const bool full = out_.dbias_per_query(in_.q.rows);
      T* dbias = out_.dbias.row(full ? i : 0) + j0;
      for (Index c = 0; c < n; ++c) dbias[c] = full ? ds[c] : dbias[c] + ds[c];
    }
    if (cap_ > T(0)) {
      const V inverse = V::broadcast(T(1) / cap_), one = V::broadcast(T(1));
      for (Index c = 0; c < score_ld_; c += V::width) {
        const V t = vector_tanh(V::load(raw + c) * inverse, [&](V x) { return exp2(x); });
        const V weight = V::load(p + c);  // again only where the weight is positive: a masked NaN K stays out
        select_nonzero(weight, V::load(ds + c) * (one - t * t), zero).store(ds + c);
      }
    }
  }

  /// `value` where the weight is positive; the weight itself (0, or NaN, which must reach the
  /// reference's redo) elsewhere.
  static V select_nonzero(V weight, V value, V zero) { return select(less(zero, weight), value, weight); }
  static V exp2(V x) { return Micro::exp2(x); }

  /// dQ for the rows of one query tile of a slab: scale times the sum of the chunks' partials,
  /// in chunk order; a row that is not finite is redone by the reference.
  void finish_query_tile(const State& state, Index first_row, Index tile) const {
    const Index bq = blocks_.query_rows, tiles_per_slab = slab_rows_ / bq;
    const Index i0 = first_row + tile * bq, n_rows = std::min(bq, in_.q.rows - i0), dk = in_.q.cols;
    const T scale = T(in_.scale);
    for (Index r = 0; r < n_rows; ++r) {
      T* dq = out_.dq.row(i0 + r);
      std::fill(dq, dq + dk, T(0));
      for (Index chunk = 0; chunk < chunks_; ++chunk) {
        if (!state.touched[chunk * tiles_per_slab + tile]) continue;
        const T* part = state.dq_partials + (chunk * slab_rows_ + tile * bq + r) * dk_ld_;
        for (Index e = 0; e < dk; ++e) dq[e] += part[e];
      }
      bool finite = true;
      for (Index e = 0; e < dk; ++e) finite &= std::isfinite(dq[e] *= scale);
      if (!finite) ReferenceBackward<T>(in_, state.d).query_row(i0 + r, out_);
    }
  }

  /// dK_j (the accumulated dU^T (scale log2(e) Q), divided by log2(e)) and dV_j into the
  /// outputs; a row that is not finite is redone by the reference.
  void finish_key_row(const State& state, Index j) const {
    T* dk = out_.dk.row(j);
    const T* dv = out_.dv.row(j);
    bool finite = true;
    for (Index e = 0; e < out_.dk.cols; ++e) finite &= std::isfinite(dk[e] /= kLog2e);
    for (Index e = 0; e < out_.dv.cols; ++e) finite &= std::isfinite(dv[e]);
    if (!finite) ReferenceBackward<T>(in_, state.d).key_row(j, out_);
  }

  BackwardInputs<T> in_;
  GradientViews<T> out_;
  BlockConfig blocks_;
  detail::MaskPolicy<T> mask_;
  T query_scale_, cap_;
  Index score_ld_, chunk_keys_, chunks_, dk_ld_, dv_ld_, slab_rows_ = 0;
  T lanes_[V::width];
};

/// One head's backward pass on Micro's tiles; inputs validated, outputs of the inputs' shapes.
template <class Micro, class T>
void tiled_backward(const BackwardInputs<T>& in, const GradientViews<T>& out, const Options& options) {
  const BlockConfig blocks = choose_blocks(options.blocks, in.q.rows, in.k.rows, in.q.cols, in.v.cols, Index(sizeof(T)),
                                           Micro::key_multiple, Micro::row_multiple);
  TiledBackward<Micro>(in, out, blocks).run(options);
}
