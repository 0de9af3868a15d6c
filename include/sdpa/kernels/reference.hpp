// sdpa/kernels/reference.hpp - Kernel::Reference: the formula, one pass at a time.
//
//   Q (Nq, d_k), K (Nk, d_k), V (Nk, d_v)  ->  S, P (Nq, Nk)  ->  O (Nq, d_v)
//
// It materialises the whole Nq x Nk score matrix, which is what makes it simple enough to be
// the oracle the tiled paths are tested against, and the place to read how attention works.
// Every query row is computed on its own, with the same operations whichever thread runs it:
// results do not depend on the thread count (a threaded GEMM would change its blocking, and
// so its rounding, with the number of threads).
#pragma once

#include "../config.hpp"
#include "../detail/mask_policy.hpp"
#include "../detail/parallel.hpp"
#include "../options.hpp"
#include "../storage.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

SDPA_BEGIN_NAMESPACE
namespace kernels {

namespace reference_detail {
/// The element type of a view of keys or values (MatrixView or PagedView).
template <class View>
using element_of = std::remove_const_t<std::remove_pointer_t<decltype(std::declval<View>().row(0))>>;

/// Row i of a view (MatrixView or PagedView) as an Eigen row vector of T: converted element by
/// element, or for int8 blocks dequantised into a new vector (the reference's fallback rows
/// only: the kernels dequantise in registers).
template <class T, class View>
auto row_as(const View& view, Index i) {
  using S = element_of<View>;
  if constexpr (is_quantized<S>) {
    Eigen::Matrix<T, 1, Eigen::Dynamic> values(detail::features<S>(view.cols));
    for (Index e = 0; e < values.size(); ++e) values[e] = detail::feature(view.row(i), e);
    return values;
  } else {
    return Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(view.row(i), view.cols).template cast<T>();
  }
}
constexpr Index kRowsPerTask = 16;  // rows one thread takes at a time
}  // namespace reference_detail

/// Passes 1 and 2 for query row i (`q_row`, its d_k = k.cols features, stored as Q): s_j =
/// (scale q_i) . k_j, then the cap, -inf where masked, the bias and ALiBi (MaskPolicy::apply).
/// (The query is scaled before the dot product, as in the tiled paths, so that a product
/// that fits the type after scaling never overflows before it.) Everything is computed in T;
/// Q and K may be stored in another type (16-bit storage is computed in float).
template <class T, class Q, class KView>
void reference_scores(const Q* q_row, const KView& k, Index i, double scale, const detail::MaskPolicy<T>& mask,
                      T* s) {
  // pass 1: the query against every key it may see, s_j = (scale q_i) . k_j
  const Index dk = detail::features<reference_detail::element_of<KView>>(k.cols);
  const Eigen::Matrix<T, 1, Eigen::Dynamic> scaled_query =
      T(scale) * Eigen::Map<const Eigen::Matrix<Q, 1, Eigen::Dynamic>>(q_row, dk).template cast<T>();
  for (Index j = mask.key_begin(i); j < mask.key_end(i); ++j) s[j] = scaled_query.dot(reference_detail::row_as<T>(k, j));
  // pass 2: the variants and masks: capped, forbidden pairs -inf, the bias and ALiBi added
  mask.apply(i, 0, k.rows, s);
}

/// Passes 1 to 5 for query row i (`q_row`): its weights p (k.rows entries, all 0 when it sees no key)
/// and, when `lse` is not null, its log-sum-exp (-inf when it sees no key and has no sink). A
/// NaN or +inf among the scores it sees makes every weight, and the LSE, NaN. A sink is one
/// more term of the denominator, with no weight of its own in p (the row sums to less than 1).
template <class T, class Q, class KView>
void reference_row_weights(const Q* q_row, const KView& k, Index i, double scale, const detail::MaskPolicy<T>& mask,
                           T* p, T* lse) {
  const Index nk = k.rows;
  reference_scores(q_row, k, i, scale, mask, p);  // passes 1 and 2
  // pass 3: the row's max, subtracted so that exp cannot overflow (softmax is shift-invariant);
  // NaN wins, so that a NaN score cannot pass for a masked one
  const T sink = mask.sink(i);  // -inf: none
  T row_max = sink;
  for (Index j = 0; j < nk; ++j)
    if (p[j] > row_max || std::isnan(p[j])) row_max = p[j];
  if (row_max == -std::numeric_limits<T>::infinity()) {  // nothing visible: weights 0
    std::fill(p, p + nk, T(0));
    if (lse) *lse = row_max;
    return;
  }
  // pass 4: exponentiate and sum (a +inf max gives exp(inf - inf) = NaN)
  T sum = std::exp(sink - row_max);  // 0 without a sink
  for (Index j = 0; j < nk; ++j) {
    p[j] = std::exp(p[j] - row_max);
    sum += p[j];
  }
  // pass 5: normalise, so that the row sums to 1 (less by the sink's share, if any)
  for (Index j = 0; j < nk; ++j) p[j] /= sum;
  if (lse) *lse = row_max + std::log(sum);
}

/// Pass 6 for one row: out = sum_j p_j v_j over the keys of nonzero weight. A key of weight 0
/// (masked, or too unlikely for exp to represent) adds nothing, whatever V holds there.
template <class T, class VView>
void reference_blend(const T* p, const VView& v, T* out) {
  auto o = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(out, detail::features<reference_detail::element_of<VView>>(v.cols));
  o.setZero();
  for (Index j = 0; j < v.rows; ++j)
    if (p[j] != T(0)) o += p[j] * reference_detail::row_as<T>(v, j);
}

/// P = softmax(scale Q K^T + mask), row by row; a row with no visible key is all zeros.
/// `lse`, when not null, receives each row's log-sum-exp of its masked scores (-inf if none).
template <class T, class Q, class KView>
void reference_weights(MatrixView<const Q> q, const KView& k, double scale, const detail::HeadMasks& masks,
                       const Options& options, MatrixView<T> weights, T* lse = nullptr) {
  const detail::MaskPolicy<T> mask(masks, q.rows, k.rows, T(1));
  const Index tasks = (q.rows + reference_detail::kRowsPerTask - 1) / reference_detail::kRowsPerTask;
  detail::parallel_for(tasks, options, [&](Index first, Index end) {
    for (Index i = first * reference_detail::kRowsPerTask; i < std::min(q.rows, end * reference_detail::kRowsPerTask); ++i)
      reference_row_weights(q.row(i), k, i, scale, mask, weights.row(i), lse ? lse + i : nullptr);
  });
}

/// out = P V with P from reference_weights. Allocates the Nq x Nk matrix P (and, for a 16-bit
/// output, rounds each row once from T). K and V: MatrixViews or PagedViews.
template <class Q, class KV, class O, class T = compute_type<Q>>
void reference_attention(MatrixView<const Q> q, const KV& k, const KV& v, MatrixView<O> out,
                         double scale, const detail::HeadMasks& masks, const Options& options, T* lse = nullptr) {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> P(q.rows, k.rows);
  const MatrixView<T> weights(P.data(), P.rows(), P.cols(), P.cols());
  reference_weights(q, k, scale, masks, options, weights, lse);
  // pass 6: each output row is its weights' blend of the value rows
  const Index tasks = (q.rows + reference_detail::kRowsPerTask - 1) / reference_detail::kRowsPerTask;
  detail::parallel_for(tasks, options, [&](Index first, Index end) {
    Eigen::Matrix<T, 1, Eigen::Dynamic> row(std::is_same_v<O, T> ? 0 : out.cols);
    for (Index i = first * reference_detail::kRowsPerTask; i < std::min(q.rows, end * reference_detail::kRowsPerTask); ++i) {
      if constexpr (std::is_same_v<O, T>) {
        reference_blend(weights.row(i), v, out.row(i));
      } else {
        reference_blend(weights.row(i), v, row.data());
        std::transform(row.data(), row.data() + out.cols, out.row(i), [](T x) { return O(x); });
      }
    }
  });
}

}  // namespace kernels
SDPA_END_NAMESPACE
