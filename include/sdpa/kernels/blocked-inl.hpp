// sdpa/kernels/blocked-inl.hpp - Kernel::Blocked: the tiled loop with plain scalar tile products.
//
// Portable to any compiler and any arithmetic type (float, double, long double): the tile
// products are the textbook triple loops and exp2 is the C library's. It is the tiled
// algorithm written to be read; the Simd path is the same loop with faster tiles.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only. Only the
// scalar target's copy runs: Blocked is portable code, compiled with the build's own flags.

/// Computes in T; K and V are stored as S (T, or a 16-bit type read into T element by element).
template <class T, class S = T, class View = MatrixView<const S>>
class BlockedTiles {
 public:
  using Vec = simd::Vec<T, simd::scalar>;
  using Storage = S;
  using KeyView = View;  // MatrixView, or PagedView for a paged cache
  static constexpr Index key_multiple = 1;
  static constexpr Index row_multiple = 1;

  static Index packed_size(View, View, const BlockConfig&) { return 0; }
  BlockedTiles(View k, View v, const BlockConfig&, T*) : k_(k), v_(v) {}
  Index pack_tiles(View) const { return 0; }  // reads K and V in place
  void pack(View, View, Index, Index) const {}

  Index accumulator_cols() const { return v_.cols; }
  Vec exp2(Vec x) const { return {std::exp2(x.v)}; }

  // s (rows, keys) = q_tile (rows, d_k) K[j0 : j0 + keys]^T
  void scores(const T* q_tile, Index rows, Index j0, Index keys, T* s, Index ld) const {
    const Index dk = k_.cols;
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < keys; ++c) {
        const T* q_row = q_tile + r * dk;
        const S* k_row = k_.row(j0 + c);
        T dot = T(0);
        for (Index e = 0; e < dk; ++e) dot += q_row[e] * T(k_row[e]);
        s[r * ld + c] = dot;
      }
  }

  // acc (rows, d_v) = rescale * acc + p (rows, keys) V[j0 : j0 + keys]
  void accumulate(const T* p, Index rows, Index ld, Index j0, Index keys, const T* rescale, T* acc) const {
    const Index dv = v_.cols;
    for (Index r = 0; r < rows; ++r) {
      for (Index e = 0; e < dv; ++e) acc[r * dv + e] *= rescale[r];
      for (Index c = 0; c < keys; ++c) {
        const T weight = p[r * ld + c];
        const S* v_row = v_.row(j0 + c);
        for (Index e = 0; e < dv; ++e) acc[r * dv + e] += weight * T(v_row[e]);
      }
    }
  }

  // The plain path keeps the steps apart.
  template <class Change>
  bool fused_softmax(const T*, Index, Index, Index, T*, Index, OnlineSoftmaxRow<Vec>*, T*, const Change&) const {
    return false;
  }

 private:
  View k_, v_;
};

/// out = softmax(scale Q K^T + mask) V, tiled; inputs already validated.
template <class Q, class KV, class O>
void blocked_attention(MatrixView<const Q> q, const KV& k, const KV& v, MatrixView<O> out, double scale,
                       const detail::HeadMasks& masks, const Options& options, compute_type<Q>* lse = nullptr) {
  tiled_attention<BlockedTiles<compute_type<Q>, reference_detail::element_of<KV>, KV>>(q, k, v, out, lse, scale, masks,
                                                                                      options);
}

