// sdpa/kernels/entry-inl.hpp - what the front end calls in one target: its Simd path on one
// head and on a batch, its Blocked path, and its microkernels for the tests.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

/// One target's paths for Q and out of type Q and K, V of type S (a storage pair, storage.hpp).
/// A class template whose functions are defined out of line, so that a program may compile
/// them in one translation unit (SDPA_EXTERN_KERNELS, kernels/instances.hpp) rather than in
/// every file that calls attention. Each function compiles for every storage pair, and is only
/// called for the pairs its path supports (Simd: float compute; Blocked: no int8). Blocked
/// runs from the scalar target only (attention.hpp, dispatch), so only that target compiles
/// its code: the others' Blocked functions are empty (half the build time they took).
/// Whether this target compiles the Blocked path for K and V of type S (see Paths).
template <class S>
inline constexpr bool kBlocked = kIsa == Isa::scalar && !is_quantized<S>;

template <class Q, class S>
struct Paths {
  static void simd_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                        compute_type<Q>* lse, double scale, const detail::HeadMasks& masks, const Options& options);
  static void simd_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                         const TensorView<Q>& out, double scale, const Options& options);
  static void blocked_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                           compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                           const Options& options);
  static void blocked_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                            const TensorView<Q>& out, double scale, const Options& options);
  /// One head against a paged cache (paged_kv_cache.hpp): Simd when `simd`, else Blocked.
  static void paged_head(MatrixView<const Q> q, const PagedView<const S>& k, const PagedView<const S>& v,
                         MatrixView<Q> out, compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                         const Options& options, bool simd);
  /// The query heads of one step against one sequence of a paged cache (paged_kv_cache.hpp),
  /// on the Simd path: query head h is column slice h of q and out, with the keys and values
  /// k[h / group], v[h / group] and the masks masks[h]. Decoding (RowTiles::fits) reads every
  /// head of a page together (multi_head_attention: the same rows as paged_head's, bit for
  /// bit); anything else runs head by head (paged_head).
  static void paged_heads(MatrixView<const Q> q, const PagedView<const S>* k, const PagedView<const S>* v,
                          Index group, MatrixView<Q> out, double scale, const detail::HeadMasks* masks, Index heads,
                          const Options& options);
  /// Packed sequences (varlen.hpp): the Simd microkernels when `simd` (float compute only),
  /// Blocked's otherwise.
  static void varlen(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                     const TensorView<Q>& out, const std::vector<Index>& offsets_q, const std::vector<Index>& offsets_k,
                     double scale, const Options& options, bool simd);
};

template <class Q, class S>
void Paths<Q, S>::simd_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                            compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                            const Options& options) {
  if constexpr (std::is_same_v<compute_type<Q>, float>) simd_attention(q, k, v, out, scale, masks, options, lse);
}
template <class Q, class S>
void Paths<Q, S>::simd_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                             const TensorView<Q>& out, double scale, const Options& options) {
  if constexpr (std::is_same_v<compute_type<Q>, float>) simd_batched(q, k, v, out, scale, options);
}
template <class Q, class S>
void Paths<Q, S>::blocked_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v,
                               MatrixView<Q> out, compute_type<Q>* lse, double scale,
                               const detail::HeadMasks& masks, const Options& options) {
  if constexpr (kBlocked<S>) blocked_attention(q, k, v, out, scale, masks, options, lse);
}
template <class Q, class S>
void Paths<Q, S>::blocked_batch(const TensorView<const Q>& q, const TensorView<const S>& k,
                                const TensorView<const S>& v, const TensorView<Q>& out, double scale,
                                const Options& options) {
  if constexpr (kBlocked<S>) batched_tiled<BlockedTiles<compute_type<Q>, S>>(q, k, v, out, scale, options);
}

template <class Q, class S>
void Paths<Q, S>::paged_head(MatrixView<const Q> q, const PagedView<const S>& k, const PagedView<const S>& v,
                             MatrixView<Q> out, compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                             const Options& options, bool simd) {
  if constexpr (std::is_same_v<compute_type<Q>, float>) {
    if (simd) {
      // Decoding reads the pages in place. Prefill (more rows) packs K into panels and copies V
      // anyway; its rows are first gathered into one contiguous copy, so that the packing
      // kernels are compiled once, for MatrixViews (a paged copy of them doubled build time).
      using Rows = RowTiles<Arch, S, PagedView<const S>>;
      if (Rows::fits(q.rows, q.cols, out.cols)) return tiled_attention<Rows>(q, k, v, out, lse, scale, masks, options);
      const detail::ScratchLease<S, detail::Slot::PagedRows> rows(k.rows * (k.cols + v.cols));
      S* k_rows = rows.data();
      S* v_rows = k_rows + k.rows * k.cols;
      for (Index j = 0; j < k.rows; ++j) {
        std::copy(k.row(j), k.row(j) + k.cols, k_rows + j * k.cols);
        std::copy(v.row(j), v.row(j) + v.cols, v_rows + j * v.cols);
      }
      return simd_attention(q, MatrixView<const S>(k_rows, k.rows, k.cols, k.cols),
                            MatrixView<const S>(v_rows, v.rows, v.cols, v.cols), out, scale, masks, options, lse);
    }
  }
  if constexpr (kBlocked<S>) blocked_attention(q, k, v, out, scale, masks, options, lse);
}

template <class Q, class S>
void Paths<Q, S>::paged_heads(MatrixView<const Q> q, const PagedView<const S>* k, const PagedView<const S>* v,
                              Index group, MatrixView<Q> out, double scale, const detail::HeadMasks* masks,
                              Index heads, const Options& options) {
  const Index dk = q.cols / heads, dv = out.cols / heads;
  if constexpr (std::is_same_v<compute_type<Q>, float>) {
    using Rows = RowTiles<Arch, S, PagedView<const S>>;
    if (Rows::fits(q.rows, dk, dv)) {
      std::vector<HeadCall<Rows>> calls;
      calls.reserve(std::size_t(heads));
      for (Index h = 0; h < heads; ++h)
        calls.push_back({q.middle_cols(h * dk, dk), k[h / group], v[h / group], out.middle_cols(h * dv, dv), masks[h]});
      return multi_head_attention<Rows>(calls, scale, options);
    }
  }
  for (Index h = 0; h < heads; ++h)
    paged_head(q.middle_cols(h * dk, dk), k[h / group], v[h / group], out.middle_cols(h * dv, dv), nullptr, scale,
               masks[h], options, true);
}

template <class Q, class S>
void Paths<Q, S>::varlen(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                         const TensorView<Q>& out, const std::vector<Index>& offsets_q,
                         const std::vector<Index>& offsets_k, double scale, const Options& options, bool simd) {
  if constexpr (std::is_same_v<compute_type<Q>, float>) {
    if (simd)
      return varlen_tiled<SimdTiles<Arch, S>>(q, k, v, out, offsets_q, offsets_k, scale, options);
  }
  if constexpr (kBlocked<S>)
    varlen_tiled<BlockedTiles<compute_type<Q>, S>>(q, k, v, out, offsets_q, offsets_k, scale, options);
}

/// The target, as kernels::with_target hands it to the front end: the paths of any storage
/// pair, deduced from the arguments.
struct Target {
  static constexpr Isa isa = kIsa;

  template <class Q, class S>
  static void simd_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                        float* lse, double scale, const detail::HeadMasks& masks, const Options& options) {
    Paths<Q, S>::simd_head(q, k, v, out, lse, scale, masks, options);
  }
  template <class Q, class S>
  static void simd_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                         const TensorView<Q>& out, double scale, const Options& options) {
    Paths<Q, S>::simd_batch(q, k, v, out, scale, options);
  }
  template <class Q, class S>
  static void blocked_head(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<Q> out,
                           compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                           const Options& options) {
    Paths<Q, S>::blocked_head(q, k, v, out, lse, scale, masks, options);
  }
  template <class Q, class S>
  static void blocked_batch(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                            const TensorView<Q>& out, double scale, const Options& options) {
    Paths<Q, S>::blocked_batch(q, k, v, out, scale, options);
  }
  template <class Q, class S>
  static void varlen(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                     const TensorView<Q>& out, const std::vector<Index>& offsets_q, const std::vector<Index>& offsets_k,
                     double scale, const Options& options, bool simd) {
    Paths<Q, S>::varlen(q, k, v, out, offsets_q, offsets_k, scale, options, simd);
  }
  template <class Q, class S>
  static void paged_head(MatrixView<const Q> q, const PagedView<const S>& k, const PagedView<const S>& v,
                         MatrixView<Q> out, compute_type<Q>* lse, double scale, const detail::HeadMasks& masks,
                         const Options& options, bool simd) {
    Paths<Q, S>::paged_head(q, k, v, out, lse, scale, masks, options, simd);
  }
  template <class Q, class S>
  static void paged_heads(MatrixView<const Q> q, const PagedView<const S>* k, const PagedView<const S>* v,
                          Index group, MatrixView<Q> out, double scale, const detail::HeadMasks* masks, Index heads,
                          const Options& options) {
    Paths<Q, S>::paged_heads(q, k, v, group, out, scale, masks, heads, options);
  }
  /// One head's backward pass (backward-inl.hpp): the Simd microkernels for float when `simd`,
  /// Blocked's loops otherwise (compiled in the scalar target only, like the forward's).
  template <class T>
  static void backward_head(const BackwardInputs<T>& in, const GradientViews<T>& out, const Options& options,
                            bool simd) {
    if constexpr (std::is_same_v<T, float>) {
      if (simd) return tiled_backward<SimdBackwardTiles<Arch>>(in, out, options);
    }
    if constexpr (kIsa == Isa::scalar) tiled_backward<BlockedBackwardTiles<T>>(in, out, options);
  }
  static MicrokernelSet microkernels() { return testing::set(); }
};

// The explicit instantiations (kernels/targets.hpp, "Compiling the kernels once").
#if defined(SDPA_INSTANTIATE_KERNELS) || defined(SDPA_KERNELS_SELECTED)
#define SDPA_PATHS_OF(Q, S) template struct Paths<Q, S>;
#elif defined(SDPA_EXTERN_KERNELS)
#define SDPA_PATHS_OF(Q, S) extern template struct Paths<Q, S>;
#else
#define SDPA_PATHS_OF(Q, S)
#endif
SDPA_FOR_EACH_STORAGE_PAIR(SDPA_PATHS_OF)
#undef SDPA_PATHS_OF
