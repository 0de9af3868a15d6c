// sdpa/kernels/entry-inl.hpp - what the front end calls in one target: its Simd path on one
// head and on a batch, its Blocked path, and its microkernels for the tests.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

struct Target {
  static constexpr Isa isa = kIsa;

  static void simd_head(MatrixView<const float> q, MatrixView<const float> k, MatrixView<const float> v,
                        MatrixView<float> out, float* lse, double scale, const detail::HeadMasks& masks,
                        const Options& options) {
    simd_attention(q, k, v, out, scale, masks, options, lse);
  }
  static void simd_batch(const TensorView<const float>& q, const TensorView<const float>& k,
                         const TensorView<const float>& v, const TensorView<float>& out, double scale,
                         const Options& options) {
    simd_batched(q, k, v, out, scale, options);
  }
  template <class T>
  static void blocked_head(MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v, MatrixView<T> out,
                           T* lse, double scale, const detail::HeadMasks& masks, const Options& options) {
    blocked_attention(q, k, v, out, scale, masks, options, lse);
  }
  template <class T>
  static void blocked_batch(const TensorView<const T>& q, const TensorView<const T>& k, const TensorView<const T>& v,
                            const TensorView<T>& out, double scale, const Options& options) {
    batched_tiled<BlockedTiles<T>>(q, k, v, out, scale, options);
  }
  static MicrokernelSet microkernels() { return testing::set(); }
};
