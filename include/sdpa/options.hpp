// sdpa/options.hpp - everything a call can be told: scale, causal, masks, kernel, blocks, threads.
/// \file
/// Options and what they hold: Kernel, BlockConfig, Bias, ParallelFor.
#pragma once

#include "views.hpp"

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace sdpa {

/// Which implementation runs. Every path computes the same function (docs/design.md, "The math"); they
/// differ in speed and memory. `Reference` is always available and is the test oracle.
enum class Kernel {
  Auto,       ///< the fastest path for the shape and scalar type (see README, "Kernels")
  Reference,  ///< materialises the Nq x Nk scores; the oracle and the teaching path
  Blocked,    ///< portable tiled loop with an online softmax; O((Nq + Nk) d) memory
  Simd,       ///< the tiled loop with register-blocked vector microkernels (float)
};

/// Tile sizes of the Blocked and Simd paths. 0 = derive from the cache sizes and the head
/// dims (kernels/block_config.hpp). Any positive size is correct, which lets tests force
/// 1, 2, 3, W, W+1 and reach every remainder on tiny inputs.
struct BlockConfig {
  Index query_rows = 0;  ///< queries per tile (Bq): the unit of work a thread takes
  Index key_rows = 0;    ///< keys per tile (Bk): the width of one score tile
};

/// parallel_for(count, body) must call body(begin, end) over disjoint ranges that together
/// cover [0, count), from any threads, and return when all calls have returned.
using ParallelFor = std::function<void(Index count, const std::function<void(Index begin, Index end)>& body)>;

/// A matrix argument of an option (a mask, a bias): a view of the caller's matrix when it is
/// an lvalue, or its own copy of a temporary, so that neither `options.mask = make_mask();`
/// nor `options.mask = make_mask().topRows(3);` can dangle. Copies share what they own.
template <class T>
struct MatrixArg : MatrixView<const T> {
  /// The row-major matrix a temporary is evaluated into.
  using Plain = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// None (empty).
  MatrixArg() = default;
  /// A view of memory the caller keeps alive.
  MatrixArg(MatrixView<const T> view) : MatrixView<const T>(view) {}  // NOLINT(google-explicit-constructor)
  /// Views an lvalue Eigen object with direct access (Matrix, Map, Ref, Block of those).
  template <class Derived, class = std::enable_if_t<
                               (Eigen::internal::traits<Derived>::Flags & Eigen::DirectAccessBit) != 0>>
  MatrixArg(const Eigen::DenseBase<Derived>& m)  // NOLINT(google-explicit-constructor): a view is its matrix
      : MatrixView<const T>(m) {}
  /// Keeps a temporary (a Matrix, a block of one, any expression) alive: evaluated once and owned.
  template <class Temporary, class = std::enable_if_t<!std::is_lvalue_reference_v<Temporary> &&
                                                      std::is_base_of_v<Eigen::DenseBase<Temporary>, Temporary>>>
  MatrixArg(Temporary&& m)  // NOLINT(google-explicit-constructor)
      : MatrixArg(std::make_shared<const Plain>(std::move(m))) {}

 private:
  explicit MatrixArg(std::shared_ptr<const Plain> owned)
      : MatrixView<const T>(owned->data(), owned->rows(), owned->cols(), owned->cols()), owned_(std::move(owned)) {}
  std::shared_ptr<const Plain> owned_;
};

/// An additive bias added to the scaled scores, float or double whatever the inputs are.
/// Nq x Nk, or 1 x Nk to broadcast over queries. -inf forbids a pair; finite values shift it.
struct Bias {
  /// The bias when it is float; empty otherwise.
  MatrixArg<float> f32;
  /// The bias when it is double; empty otherwise.
  MatrixArg<double> f64;

  /// No bias.
  Bias() = default;
  /// A float bias (a view, or an owned temporary).
  Bias(MatrixArg<float> v) : f32(std::move(v)) {}   // NOLINT(google-explicit-constructor)
  /// A double bias (a view, or an owned temporary).
  Bias(MatrixArg<double> v) : f64(std::move(v)) {}  // NOLINT(google-explicit-constructor)
  /// Views a float or double lvalue Eigen object, or keeps a temporary one alive.
  template <class Matrix, class Scalar = typename std::decay_t<Matrix>::Scalar,
            class = std::enable_if_t<std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>>>
  Bias(Matrix&& m)  // NOLINT(google-explicit-constructor)
      : Bias(MatrixArg<Scalar>(std::forward<Matrix>(m))) {}

  /// True when there is no bias.
  bool empty() const { return f32.empty() && f64.empty(); }
  /// Rows of the bias: Nq, or 1 to broadcast over queries.
  Index rows() const { return f32.empty() ? f64.rows : f32.rows; }
  /// Columns of the bias: Nk, one per key.
  Index cols() const { return f32.empty() ? f64.cols : f32.cols; }
  /// Element (i, j) as a double; not bounds-checked.
  double operator()(Index i, Index j) const { return f32.empty() ? f64(i, j) : double(f32(i, j)); }
  /// Columns [first, first + count) (keys of one piece of a split call): views, valid while
  /// this Bias lives.
  Bias middle_cols(Index first, Index count) const {
    Bias b;
    if (!f32.empty()) b.f32 = f32.middle_cols(first, count);
    if (!f64.empty()) b.f64 = f64.middle_cols(first, count);
    return b;
  }
};

/// A sliding window (local attention): query i, aligned bottom-right at i' = i + Nk - Nq as
/// for causal, sees keys j with i' - left <= j <= i' + right. Either side may be unbounded;
/// Window{n, 0} is causal attention over the last n + 1 keys (Mistral's window of n + 1,
/// FlashAttention's window_size = (n, 0)). Key tiles wholly outside the band are never visited.
struct Window {
  /// A side with no bound (the default of both).
  static constexpr Index unbounded = std::numeric_limits<Index>::max();
  Index left = unbounded;   ///< keys before i' it may see; >= 0
  Index right = unbounded;  ///< keys after i' it may see; >= 0 (0 = causal)

  /// True when neither side is bounded (no window).
  bool empty() const { return left == unbounded && right == unbounded; }
};

/// How one call to attention() behaves. Views inside (mask, bias) do not own their data.
///
///     sdpa::Options options;
///     options.causal = true;              // bottom-right aligned: row i sees keys j <= i + Nk - Nq
///     options.mask = allowed;             // Eigen bool matrix, true = may attend
///     Matrix<float> out = sdpa::attention(Q, K, V, options);
struct Options {
  std::optional<double> scale;   ///< multiplies Q K^T; default 1/sqrt(d_k); positive and finite
  bool causal = false;           ///< bottom-right aligned causal mask (docs/design.md, "Conventions")
  Kernel kernel = Kernel::Auto;  ///< which path runs

  MatrixArg<bool> mask;             ///< true = may attend; Nq x Nk or 1 x Nk; empty = none
  Bias bias;                        ///< added to the scaled scores; Nq x Nk or 1 x Nk; empty = none
  std::vector<Index> key_lengths;   ///< padding: query i sees keys j < key_lengths[i]; Nq entries, or 1 for all

  // The variants of modern models (README, "Model variants"), fused into every path. Per-head
  // lists have one entry per query head (one for a 2-D call):
  Window window;                      ///< sliding window around i' = i + Nk - Nq; default: none
  std::vector<double> alibi_slopes;   ///< ALiBi: adds -slope_h |i' - j| to the scores; empty = none
  std::optional<double> softcap;      ///< scores become cap tanh(s / cap) before masks and biases; > 0
  std::vector<double> sinks;          ///< a logit per head in each row's softmax denominator (no value); finite

  // Batched calls (sdpa::attention on TensorViews) also take these; sizes of 1 broadcast:
  TensorView<const bool> batch_mask;     ///< [B or 1, H or 1, Nq or 1, Nk]; true = may attend
  TensorView<const float> batch_bias;    ///< [B or 1, H or 1, Nq or 1, Nk]; added to the scaled scores
  std::vector<Index> sequence_lengths;   ///< per batch item: keys j < length are real, the rest padding

  BlockConfig blocks;      ///< tile sizes of the Blocked and Simd paths (0 = automatic)
  int threads = 0;         ///< 0 = OpenMP's default (or 1 without OpenMP); results never depend on it
  ParallelFor parallel_for;  ///< use your own thread pool instead of OpenMP; ignores `threads`
};

}  // namespace sdpa
