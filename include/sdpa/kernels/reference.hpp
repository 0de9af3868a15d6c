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

#include <Eigen/Core>

#include <cmath>
#include <limits>

SDPA_BEGIN_NAMESPACE
namespace kernels {

namespace reference_detail {
/// Row i of a view as an Eigen row vector (no copy).
template <class T>
auto row(const MatrixView<T>& view, Index i) {
  using Row = Eigen::Matrix<std::remove_const_t<T>, 1, Eigen::Dynamic>;
  using Mapped = std::conditional_t<std::is_const_v<T>, const Row, Row>;
  return Eigen::Map<Mapped>(view.row(i), view.cols);
}
constexpr Index kRowsPerTask = 16;  // rows one thread takes at a time
}  // namespace reference_detail

/// Passes 1 and 2 for query row i: s_j = scale q_i . k_j, then -inf where masked, + bias.
template <class T>
void reference_scores(MatrixView<const T> q, MatrixView<const T> k, Index i, double scale,
                      const detail::MaskPolicy<T>& mask, T* s) {
  using reference_detail::row;
  // pass 1: the query against every key, s_j = scale q_i . k_j
  for (Index j = 0; j < k.rows; ++j) s[j] = T(scale) * row(q, i).dot(row(k, j));
  // pass 2: masks: forbidden pairs become -inf, the bias is added
  mask.apply(i, 0, k.rows, s);
}

/// P = softmax(scale Q K^T + mask), row by row; a row with no visible key is all zeros.
/// `lse`, when not null, receives each row's log-sum-exp of its masked scores (-inf if none).
template <class T>
void reference_weights(MatrixView<const T> q, MatrixView<const T> k, double scale, const detail::HeadMasks& masks,
                       const Options& options, MatrixView<T> weights, T* lse = nullptr) {
  const Index nq = q.rows, nk = k.rows;
  const detail::MaskPolicy<T> mask(masks, nq, nk, T(1));
  const Index tasks = (nq + reference_detail::kRowsPerTask - 1) / reference_detail::kRowsPerTask;
  detail::parallel_for(tasks, options, [&](Index first, Index end) {
    for (Index i = first * reference_detail::kRowsPerTask; i < std::min(nq, end * reference_detail::kRowsPerTask); ++i) {
      T* s = weights.row(i);
      reference_scores(q, k, i, scale, mask, s);  // passes 1 and 2
      // pass 3: the row's max, subtracted so that exp cannot overflow (softmax is shift-invariant)
      T row_max = -std::numeric_limits<T>::infinity();
      for (Index j = 0; j < nk; ++j) row_max = std::max(row_max, s[j]);
      if (row_max == -std::numeric_limits<T>::infinity()) {  // nothing visible: weights 0
        std::fill(s, s + nk, T(0));
        if (lse) lse[i] = row_max;
        continue;
      }
      // pass 4: exponentiate and sum
      T sum = T(0);
      for (Index j = 0; j < nk; ++j) {
        s[j] = std::exp(s[j] - row_max);
        sum += s[j];
      }
      // pass 5: normalise, so that the row sums to 1
      for (Index j = 0; j < nk; ++j) s[j] /= sum;
      if (lse) lse[i] = row_max + std::log(sum);
    }
  });
}

/// out = P V with P from reference_weights. Allocates the Nq x Nk matrix P.
template <class T>
void reference_attention(MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v, MatrixView<T> out,
                         double scale, const detail::HeadMasks& masks, const Options& options, T* lse = nullptr) {
  using reference_detail::row;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> P(q.rows, k.rows);
  const MatrixView<T> weights(P.data(), P.rows(), P.cols(), P.cols());
  reference_weights(q, k, scale, masks, options, weights, lse);
  // pass 6: each output row is its weights' blend of the value rows
  const Index tasks = (q.rows + reference_detail::kRowsPerTask - 1) / reference_detail::kRowsPerTask;
  detail::parallel_for(tasks, options, [&](Index first, Index end) {
    for (Index i = first * reference_detail::kRowsPerTask; i < std::min(q.rows, end * reference_detail::kRowsPerTask); ++i) {
      auto o = row(out, i);
      o.setZero();
      if ((P.row(i).array() == T(0)).all()) continue;  // fully masked: exactly 0, even if V holds Inf
      for (Index j = 0; j < k.rows; ++j) o += P(i, j) * row(v, j);
    }
  });
}

}  // namespace kernels
SDPA_END_NAMESPACE
