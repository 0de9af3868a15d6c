// sdpa/kernels/entry-inl.hpp - what the front end calls in one target: its Simd path on one
// head and on a batch, its Blocked path, and its microkernels for the tests.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

struct Target {
  static constexpr Isa isa = kIsa;

  /// Q and out of type Q (float or 16-bit), K and V of type S (float or 16-bit).
  template <class Q, class S>
  static void simd_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                        float* lse, double scale, const detail::HeadMasks& masks, const Options& options) {
    simd_attention(q, k, v, out, scale, masks, options, lse);
  }
  template <class Q, class S>
  static void simd_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                         const TensorView<Q>& out, double scale, const Options& options) {
    simd_batched(q, k, v, out, scale, options);
  }
  template <class Q, class S>
  static void blocked_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                           compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                           const Options& options) {
    blocked_attention(q, k, v, out, scale, masks, options, lse);
  }
  template <class Q, class S>
  static void blocked_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                            const TensorView<Q>& out, double scale, const Options& options) {
    batched_tiled<BlockedTiles<compute_type<Q>, S>>(q, k, v, out, scale, options);
  }
  static MicrokernelSet microkernels() { return testing::set(); }
};
